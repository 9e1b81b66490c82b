"""Command line: ``spegel-py [--log-level L] <registry|configuration|cleanup|cleanup-wait|version>``.

Flags are generated from the settings dataclasses (:mod:`spegel_py.settings`), so every flag
has its env var and default in ``--help``. A bad value is one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from spegel_py import __version__
from spegel_py.errors import ConfigurationError
from spegel_py.routing.libp2p import psk
from spegel_py.settings import (
    CleanupSettings,
    CleanupWaitSettings,
    ConfigurationSettings,
    GlobalSettings,
    Option,
    RegistrySettings,
    load,
    options,
)

# subcommand -> (settings class, one-line help)
COMMANDS: dict[str, tuple[type[Any], str]] = {
    "registry": (
        RegistrySettings,
        "Serve this node's content over the OCI pull API, and relay its peers' content on a miss.",
    ),
    "configuration": (ConfigurationSettings, "Point containerd at the mirror (certs.d hosts.toml)."),
    "cleanup": (CleanupSettings, "Restore containerd's certs.d, then answer /healthz until stopped."),
    "cleanup-wait": (CleanupWaitSettings, "Wait until every cleanup pod has answered /healthz."),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (``spegel-py: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default_text(opt: Option, default: Any) -> str:
    if opt.boolean:
        return "true" if default else "false"
    if opt.parse.__name__ == "parse_duration":
        return _go_duration(float(default))
    if isinstance(default, tuple):
        return ",".join(default) or "(none)"
    return str(default) if default not in ("", None) else "(none)"


def _go_duration(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale and abs(seconds / scale - round(seconds / scale)) < 1e-9:
            return f"{round(seconds / scale)}{unit}"
    return f"{seconds}s"


def _add_options(parser: argparse.ArgumentParser, cls: type[Any], *, suppress_default: bool = False) -> None:
    for name, opt, default in options(cls):
        help_text = f"{opt.help} [env {opt.env}] (default: {_default_text(opt, default)})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        kwargs["default"] = argparse.SUPPRESS if suppress_default else None
        if opt.boolean:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        elif opt.many:
            kwargs.update(nargs="*", action="extend", metavar="VALUE")
        else:
            kwargs["metavar"] = name.upper().split("_")[-1]
        parser.add_argument(opt.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full parser (also used by tests to check that every flag of Spegel's exists)."""
    parser = _Parser(prog="spegel-py", description="Node-local P2P OCI image mirror, compatible with Spegel.")
    _add_options(parser, GlobalSettings)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        _add_options(command, GlobalSettings, suppress_default=True)
        _add_options(command, cls)
    version = sub.add_parser("version", help="Print the version.")
    _add_options(version, GlobalSettings, suppress_default=True)
    version.add_argument("--format", dest="format", choices=("text", "json"), default="text",
                         help="text: the version alone; json: Spegel's shape ({\"build\": {...}, "
                              "\"runtime\": {...}}), for scripts written for Spegel.")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of the ``spegel-py`` console script; returns the exit status."""
    env = dict(os.environ) if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    try:
        global_settings = load(GlobalSettings, args, env)
        if args["command"] == "version":
            print(_version_json() if args["format"] == "json" else __version__)
            return 0
        settings = load(COMMANDS[args["command"]][0], args, env)
        if isinstance(settings, RegistrySettings):
            psk.load(settings.router_psk_file)  # a bad key: one line now, not after the start
    except ConfigurationError as exc:
        print(f"spegel-py: error: {exc}", file=sys.stderr)
        return 2
    from spegel_py import app, logs  # here: --help and version stay light and fast

    logs.configure(global_settings.log_level)
    if isinstance(settings, RegistrySettings):
        return app.run_registry(settings)
    if isinstance(settings, ConfigurationSettings):
        return app.run_configuration(settings)
    if isinstance(settings, CleanupSettings):
        return app.run_cleanup(settings)
    return app.run_cleanup_wait(settings)


def _version_json() -> str:
    """``version --format=json``: the keys of Spegel's (build and runtime), Python for Go."""
    build = {"version": __version__, "pythonVersion": platform.python_version()}
    runtime = {"os": sys.platform, "arch": platform.machine()}
    return json.dumps({"build": build, "runtime": runtime})

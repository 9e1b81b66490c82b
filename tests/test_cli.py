"""The CLI: every flag of Spegel's exists with its env var, and bad input is one line + exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spegel_py import __version__
from spegel_py.cli import build_parser, main

SPEGEL = os.path.join(os.path.dirname(sys.executable), "spegel-py")

# Every flag of Spegel's `registry` command and its env var, then spegel-py's own additions.
REGISTRY_FLAGS = {
    "--registry-addr": "REGISTRY_ADDR",
    "--router-addr": "ROUTER_ADDR",
    "--metrics-addr": "METRICS_ADDR",
    "--containerd-sock": "CONTAINERD_SOCK",
    "--containerd-namespace": "CONTAINERD_NAMESPACE",
    "--containerd-content-path": "CONTAINERD_CONTENT_PATH",
    "--data-dir": "DATA_DIR",
    "--mirrored-registries": "MIRRORED_REGISTRIES",
    "--registry-filters": "REGISTRY_FILTERS",
    "--mirror-resolve-timeout": "MIRROR_RESOLVE_TIMEOUT",
    "--mirror-resolve-retries": "MIRROR_RESOLVE_RETRIES",
    "--debug-web-enabled": "DEBUG_WEB_ENABLED",
    "--bootstrap-kind": "BOOTSTRAP_KIND",
    "--dns-bootstrap-domain": "DNS_BOOTSTRAP_DOMAIN",
    "--http-bootstrap-addr": "HTTP_BOOTSTRAP_ADDR",
    "--http-bootstrap-url": "HTTP_BOOTSTRAP_URL",
    "--http-bootstrap-peer": "HTTP_BOOTSTRAP_PEER",  # Spegel v0.3 to v0.7.4's name
    "--http-bootstrap-cert-dir": "HTTP_BOOTSTRAP_CERT_DIR",
    "--static-bootstrap-peers": "STATIC_BOOTSTRAP_PEERS",
    # spegel-py additions
    "--content-store": "CONTENT_STORE",
    "--oci-layout-path": "OCI_LAYOUT_PATH",
    "--page-cache-eviction": "PAGE_CACHE_EVICTION",
    "--page-cache-eviction-lag": "PAGE_CACHE_EVICTION_LAG",
    "--relay-buffers": "RELAY_BUFFERS",
    "--relay-buffer-size": "RELAY_BUFFER_SIZE",
    "--relay-hash-threads": "RELAY_HASH_THREADS",
    "--multi-peer-fetch": "MULTI_PEER_FETCH",
    "--multi-peer-min-size": "MULTI_PEER_MIN_SIZE",
    "--multi-peer-providers": "MULTI_PEER_PROVIDERS",
    "--multi-peer-range-size": "MULTI_PEER_RANGE_SIZE",
    "--multi-peer-buffers": "MULTI_PEER_BUFFERS",
    "--reprovide-interval": "REPROVIDE_INTERVAL",
    "--log-level": "LOG_LEVEL",
}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPEGEL, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.process
def test_registry_help_lists_every_flag_and_env_var() -> None:
    out = _run("registry", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for flag, env in REGISTRY_FLAGS.items():
        assert flag in text, flag
        assert f"env {env}" in text, env


@pytest.mark.process
def test_top_level_help_lists_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0 and "registry" in out.stdout and "version" in out.stdout
    assert "--log-level" in out.stdout


@pytest.mark.parametrize(
    "argv", [["version"], ["--log-level", "DEBUG", "version"], ["version", "--log-level=warn"]]
)
def test_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, {}) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_version_as_json_in_spegels_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """``spegel version --format json`` (Spegel v0.7): scripts read ``.build.version``."""
    assert main(["version", "--format", "json"], {}) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["build"]["version"] == __version__ and set(doc["runtime"]) == {"os", "arch"}


@pytest.mark.process
@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["registry", "--mirror-resolve-timeout", "soon"], {}),
        (["registry", "--registry-addr", "nowhere"], {}),
        (["registry", "--page-cache-eviction", "perhaps"], {}),
        (["registry", "--page-cache-eviction-lag", "lots"], {}),
        (["registry", "--content-store", "oci-layout"], {}),
        (["registry", "--relay-hash-threads=-1"], {}),
        (["registry", "--containerd-content-path="], {}),  # Spegel main: detect; spegel-py: refuse
        (["registry"], {"RELAY_HASH_THREADS": "-1"}),
        (["registry"], {"MIRROR_RESOLVE_RETRIES": "many"}),
        (["registry"], {"LOG_LEVEL": "LOUD"}),
        (["registry", "--no-such-flag"], {}),
        (["no-such-command"], {}),
        ([], {}),
        (["--log-level", "LOUD", "version"], {}),
        (["version", "--format", "yaml"], {}),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], env: dict[str, str]) -> None:
    out = _run(*argv, env={**os.environ, **env})
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("spegel-py") and "error" in lines[0]
    assert "Traceback" not in out.stderr


def test_flags_are_generated_from_settings() -> None:
    parser = build_parser()
    args = parser.parse_args(["registry", "--debug-web-enabled", "--mirrored-registries", "a", "b"])
    assert args.debug_web_enabled == "true"  # a bare boolean flag means true
    assert args.mirrored_registries == ["a", "b"]
    args = parser.parse_args(["registry", "--debug-web-enabled=false"])
    assert args.debug_web_enabled == "false"


def test_the_harness_command_line_parses() -> None:
    """The exact command the cluster harness runs must be accepted."""
    parser = build_parser()
    args = parser.parse_args(
        [
            "registry",
            "--registry-addr",
            "127.0.0.11:5000",
            "--metrics-addr",
            "127.0.0.11:9090",
            "--containerd-sock",
            "/run/x.sock",
            "--containerd-namespace",
            "k8s.io",
            "--containerd-content-path",
            "/var/x",
        ]
    )
    assert args.registry_addr == "127.0.0.11:5000" and args.containerd_content_path == "/var/x"


def test_flag_beats_env_beats_default_through_the_parser() -> None:
    from spegel_py.settings import RegistrySettings, load

    args = vars(build_parser().parse_args(["registry", "--metrics-addr", "127.0.0.9:1"]))
    env = {"METRICS_ADDR": "127.0.0.8:2", "REGISTRY_ADDR": "127.0.0.8:3", "PAGE_CACHE_EVICTION": "false"}
    settings = load(RegistrySettings, args, env)
    assert settings.metrics_addr == "127.0.0.9:1"
    assert settings.registry_addr == "127.0.0.8:3"
    assert settings.page_cache_eviction is False
    assert settings.router_addr == ":5001"


@pytest.mark.process
@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "configuration",
            {
                "--containerd-registry-config-path": "CONTAINERD_REGISTRY_CONFIG_PATH",
                "--mirrored-registries": "MIRRORED_REGISTRIES",
                "--mirror-targets": "MIRROR_TARGETS",
                "--resolve-tags": "RESOLVE_TAGS",
                "--prepend-existing": "PREPEND_EXISTING",
            },
        ),
        (
            "cleanup",
            {"--addr": "ADDR", "--containerd-registry-config-path": "CONTAINERD_REGISTRY_CONFIG_PATH"},
        ),
        (
            "cleanup-wait",
            {"--probe-endpoint": "PROBE_ENDPOINT", "--threshold": "THRESHOLD", "--period": "PERIOD"},
        ),
    ],
)
def test_helm_facing_commands_have_spegels_flags(command: str, flags: dict[str, str]) -> None:
    out = _run(command, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag, env in flags.items():
        assert flag in text and f"env {env}" in text, flag


@pytest.mark.process
@pytest.mark.parametrize(
    "argv",
    [
        ["configuration"],  # --mirror-targets is required
        ["configuration", "--mirror-targets=http://x:1", "--dial-timeout=soon"],
        ["cleanup"],  # --addr is required
        ["cleanup-wait"],  # --probe-endpoint is required
        ["cleanup-wait", "--probe-endpoint=x:1", "--period=never"],
    ],
)
def test_helm_facing_commands_refuse_bad_input_in_one_line(argv: list[str]) -> None:
    out = _run(*argv)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr

"""Does containerd's own config.toml let the mirror work? Say so plainly when it does not.

Writing certs.d is useless if the CRI plugin does not read it (``registry.config_path`` unset or
pointing elsewhere), and peers have nothing to share if containerd deletes layer blobs after
unpacking them (``discard_unpacked_layers = true``). Both live in containerd's config file, under
plugin keys that moved between config versions 1/2 (containerd 1.x) and 3 (containerd 2.x).
This module only reads; the CLI prints each warning as one line.
"""

from __future__ import annotations

import enum
import glob
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# containerd 2.x (config version 3) reads both directories when config_path is not set.
_V3_DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"


class Problem(enum.Enum):
    """What is wrong; stable names a test or a log query can match on."""

    CONFIG_NOT_FOUND = "config-not-found"
    CONFIG_UNREADABLE = "config-unreadable"
    CONFIG_PATH_UNSET = "config-path-unset"
    CONFIG_PATH_ELSEWHERE = "config-path-elsewhere"
    LEGACY_MIRRORS = "legacy-mirrors"
    DISCARD_UNPACKED_LAYERS = "discard-unpacked-layers"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """One finding about containerd's configuration, printable as a single line."""

    problem: Problem
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class _Keys:
    """Where a config version keeps the settings we check (dotted paths under the root table)."""

    config_path: tuple[str, ...]
    discard: tuple[str, ...]
    mirrors: tuple[str, ...]
    default_config_path: str


_V1 = _Keys(
    ("plugins", "cri", "registry", "config_path"),
    ("plugins", "cri", "containerd", "discard_unpacked_layers"),
    ("plugins", "cri", "registry", "mirrors"),
    "",
)
_V2 = _Keys(
    ("plugins", "io.containerd.grpc.v1.cri", "registry", "config_path"),
    ("plugins", "io.containerd.grpc.v1.cri", "containerd", "discard_unpacked_layers"),
    ("plugins", "io.containerd.grpc.v1.cri", "registry", "mirrors"),
    "",
)
_V3 = _Keys(
    ("plugins", "io.containerd.cri.v1.images", "registry", "config_path"),
    ("plugins", "io.containerd.cri.v1.images", "discard_unpacked_layers"),
    ("plugins", "io.containerd.cri.v1.images", "registry", "mirrors"),
    _V3_DEFAULT_CONFIG_PATH,
)
_KEYS = {1: _V1, 2: _V2, 3: _V3}


def check_containerd_config(config_file: Path | str, certs_dir: Path | str) -> list[ConfigWarning]:
    """Check containerd's ``config_file`` against the certs.d directory we write (``certs_dir``).

    A missing file is reported as not checked: containerd can run without one, but far more often
    the file is simply not mounted where this runs (a pod), and guessing would raise false alarms.
    Files named in ``imports`` are merged over the main file, as containerd does.
    """
    path = Path(config_file)
    if not path.exists():
        message = f"containerd config {path} not found: config_path and discard_unpacked_layers not checked"
        return [ConfigWarning(Problem.CONFIG_NOT_FOUND, message)]
    try:
        config = _load(path)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [ConfigWarning(Problem.CONFIG_UNREADABLE, f"cannot read containerd config {path}: {exc}")]
    version = config.get("version", 1)
    keys = _KEYS.get(version) if isinstance(version, int) else None
    if keys is None:
        message = f"containerd config {path}: unknown version {version!r}"
        return [ConfigWarning(Problem.CONFIG_UNREADABLE, message)]
    warnings: list[ConfigWarning] = []
    configured = _get(config, keys.config_path)
    config_path = configured if isinstance(configured, str) and configured else keys.default_config_path
    where = f"{'.'.join(_quote(k) for k in keys.config_path)} in {path}"
    if not config_path:
        warnings.append(ConfigWarning(
            Problem.CONFIG_PATH_UNSET,
            f"containerd ignores {certs_dir} for CRI pulls: {where} is not set (set it to {certs_dir})",
        ))
    elif not any(_same_dir(p, certs_dir) for p in config_path.split(os.pathsep) if p):
        warnings.append(ConfigWarning(
            Problem.CONFIG_PATH_ELSEWHERE,
            f"containerd ignores {certs_dir} for CRI pulls: {where} is {config_path!r}",
        ))
    if _get(config, keys.mirrors):
        warnings.append(ConfigWarning(
            Problem.LEGACY_MIRRORS,
            f"{'.'.join(_quote(k) for k in keys.mirrors)} is set in {path}: containerd does not combine the "
            "deprecated mirrors table with config_path; remove it",
        ))
    if _get(config, keys.discard) is True:
        warnings.append(ConfigWarning(
            Problem.DISCARD_UNPACKED_LAYERS,
            f"{'.'.join(_quote(k) for k in keys.discard)} = true in {path}: containerd deletes layers after "
            "unpacking them, so this node has nothing to share with its peers",
        ))
    return warnings


def _load(path: Path) -> dict[str, Any]:
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    imports = config.get("imports", [])
    if isinstance(imports, list):
        for pattern in imports:
            if not isinstance(pattern, str):
                continue
            full = pattern if os.path.isabs(pattern) else str(path.parent / pattern)
            for name in sorted(glob.glob(full)):
                imported = tomllib.loads(Path(name).read_text(encoding="utf-8"))
                imported.pop("version", None)
                _merge(config, imported)
    return config


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _get(table: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = table
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def _quote(k: str) -> str:
    return f'"{k}"' if "." in k else k


def _same_dir(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)

"""Missing components: skip a test locally, fail it in CI (``CI=true``), never pass CI by skipping.

pytest is imported inside the functions so the rest of the harness (and the demo) can be used
without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .spegel import spegel_binary

CLUSTER_BINARIES = ("containerd", "ctr", "runc", "docker-registry", "skopeo", "curl", "ip")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """Skip the current test locally; fail it when CI=true."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: integration tests never skip)", pytrace=False)
    pytest.skip(reason)


def require(binary: str) -> str:
    """Path of ``binary`` on PATH; skips (locally) or fails (in CI) when it is missing."""
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} not found on PATH (run `make deps`)")
    return str(path)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")


def require_cluster() -> None:
    """Everything a containerd node plus upstream needs."""
    for binary in CLUSTER_BINARIES:
        require(binary)
    require_root("containerd nodes")


def require_spegel() -> Path:
    binary = spegel_binary()
    if not binary.exists():
        missing(f"{binary} not found (run `make venv`)")
    return binary

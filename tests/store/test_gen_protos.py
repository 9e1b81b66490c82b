"""The committed containerd stubs are exactly what scripts/gen_protos.sh generates: they never drift."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.require import missing

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "spegel_py" / "store" / "containerd" / "_api"
PROTOS = Path("/usr/share/gocode/src/github.com/containerd/containerd/api")


def tree(directory: Path) -> set[str]:
    return {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.integration
def test_regenerated_stubs_match_the_committed_ones(tmp_path: Path) -> None:
    if not PROTOS.is_dir():
        missing(f"{PROTOS} not found (apt-get install golang-github-containerd-containerd-dev)")
    out = tmp_path / "_api"
    subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        check=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    assert tree(out) == tree(COMMITTED)
    _, mismatch, errors = filecmp.cmpfiles(out, COMMITTED, sorted(tree(out)), shallow=False)
    assert (mismatch, errors) == ([], [])


def test_stubs_import_with_the_installed_runtime() -> None:
    from spegel_py.store.containerd._api.events import image_pb2
    from spegel_py.store.containerd._api.services.images.v1 import images_pb2_grpc

    assert image_pb2.ImageCreate.DESCRIPTOR.full_name == "containerd.services.images.v1.ImageCreate"
    assert hasattr(images_pb2_grpc, "ImagesStub")

"""containerd's writes in progress: the expected digest from a status, the data file from a ref."""

from __future__ import annotations

from pathlib import Path

import pytest

from spegel_py.store.containerd.ingests import data_path, expected_digest, writing

HEX = "ab" * 32
OTHER = "cd" * 32


@pytest.mark.parametrize(
    ("ref", "expected", "digest"),
    [
        (f"layer-sha256:{HEX}", "", f"sha256:{HEX}"),
        (f"config-sha256:{HEX}", "", f"sha256:{HEX}"),
        (f"manifest-sha256:{HEX}", "", f"sha256:{HEX}"),
        (f"sha256:{HEX}", "", f"sha256:{HEX}"),
        (f"layer-sha256:{HEX}", f"sha256:{OTHER}", f"sha256:{OTHER}"),  # the status's own wins
        (f"layer-sha256:{HEX}", "not-a-digest", f"sha256:{HEX}"),
        ("my-upload", "", None),
        (f"layer-sha256:{HEX[:-1]}", "", None),  # 63 hex digits
        (f"layer-sha256:{HEX}-suffix", "", None),
        (f"layersha256:{HEX}", "", None),
    ],
)
def test_expected_digest(ref: str, expected: str, digest: str | None) -> None:
    got = expected_digest(ref, expected)
    assert (str(got) if got is not None else None) == digest


def ingest_dir(root: Path, name: str, key: bytes | None) -> Path:
    directory = root / "ingest" / name
    directory.mkdir(parents=True)
    if key is not None:
        (directory / "ref").write_bytes(key)
    (directory / "data").write_bytes(b"")
    return directory


def test_the_data_file_is_found_by_namespace_and_ref(tmp_path: Path) -> None:
    ref = f"layer-sha256:{HEX}"
    ingest_dir(tmp_path, "a", f"other/3/{ref}".encode())  # another namespace's write
    ingest_dir(tmp_path, "b", None)  # no ref file (ended meanwhile)
    ingest_dir(tmp_path, "c", f"k8s.io/x/{ref}".encode())  # not containerd's key shape
    ingest_dir(tmp_path, "d", f"k8s.io/7/{ref}-longer".encode())
    wanted = ingest_dir(tmp_path, "e", f"k8s.io/12/{ref}".encode())
    assert data_path(str(tmp_path), "k8s.io", ref) == str(wanted / "data")
    assert data_path(str(tmp_path), "k8s.io", f"layer-sha256:{OTHER}") is None
    assert data_path(str(tmp_path / "absent"), "k8s.io", ref) is None


def test_writing_is_any_ingest_directory(tmp_path: Path) -> None:
    assert not writing(str(tmp_path))  # containerd never wrote anything: no ingest/ at all
    (tmp_path / "ingest").mkdir()
    assert not writing(str(tmp_path))
    ingest_dir(tmp_path, "a", b"other/1/layer")
    assert writing(str(tmp_path))

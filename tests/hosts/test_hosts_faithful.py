"""Copies keep what the operator set (modes, owners, links), and a backup spegel-py did not make
never costs the operator a newer entry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.trees import entry, snapshot

from spegel_py.errors import ConfigurationError
from spegel_py.hosts import cleanup_mirrors, configure_mirrors, files
from spegel_py.hosts.files import BACKUP_DIR, BACKUP_OWNER, MARKER

TARGETS = ["http://127.0.0.1:30020"]
DOCKER_HOSTS = b"""server = "https://registry-1.docker.io"

[host."https://mirror.corp.example"]
  ca = "corp-ca.pem"
  client = ["client.cert", "client.key"]
"""
GO_SPEGEL_OUTPUT = b"""server = 'https://registry-1.docker.io'

[host.'http://10.0.0.5:30020']
capabilities = ['pull', 'resolve']
dial_timeout = '200ms'"""
OTHER_UID, OTHER_GID = 4321, 4322


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """docker.io with a 0600 key owned by another user, a CA linked from elsewhere, a subdirectory."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "corp-ca.pem").write_bytes(b"CA v1\n")
    docker = tmp_path / "certs.d" / "docker.io"
    (docker / "extra").mkdir(parents=True)
    (docker / "hosts.toml").write_bytes(DOCKER_HOSTS)
    (docker / "client.cert").write_bytes(b"cert")
    (docker / "client.key").write_bytes(b"secret")
    os.chmod(docker / "client.key", 0o600)
    if os.geteuid() == 0:
        os.chown(docker / "client.key", OTHER_UID, OTHER_GID)
    (docker / "corp-ca.pem").symlink_to(tmp_path / "shared" / "corp-ca.pem")
    (docker / "extra" / "note").write_bytes(b"n")
    os.chmod(docker / "extra", 0o750)
    return tmp_path / "certs.d"


def test_prepend_existing_copies_modes_owners_and_links(certs: Path, tmp_path: Path) -> None:
    original = snapshot(certs / "docker.io")
    configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)
    docker = certs / "docker.io"
    assert (docker / "hosts.toml").read_text().startswith(MARKER)
    copied = {k: v for k, v in snapshot(docker).items() if k != "hosts.toml"}
    assert copied == {k: v for k, v in original.items() if k != "hosts.toml"}
    assert (docker / "client.key").stat().st_mode & 0o777 == 0o600
    assert os.readlink(docker / "corp-ca.pem") == str(tmp_path / "shared" / "corp-ca.pem")
    # the link is live: a renewed CA is seen at once, not a stale copy
    (tmp_path / "shared" / "corp-ca.pem").write_bytes(b"CA v2\n")
    assert (docker / "corp-ca.pem").read_bytes() == b"CA v2\n"
    # and the backup is as faithful
    assert snapshot(certs / BACKUP_DIR / "docker.io") == original


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_copies_keep_the_owner(certs: Path) -> None:
    configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)
    for key in (certs / "docker.io" / "client.key", certs / BACKUP_DIR / "docker.io" / "client.key"):
        assert (key.stat().st_uid, key.stat().st_gid) == (OTHER_UID, OTHER_GID)


def test_cleanup_restores_modes_owners_and_links(certs: Path) -> None:
    original = snapshot(certs)
    configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)
    cleanup_mirrors(certs)
    assert snapshot(certs) == original


@pytest.fixture
def go_spegel(certs: Path) -> Path:
    """certs.d after Go Spegel: the operator's entries in a _backup without our owner file."""
    backup = certs / BACKUP_DIR
    backup.mkdir()
    (certs / "docker.io").rename(backup / "docker.io")
    (certs / "docker.io").mkdir()
    (certs / "docker.io" / "hosts.toml").write_bytes(GO_SPEGEL_OUTPUT)
    return certs


def test_a_newer_operator_entry_beside_a_foreign_backup_is_kept(go_spegel: Path) -> None:
    newer = go_spegel / "ghcr.io"
    newer.mkdir()
    (newer / "hosts.toml").write_bytes(b'server = "https://ghcr.io"\n')
    kept = entry(snapshot(go_spegel), "ghcr.io")
    configure_mirrors(go_spegel, ["https://docker.io"], TARGETS)
    assert entry(snapshot(go_spegel), "ghcr.io") == kept
    assert (go_spegel / BACKUP_DIR / BACKUP_OWNER).is_file()
    cleanup_mirrors(go_spegel)
    assert entry(snapshot(go_spegel), "ghcr.io") == kept


def test_a_newer_operator_entry_that_is_then_mirrored_goes_to_the_backup(go_spegel: Path) -> None:
    (go_spegel / "ghcr.io").mkdir()
    (go_spegel / "ghcr.io" / "hosts.toml").write_bytes(b'server = "https://ghcr.io"\n')
    kept = entry(snapshot(go_spegel), "ghcr.io")
    configure_mirrors(go_spegel, ["https://docker.io", "https://ghcr.io"], TARGETS)
    assert (go_spegel / "ghcr.io" / "hosts.toml").read_text().startswith(MARKER)
    cleanup_mirrors(go_spegel)
    assert entry(snapshot(go_spegel), "ghcr.io") == kept


@pytest.mark.parametrize("command", ["configuration", "cleanup"])
def test_a_newer_operator_version_of_a_backed_up_entry_stops_with_one_line(
    go_spegel: Path, command: str
) -> None:
    (go_spegel / "docker.io" / "hosts.toml").write_bytes(b'server = "https://registry-1.docker.io"\n')
    before = snapshot(go_spegel)
    with pytest.raises(ConfigurationError) as info:
        if command == "configuration":
            configure_mirrors(go_spegel, ["https://docker.io"], TARGETS)
        else:
            cleanup_mirrors(go_spegel)
    message = str(info.value)
    assert "\n" not in message
    assert "docker.io" in message and f"run {command} again" in message
    assert snapshot(go_spegel) == before  # nothing changed


def test_an_operator_entry_identical_to_its_backup_is_left_in_place(go_spegel: Path) -> None:
    os.symlink("docker.io", go_spegel / BACKUP_DIR / "index.docker.io")
    os.symlink("docker.io", go_spegel / "index.docker.io")
    inode = os.lstat(go_spegel / "index.docker.io").st_ino
    configure_mirrors(go_spegel, ["https://docker.io"], TARGETS)
    assert os.lstat(go_spegel / "index.docker.io").st_ino == inode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GO_SPEGEL_OUTPUT, True),
        (b"[host.'http://10.0.0.5:30020']\ncapabilities = ['pull']\n", True),  # _default: no server
        (DOCKER_HOSTS, False),
        (MARKER.encode() + b"\n" + GO_SPEGEL_OUTPUT, False),
        (b"", False),
    ],
)
def test_go_spegel_output_is_recognised_by_its_template(tmp_path: Path, text: bytes, expected: bool) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "hosts.toml").write_bytes(text)
    assert files.is_go_spegel_output(tmp_path / "r") is expected
    (tmp_path / "r" / "ca.pem").write_bytes(b"x")  # Spegel never writes anything beside hosts.toml
    assert files.is_go_spegel_output(tmp_path / "r") is False


def test_atomic_writes_leave_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.write_file(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f"]

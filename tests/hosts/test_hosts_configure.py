"""configuration / cleanup on a real directory: backup once, restore byte for byte, never delete
what we did not write, refuse bad input before touching the disk."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from spegel_py.errors import ConfigurationError
from spegel_py.hosts import cleanup_mirrors, configure_mirrors, files
from spegel_py.hosts.files import BACKUP_DIR, BACKUP_OWNER, MARKER, TEMP_PREFIX

TARGETS = ["http://127.0.0.1:30020", "http://10.0.0.5:30020"]
DOCKER_HOSTS = b"""# operator's own docker.io configuration
server = "https://registry-1.docker.io"

[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  ca = "corp-ca.pem"
"""


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root -> file bytes, link target, or 'dir'; plus modes of files."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
                out[rel + "#mode"] = oct(path.stat().st_mode & 0o777)
    return out


def backup_snapshot(root: Path) -> dict[str, bytes | str]:
    """The backup's contents without the file that says spegel-py made it."""
    return {k: v for k, v in snapshot(root / BACKUP_DIR).items() if k.split("#")[0] != BACKUP_OWNER}


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A certs.d as an operator left it: docker.io with a CA file, a private registry, a stray file."""
    root = tmp_path / "certs.d"
    (root / "docker.io").mkdir(parents=True)
    (root / "docker.io" / "hosts.toml").write_bytes(DOCKER_HOSTS)
    (root / "docker.io" / "corp-ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nabc\n")
    (root / "private.example:5000").mkdir()
    (root / "private.example:5000" / "hosts.toml").write_bytes(b'server = "https://private.example:5000"\n')
    (root / "private.example:5000" / "client.cert").write_bytes(b"cert")
    os.chmod(root / "private.example:5000" / "client.cert", 0o600)
    (root / "README").write_bytes(b"operator notes\n")
    os.symlink("docker.io", root / "index.docker.io")
    return root


def read_hosts(root: Path, name: str) -> dict[str, Any]:
    return tomllib.loads((root / name / "hosts.toml").read_text())


def test_configure_writes_one_directory_per_registry_and_backs_everything_up(certs: Path) -> None:
    before = snapshot(certs)
    warnings = configure_mirrors(certs, ["https://docker.io", "http://127.0.0.1:5000"], TARGETS)
    assert warnings == []
    assert read_hosts(certs, "docker.io") == {
        "server": "https://registry-1.docker.io",
        "host": {t: {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"} for t in TARGETS},
    }
    assert read_hosts(certs, "127.0.0.1:5000")["server"] == "http://127.0.0.1:5000"
    assert (certs / "docker.io" / "hosts.toml").read_text().startswith(MARKER + "\n")
    # the replaced directory holds only our file now; the CA went with the operator's config
    assert sorted(p.name for p in (certs / "docker.io").iterdir()) == ["hosts.toml"]
    # entries of registries we do not mirror stay where they are
    assert (certs / "private.example:5000" / "client.cert").read_bytes() == b"cert"
    assert (certs / "README").exists()
    # the backup is a faithful copy of everything that was there
    assert backup_snapshot(certs) == before
    assert (certs / BACKUP_DIR / BACKUP_OWNER).is_file()
    assert not [p for p in certs.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_second_run_never_overwrites_the_backup(certs: Path) -> None:
    original = snapshot(certs)
    configure_mirrors(certs, ["https://docker.io"], TARGETS)
    backup = snapshot(certs / BACKUP_DIR)
    configure_mirrors(certs, ["https://docker.io"], ["http://127.0.0.1:30099"], resolve_tags=False)
    assert snapshot(certs / BACKUP_DIR) == backup
    assert backup_snapshot(certs) == original
    assert read_hosts(certs, "docker.io")["host"] == {
        "http://127.0.0.1:30099": {"capabilities": ["pull"], "dial_timeout": "200ms"}
    }


def test_cleanup_restores_byte_for_byte_and_is_idempotent(certs: Path) -> None:
    original = snapshot(certs)
    configure_mirrors(certs, ["https://docker.io", "http://127.0.0.1:5000"], TARGETS)
    configure_mirrors(certs, ["https://docker.io", "http://127.0.0.1:5000"], TARGETS, prepend_existing=True)
    done = cleanup_mirrors(certs)
    assert snapshot(certs) == original
    assert any("restored" in line for line in done)
    assert cleanup_mirrors(certs) == []
    assert snapshot(certs) == original


def test_cleanup_without_backup_removes_only_what_we_wrote(certs: Path) -> None:
    configure_mirrors(certs, ["http://127.0.0.1:5000"], TARGETS)
    ours = certs / "127.0.0.1:5000"
    (certs / BACKUP_DIR).rename(certs.parent / "lost-backup")  # the backup is gone, somehow
    (certs / "ghcr.io").mkdir()
    (certs / "ghcr.io" / "hosts.toml").write_text('server = "https://ghcr.io"\n')
    untouched = {k: v for k, v in snapshot(certs).items() if not k.startswith(ours.name)}
    cleanup_mirrors(certs)
    assert not ours.exists()
    assert snapshot(certs) == untouched


def test_cleanup_of_a_directory_never_configured_changes_nothing(certs: Path, tmp_path: Path) -> None:
    before = snapshot(certs)
    assert cleanup_mirrors(certs) == []
    assert snapshot(certs) == before
    assert cleanup_mirrors(tmp_path / "missing") == []
    assert not (tmp_path / "missing").exists()


def test_prepend_existing_keeps_their_hosts_after_ours_and_their_files(certs: Path) -> None:
    configure_mirrors(certs, ["https://docker.io"], TARGETS[:1], prepend_existing=True)
    parsed = read_hosts(certs, "docker.io")
    assert list(parsed["host"]) == ["http://127.0.0.1:30020", "https://mirror.corp.example"]
    assert (certs / "docker.io" / "corp-ca.pem").read_bytes() == b"-----BEGIN CERTIFICATE-----\nabc\n"
    # a second run prepends to the operator's original, not to our own previous output
    configure_mirrors(certs, ["https://docker.io"], TARGETS[:1], prepend_existing=True)
    assert read_hosts(certs, "docker.io") == parsed


def test_prepend_existing_refuses_an_unparseable_original(certs: Path) -> None:
    (certs / "docker.io" / "hosts.toml").write_text("server = [unclosed\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)


def test_default_wildcard_and_registries_that_override_it(certs: Path) -> None:
    warnings = configure_mirrors(certs, [], TARGETS)
    assert "server" not in read_hosts(certs, "_default")
    assert {w.split()[0] for w in warnings} == {
        str(certs / "docker.io"), str(certs / "private.example:5000"), str(certs / "index.docker.io")
    }


def test_registries_no_longer_mirrored_are_given_back(certs: Path) -> None:
    original = snapshot(certs)
    configure_mirrors(certs, ["https://docker.io", "https://ghcr.io"], TARGETS)
    configure_mirrors(certs, ["https://ghcr.io"], TARGETS)
    assert (certs / "docker.io" / "hosts.toml").read_bytes() == DOCKER_HOSTS
    assert (certs / "ghcr.io" / "hosts.toml").read_text().startswith(MARKER)
    cleanup_mirrors(certs)
    assert snapshot(certs) == original


def test_an_entry_created_after_the_backup_is_backed_up_before_it_is_replaced(certs: Path) -> None:
    configure_mirrors(certs, ["https://docker.io"], TARGETS)
    (certs / "ghcr.io").mkdir()
    (certs / "ghcr.io" / "hosts.toml").write_bytes(b'server = "https://ghcr.io"\n')
    later = snapshot(certs)
    configure_mirrors(certs, ["https://docker.io", "https://ghcr.io"], TARGETS)
    assert (certs / BACKUP_DIR / "ghcr.io" / "hosts.toml").read_bytes() == b'server = "https://ghcr.io"\n'
    cleanup_mirrors(certs)
    assert snapshot(certs)["ghcr.io/hosts.toml"] == later["ghcr.io/hosts.toml"]


BAD_INPUTS = [
    pytest.param(["https://../../etc"], TARGETS, {}, id="registry-path-escape"),
    pytest.param(["https://docker.io/../../x"], TARGETS, {}, id="registry-with-path"),
    pytest.param(["https://a'\n[host.'http://evil']"], TARGETS, {}, id="registry-toml-injection"),
    pytest.param(["https://docker.io"], ["http://x'] \ncapabilities=['push"], {}, id="target-toml-injection"),
    pytest.param(["https://docker.io"], ["file:///etc/passwd"], {}, id="target-scheme"),
    pytest.param(["https://docker.io"], [], {}, id="no-target"),
    pytest.param(["https://docker.io"], TARGETS, {"dial_timeout": "1s'\nx = 1"}, id="timeout-injection"),
    pytest.param(["https://docker.io", "http://docker.io"], TARGETS, {}, id="same-directory-twice"),
]


@pytest.mark.parametrize(("registries", "targets", "options"), BAD_INPUTS)
def test_bad_input_is_refused_before_anything_changes(
    certs: Path, registries: list[str], targets: list[str], options: dict[str, Any]
) -> None:
    before = snapshot(certs)
    with pytest.raises(ConfigurationError) as info:
        configure_mirrors(certs, registries, targets, **options)
    assert "\n" not in str(info.value)
    assert snapshot(certs) == before


def test_leftovers_of_a_crashed_run_are_removed(certs: Path) -> None:
    (certs / f"{TEMP_PREFIX}dir-deadbeef").mkdir()
    (certs / f"{TEMP_PREFIX}dir-deadbeef" / "hosts.toml").write_text("half")
    (certs / f"{TEMP_PREFIX}backup-cafe").mkdir()
    configure_mirrors(certs, ["https://docker.io"], TARGETS)
    assert not [p for p in certs.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert TEMP_PREFIX not in str(sorted(backup_snapshot(certs)))


def test_unwritable_directory_is_reported_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError) as info:
        configure_mirrors(blocker / "certs.d", ["https://docker.io"], TARGETS)
    assert "\n" not in str(info.value)


Migrated = tuple[Path, dict[str, bytes | str]]
SPEGEL_OUTPUT = b"""server = 'https://registry-1.docker.io'

[host.'http://10.0.0.5:30020']
capabilities = ['pull', 'resolve']
dial_timeout = '200ms'"""


@pytest.fixture
def after_go_spegel(certs: Path) -> Migrated:
    """certs.d as Go Spegel leaves it: the operator's entries moved into _backup (no owner file),
    only Spegel's own directories outside. Returns it and the operator's original state."""
    original = snapshot(certs)
    backup = certs / BACKUP_DIR
    backup.mkdir()
    for path in sorted(certs.iterdir()):
        if path != backup:
            path.rename(backup / path.name)
    for name in ("docker.io", "ghcr.io"):
        (certs / name).mkdir()
        (certs / name / "hosts.toml").write_bytes(SPEGEL_OUTPUT)
    return certs, original


def test_a_go_spegel_backup_is_adopted_on_migration(after_go_spegel: Migrated) -> None:
    certs, original = after_go_spegel
    configure_mirrors(certs, ["https://docker.io"], TARGETS)
    assert backup_snapshot(certs) == original  # the operator's entries, untouched
    assert (certs / BACKUP_DIR / BACKUP_OWNER).is_file()
    assert (certs / "docker.io" / "hosts.toml").read_text().startswith(MARKER)
    assert not (certs / "ghcr.io").exists()  # Spegel's output for a registry we do not mirror
    assert (certs / "private.example:5000" / "client.cert").read_bytes() == b"cert"
    cleanup_mirrors(certs)
    assert snapshot(certs) == original


def test_cleanup_after_go_spegel_restores_like_spegel(after_go_spegel: Migrated) -> None:
    certs, original = after_go_spegel
    cleanup_mirrors(certs)
    assert snapshot(certs) == original


def test_prepend_existing_says_what_it_cannot_keep(certs: Path) -> None:
    (certs / "docker.io" / "hosts.toml").write_text(
        'server = "https://cache.corp.example"\nskip_verify = true\nca = "corp-ca.pem"\n'
        '[host."https://mirror.corp.example"]\ncapabilities = ["pull"]\n'
    )
    warnings = configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)
    assert len(warnings) == 2
    assert "'https://cache.corp.example' is replaced by 'https://registry-1.docker.io'" in warnings[0]
    assert warnings[1].endswith("server settings ca, skip_verify are not kept")
    assert list(read_hosts(certs, "docker.io")["host"])[-1] == "https://mirror.corp.example"


def test_cleanup_leaves_entries_it_never_replaced_alone(certs: Path) -> None:
    configure_mirrors(certs, ["https://docker.io"], TARGETS)
    inode = (certs / "private.example:5000").stat().st_ino
    done = cleanup_mirrors(certs)
    assert (certs / "private.example:5000").stat().st_ino == inode  # not swapped for its copy
    assert not any("private.example" in line for line in done)
    assert any("docker.io" in line for line in done)


def test_replacing_an_operator_directory_never_writes_through_its_links(certs: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared-hosts.toml"
    shared.write_bytes(DOCKER_HOSTS)
    (certs / "docker.io" / "hosts.toml").unlink()
    (certs / "docker.io" / "hosts.toml").symlink_to(shared)
    configure_mirrors(certs, ["https://docker.io"], TARGETS, prepend_existing=True)
    assert shared.read_bytes() == DOCKER_HOSTS
    assert not (certs / "docker.io" / "hosts.toml").is_symlink()
    cleanup_mirrors(certs)
    assert (certs / "docker.io" / "hosts.toml").resolve() == shared


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_swap_in_replaces_whole_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    real, exchanged = files._exchange, []

    def spy(a: Path, b: Path) -> bool:
        exchanged.append(exchange and real(a, b))
        return exchanged[-1]

    monkeypatch.setattr(files, "_exchange", spy)
    for old_kind in ("dir", "file", "link", "absent"):
        target = tmp_path / f"target-{old_kind}"
        if old_kind == "dir":
            target.mkdir()
            (target / "old").write_text("old")
        elif old_kind == "file":
            target.write_text("old")
        elif old_kind == "link":
            target.symlink_to(tmp_path)
        staged = tmp_path / f"staged-{old_kind}"
        staged.mkdir()
        (staged / "new").write_text("new")
        files.swap_in(staged, target)
        assert [p.name for p in target.iterdir()] == ["new"]
        assert not files.present(staged)
    kinds = ("absent", "dir", "file", "link")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"target-{k}" for k in kinds]
    assert exchanged == [exchange] * 3  # this kernel exchanges atomically; "absent" needs no exchange


@pytest.mark.parametrize("authorization", [None, "Basic c3BlZ2VsOnMzY3JldA=="])
def test_spegels_basic_auth_header_goes_to_our_hosts_only_and_keeps_the_file_private(
    certs: Path, authorization: str | None
) -> None:
    """As Spegel v0.7 writes it: ``[host.'<mirror>'.header] Authorization = 'Basic ...'`` for each
    mirror target, none for the operator's hosts; a file holding credentials is 0600."""
    configure_mirrors(
        certs, ["https://docker.io"], TARGETS, prepend_existing=True, authorization=authorization
    )
    hosts = read_hosts(certs, "docker.io")["host"]
    header = None if authorization is None else {"Authorization": authorization}
    for target in TARGETS:
        assert hosts[target].get("header") == header
    assert "header" not in hosts["https://mirror.corp.example"]
    mode = (certs / "docker.io" / "hosts.toml").stat().st_mode & 0o777
    assert mode == (0o644 if authorization is None else 0o600)

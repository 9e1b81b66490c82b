"""configuration and cleanup killed at every step of their writes (SIGKILL in a child process).

For each step the real command runs in a fresh interpreter on its own copy of certs.d and is
killed there (``support.crash``). Then: every entry is whole, either as it was or as the
finished command leaves it (never a partial file, never missing if it was there before, modes
and links as they were); the next run of the command finishes the job; cleanup then gives the
operator's original certs.d back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.crash import run_killed, steps_of
from support.trees import Snapshot, entry, snapshot, top_level

from spegel_py.hosts import cleanup_mirrors, configure_mirrors
from spegel_py.hosts.files import BACKUP_DIR, TEMP_PREFIX

pytestmark = pytest.mark.process

REGISTRIES = ["https://docker.io", "https://ghcr.io"]
TARGETS = ["http://127.0.0.1:30020"]
DOCKER_HOSTS = b"""server = "https://registry-1.docker.io"

[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  ca = "corp-ca.pem"
  client = ["client.cert", "client.key"]
"""
GO_SPEGEL_OUTPUT = b"""server = 'https://registry-1.docker.io'

[host.'http://10.0.0.5:30020']
capabilities = ['pull', 'resolve']
dial_timeout = '200ms'"""


def operator_certs(base: Path) -> Path:
    """certs.d as an operator left it: docker.io with a 0600 client key and a linked CA, another
    registry, a stray file and a link between registries."""
    shared = base / "shared"
    shared.mkdir(parents=True)
    (shared / "corp-ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nshared\n")
    root = base / "certs.d"
    docker = root / "docker.io"
    docker.mkdir(parents=True)
    (docker / "hosts.toml").write_bytes(DOCKER_HOSTS)
    (docker / "client.cert").write_bytes(b"cert")
    (docker / "client.key").write_bytes(b"secret key")
    os.chmod(docker / "client.key", 0o600)
    (docker / "corp-ca.pem").symlink_to("../../shared/corp-ca.pem")
    (root / "private.example:5000").mkdir()
    (root / "private.example:5000" / "hosts.toml").write_bytes(b'server = "https://private.example:5000"\n')
    (root / "README").write_bytes(b"operator notes\n")
    (root / "index.docker.io").symlink_to("docker.io")
    return root


def after_go_spegel(base: Path) -> Path:
    """The same certs.d after Go Spegel ran: everything moved into a _backup without our owner
    file, Spegel's own output outside."""
    root = operator_certs(base)
    backup = root / BACKUP_DIR
    backup.mkdir()
    for path in sorted(root.iterdir()):
        if path != backup:
            path.rename(backup / path.name)
    for name in ("docker.io", "quay.io"):
        (root / name).mkdir()
        (root / name / "hosts.toml").write_bytes(GO_SPEGEL_OUTPUT)
    return root


def configure(root: Path, steps: Callable[[str], None]) -> None:
    configure_mirrors(root, REGISTRIES, TARGETS, prepend_existing=True, steps=steps)


def cleanup(root: Path, steps: Callable[[str], None]) -> None:
    cleanup_mirrors(root, steps=steps)


def _call(command: str, root: Path) -> str:
    if command == "configure":
        args = f"{str(root)!r}, {REGISTRIES!r}, {TARGETS!r}, prepend_existing=True, steps=steps"
        return f"configure_mirrors({args})"
    return f"cleanup_mirrors({str(root)!r}, steps=steps)"


def backed_up(snap: Snapshot) -> Snapshot:
    """The entries of the snapshot's ``_backup``, as if they were in certs.d."""
    prefix = BACKUP_DIR + "/"
    return {k.removeprefix(prefix): v for k, v in snap.items() if k.startswith(prefix)}


def assert_whole(now: Snapshot, before: Snapshot, after: Snapshot) -> None:
    """Every entry (the backup included) is whole: as it was before, as the finished command
    leaves it, or (half-way through a restore) the operator's backed-up version."""
    for name in top_level(before) | top_level(after) | top_level(now):
        restored = [entry(backed_up(s), name) for s in (before, after)]
        allowed = [entry(before, name), entry(after, name), *[r for r in restored if r]]
        got = entry(now, name)
        assert got in allowed, f"{name} is neither old nor new: {got}"


def _no_temps(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


SCENARIOS = {
    # name: (build certs.d, commands run before the one that is killed, the killed command)
    "configure-prepend": (operator_certs, [], "configure"),
    "configure-again": (operator_certs, ["configure"], "configure"),
    "cleanup": (operator_certs, ["configure"], "cleanup"),
    "adopt-go-spegel-backup": (after_go_spegel, [], "configure"),
    "cleanup-go-spegel-backup": (after_go_spegel, [], "cleanup"),
}
COMMANDS = {"configure": configure, "cleanup": cleanup}
IMPORTS = "from spegel_py.hosts import configure_mirrors, cleanup_mirrors"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_killed_at_every_step_leaves_whole_entries_and_the_next_run_finishes(
    tmp_path: Path, scenario: str
) -> None:
    build, before_commands, command = SCENARIOS[scenario]

    def prepared(name: str) -> Path:
        root = build(tmp_path / name)
        for earlier in before_commands:
            COMMANDS[earlier](root, lambda step: None)
        return root

    original = snapshot(operator_certs(tmp_path / "original"))
    reference = prepared("reference")
    before = snapshot(reference)
    names = steps_of(lambda steps: COMMANDS[command](reference, steps))
    after = snapshot(reference)
    assert len(names) >= 5, names

    for kill_at in range(1, len(names) + 1):
        root = prepared(f"kill-{kill_at}")
        run_killed(IMPORTS, _call(command, root), kill_at=kill_at)
        label = f"killed at step {kill_at} ({names[kill_at - 1]})"
        try:
            assert_whole(snapshot(root, skip_prefix=TEMP_PREFIX), before, after)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from exc
        COMMANDS[command](root, lambda step: None)  # the next run repairs and finishes
        assert snapshot(root) == after, label
        assert _no_temps(root), label
        cleanup_mirrors(root)
        assert snapshot(root) == original, f"{label}: cleanup did not give the original back"

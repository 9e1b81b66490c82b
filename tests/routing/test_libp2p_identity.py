"""private.key: created crash-safe (the write killed at every step), a corrupt key replaced with
a warning, a link or another kind of file at the key path refused in one line."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from support.crash import run_killed, steps_of

from spegel_py.errors import ConfigurationError
from spegel_py.routing.libp2p.host import peer_id_of
from spegel_py.routing.libp2p.identity import KEY_FILE, load_or_create_seed

PEM_HEAD = b"-----BEGIN PRIVATE KEY-----\n"


def valid_key(path: Path) -> bytes:
    """The seed of the complete key at ``path`` (fails on anything else), checked like a start."""
    data = path.read_bytes()
    assert data.startswith(PEM_HEAD) and data.endswith(b"-----END PRIVATE KEY-----\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seed = load_or_create_seed(path.parent)
    assert path.read_bytes() == data  # loaded, not replaced
    assert peer_id_of(seed).startswith("12D3KooW")
    return seed


def test_a_key_is_created_once_and_kept(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        seed = load_or_create_seed(tmp_path / "new-dir")
    finally:
        os.umask(old)
    assert valid_key(tmp_path / "new-dir" / KEY_FILE) == seed
    assert sorted(os.listdir(tmp_path / "new-dir")) == [KEY_FILE]


CORRUPT = {
    "empty": b"",
    "whitespace": b"\n\n",
    "truncated": None,  # the first half of a real key
    "garbage": b"not a key at all\n",
    "binary": bytes(range(256)),
    "bad-base64": PEM_HEAD + b"!!!!\n-----END PRIVATE KEY-----\n",
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_key_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    key = tmp_path / KEY_FILE
    data = CORRUPT[kind]
    if data is None:
        load_or_create_seed(tmp_path)
        data = key.read_bytes()[:60]
    key.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="spegel_py.routing.libp2p.identity"):
        seed = load_or_create_seed(tmp_path)
    assert valid_key(key) == seed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "peer id changes" in warnings[0].getMessage()
    assert getattr(warnings[0], "path", None) == str(key)


def test_an_unreadable_key_is_replaced(tmp_path: Path) -> None:
    key = tmp_path / KEY_FILE
    key.write_bytes(b"x")
    os.chmod(key, 0)
    if os.access(key, os.R_OK):
        pytest.skip("root reads a file whatever its mode")
    assert valid_key(key) == load_or_create_seed(tmp_path)


@pytest.mark.parametrize("target", ["valid-key", "dangling"])
def test_a_symlink_at_the_key_path_is_refused_in_one_line(tmp_path: Path, target: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    if target == "valid-key":
        load_or_create_seed(elsewhere)
    key = tmp_path / "data" / KEY_FILE
    key.parent.mkdir()
    key.symlink_to(elsewhere / KEY_FILE)
    before = (elsewhere / KEY_FILE).read_bytes() if target == "valid-key" else None
    with pytest.raises(ConfigurationError, match="symbolic link") as info:
        load_or_create_seed(key.parent)
    assert "\n" not in str(info.value)
    assert key.is_symlink()  # left as it is, and so is what it points to
    if before is not None:
        assert (elsewhere / KEY_FILE).read_bytes() == before


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_non_regular_file_at_the_key_path_is_refused(tmp_path: Path, kind: str) -> None:
    key = tmp_path / KEY_FILE
    if kind == "directory":
        key.mkdir()
    else:
        os.mkfifo(key)  # must not hang the start
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_or_create_seed(tmp_path)


def test_leftover_temporaries_are_removed_and_never_read(tmp_path: Path) -> None:
    seed = load_or_create_seed(tmp_path)
    (tmp_path / f".{KEY_FILE}.deadbeef.tmp").write_bytes(b"half a k")
    assert load_or_create_seed(tmp_path) == seed
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE]


IMPORTS = "from spegel_py.routing.libp2p.identity import load_or_create_seed"


@pytest.mark.process
@pytest.mark.parametrize("start", ["no-key", "truncated-key"])
def test_a_key_write_killed_at_every_step(tmp_path: Path, start: str) -> None:
    def prepared(name: str) -> Path:
        data = tmp_path / name
        if start == "truncated-key":
            data.mkdir()
            (data / KEY_FILE).write_bytes(PEM_HEAD + b"MC4CAQAw")
        return data

    names = steps_of(lambda steps: load_or_create_seed(prepared("reference"), steps=steps))
    assert names[:3] == ["key.created", "key.written", "key.synced"] and names[-1] == "key.done"
    for kill_at in range(1, len(names) + 1):
        data = prepared(f"kill-{kill_at}")
        old = (data / KEY_FILE).read_bytes() if (data / KEY_FILE).exists() else None
        run_killed(IMPORTS, f"load_or_create_seed(Path({str(data)!r}), steps=steps)", kill_at=kill_at)
        label = f"killed at step {kill_at} ({names[kill_at - 1]})"
        key = data / KEY_FILE
        # the old file, or none if there was none, or a complete key: never a part of one
        complete = key.exists() and key.read_bytes() != old
        if complete:
            seed = valid_key(key)
        else:
            assert (key.read_bytes() if key.exists() else None) == old, label
            seed = load_or_create_seed(data)  # the next start repairs
            assert valid_key(key) == seed, label
        assert load_or_create_seed(data) == seed, label  # and keeps it from then on
        assert sorted(os.listdir(data)) == [KEY_FILE], label


def test_an_empty_data_dir_keeps_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spegel's meaning of an empty --data-dir: a new identity at each start, nothing written
    (not a private.key in the working directory)."""
    monkeypatch.chdir(tmp_path)
    first, second = load_or_create_seed(None), load_or_create_seed(None)
    assert len(first) == len(second) == 32 and first != second
    assert peer_id_of(first) != peer_id_of(second)
    assert list(tmp_path.iterdir()) == []


def test_the_router_reads_an_empty_data_dir_as_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spegel_py.routing.libp2p.router import Libp2pRouter

    monkeypatch.chdir(tmp_path)
    listen = ["/ip4/127.0.0.1/tcp/0"]
    routers = [Libp2pRouter(listen_addrs=listen, data_dir="", registry_port=5000) for _ in "ab"]
    assert routers[0].peer_id != routers[1].peer_id and list(tmp_path.iterdir()) == []

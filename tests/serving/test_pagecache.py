"""The page-cache coordinator: what each stream may evict, alone and sharing a file with others."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from regsupport import FileStore, resident_fraction, start_server
from support.poll import eventually

from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.residency import GRANULE, resident_granules

MiB = 1 << 20


class Recorder:
    """An ``advise`` that records ``(fd, offset, length)`` instead of touching the page cache."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd: int, offset: int, length: int) -> None:
        self.calls.append((fd, offset, length))

    def covered(self) -> int:
        """Highest byte offset any call reached."""
        return max((offset + length for _, offset, length in self.calls), default=0)

    def spans(self) -> list[tuple[int, int]]:
        return [(offset, offset + length) for _, offset, length in self.calls]


def _cold(fd: int, size: int) -> bytes:
    return bytes(-(-size // GRANULE))


def _hot(fd: int, size: int) -> bytes:
    return b"\x01" * -(-size // GRANULE)


@pytest.fixture
def blob_fd(tmp_path: Path) -> int:
    path = tmp_path / "blob"
    path.write_bytes(b"\0" * (64 * MiB))
    fd = os.open(path, os.O_RDONLY)
    yield fd  # type: ignore[misc]
    os.close(fd)


def _coordinator(
    recorder: Recorder, *, lag: int = 4 * MiB, step: int = MiB, enabled: bool = True, residency=_cold
) -> PageCacheCoordinator:  # type: ignore[no-untyped-def]
    return PageCacheCoordinator(
        enabled=enabled, lag=lag, step=step, settle=0, advise=recorder, residency=residency
    )


def test_one_stream_evicts_lag_behind_then_everything_at_close(blob_fd: int) -> None:
    rec = Recorder()
    coord = _coordinator(rec)
    stream = coord.open(blob_fd, 0, 64 * MiB)
    stream.advance(3 * MiB)
    assert rec.calls == []  # still within the lag
    stream.advance(10 * MiB)
    assert rec.covered() == 6 * MiB  # 10 MiB sent - 4 MiB lag
    stream.advance(10 * MiB + 100)  # less than a step more: batched, no call
    assert len(rec.calls) == 1
    stream.advance(40 * MiB)
    assert rec.covered() == 36 * MiB
    # windows are advised again further behind (pages in socket buffers survive the first advice)
    assert (0, 6 * MiB) in rec.spans()[1:] or any(lo == 0 and hi >= 6 * MiB for lo, hi in rec.spans()[2:])
    stream.close()
    assert rec.spans()[-1] == (0, 64 * MiB)  # last out: the whole range it read
    assert coord.in_flight(blob_fd) == 0
    calls = len(rec.calls)
    stream.close()  # idempotent
    assert len(rec.calls) == calls


def test_leader_does_not_evict_what_a_trailing_stream_still_needs(blob_fd: int) -> None:
    rec = Recorder()
    coord = _coordinator(rec)
    leader = coord.open(blob_fd, 0, 64 * MiB)
    trailer = coord.open(blob_fd, 0, 64 * MiB)
    assert coord.in_flight(blob_fd) == 2
    trailer.advance(8 * MiB)
    leader.advance(40 * MiB)
    # the leader may only go up to the trailer's offset minus the lag
    assert rec.covered() <= 8 * MiB - 4 * MiB
    trailer.advance(30 * MiB)
    assert rec.covered() <= 26 * MiB
    leader.advance(64 * MiB)
    leader.close()  # not the last one: evicts nothing beyond what the trailer has passed
    assert rec.covered() <= 26 * MiB
    trailer.advance(64 * MiB)
    trailer.close()
    assert rec.spans()[-1] == (0, 64 * MiB)


def test_streams_ahead_of_a_range_do_not_block_it(blob_fd: int) -> None:
    """A stream of a later range of the same file does not hold back one that is behind it."""
    rec = Recorder()
    coord = _coordinator(rec)
    tail = coord.open(blob_fd, 48 * MiB, 64 * MiB)  # a Range request for the end of the file
    head = coord.open(blob_fd, 0, 32 * MiB)
    head.advance(20 * MiB)
    assert rec.covered() == 16 * MiB
    tail.close()  # not last: the head stream is still in flight
    assert rec.covered() == 16 * MiB
    head.advance(32 * MiB)
    head.close()  # last out: the union of every range read, including the tail's
    assert (0, 32 * MiB) in rec.spans() and (48 * MiB, 64 * MiB) in rec.spans()


def test_off_switch_never_advises(blob_fd: int) -> None:
    rec = Recorder()
    coord = _coordinator(rec, enabled=False)
    stream = coord.open(blob_fd, 0, 64 * MiB)
    stream.advance(64 * MiB)
    stream.close()
    assert rec.calls == [] and coord.in_flight(blob_fd) == 0


def test_pages_resident_before_serving_are_left_alone(blob_fd: int) -> None:
    rec = Recorder()
    coord = _coordinator(rec, residency=_hot)
    stream = coord.open(blob_fd, 0, 64 * MiB)
    stream.advance(64 * MiB)
    stream.close()
    assert rec.calls == []


def test_only_the_cold_runs_are_evicted(blob_fd: int) -> None:
    rec = Recorder()
    granules = 64 * MiB // GRANULE
    # first half was resident before serving, second half was not
    coord = _coordinator(rec, residency=lambda fd, size: b"\x01" * (granules // 2) + bytes(granules // 2))
    stream = coord.open(blob_fd, 0, 64 * MiB)
    stream.advance(64 * MiB)
    stream.close()
    assert rec.calls and all(offset >= 32 * MiB for _, offset, _ in rec.calls)
    assert rec.spans()[-1] == (32 * MiB, 64 * MiB)


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        PageCacheCoordinator(lag=-1)


def test_mincore_sees_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident_granules(fd, 4 * MiB) == bytes(4 * MiB // GRANULE)
        os.pread(fd, 4 * MiB, 0)
        assert resident_granules(fd, 4 * MiB) == b"\x01" * (4 * MiB // GRANULE)
    finally:
        os.close(fd)


@pytest.mark.integration
@pytest.mark.parametrize("eviction", [True, False])
async def test_serving_a_cold_file_leaves_it_evicted_only_when_on(tmp_path: Path, eviction: bool) -> None:
    store = FileStore(tmp_path)
    data = os.urandom(48 * MiB)
    digest = store.add_blob(data)
    path = str(store.blobs / "sha256" / digest.hex)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if resident_fraction(path) >= 0.05:  # tmpfs and friends: the page cache is the file itself
        if os.environ.get("CI") == "true":
            pytest.fail("tmp_path is on a filesystem whose pages cannot be evicted")
        pytest.skip("tmp_path is on a filesystem whose pages cannot be evicted")
    coord = PageCacheCoordinator(enabled=eviction, lag=4 * MiB, settle=0.2)
    runner, client = await start_server(store, coordinator=coord)
    try:
        got = await client.request("GET", f"/v2/a/blobs/{digest}")
        assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == digest.hex
        if eviction:
            await eventually(
                lambda: resident_fraction(path) < 0.05, within=10.0, interval=0.05, what="the pages dropped"
            )
        else:
            assert resident_fraction(path) > 0.9
    finally:
        await runner.cleanup()
        coord.close()

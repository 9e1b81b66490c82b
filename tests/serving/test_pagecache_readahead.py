"""Bounded readahead: a cold stream reads ahead by itself, at most ``readahead`` past its offset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spegel_py.serving.pagecache import RANDOM, WILLNEED, PageCacheCoordinator
from spegel_py.serving.residency import GRANULE

MiB = 1 << 20
SIZE = 64 * MiB


class Hints:
    """A ``hint`` that records ``(offset, length, advice)`` instead of touching the page cache."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd: int, offset: int, length: int, advice: int) -> None:
        self.calls.append((offset, length, advice))

    def ahead(self) -> int:
        return max((o + n for o, n, a in self.calls if a == WILLNEED), default=0)


@pytest.fixture
def blob_fd(tmp_path: Path):
    path = tmp_path / "blob"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def _coordinator(hints: Hints, *, resident_byte: int, readahead: int = 8 * MiB) -> PageCacheCoordinator:
    granules = -(-SIZE // GRANULE)
    return PageCacheCoordinator(
        lag=4 * MiB,
        settle=0,
        readahead=readahead,
        advise=lambda fd, offset, length: None,
        hint=hints,
        residency=lambda fd, size: bytes([resident_byte]) * granules,
    )


def test_cold_stream_turns_kernel_readahead_off_and_stays_within_its_window(blob_fd: int) -> None:
    hints = Hints()
    stream = _coordinator(hints, resident_byte=0).open(blob_fd, 0, SIZE)
    assert hints.calls[0] == (0, SIZE, RANDOM)
    assert hints.ahead() == 8 * MiB
    for offset in range(0, SIZE + 1, 2 * MiB):
        stream.advance(offset)
        # Never more than readahead (plus one 2 MiB alignment block) in front of the offset,
        # and never behind it: the sender must not wait on synchronous reads.
        assert offset <= hints.ahead() <= min(SIZE, offset + 10 * MiB)
    stream.close()
    assert hints.ahead() == SIZE


@pytest.mark.parametrize(
    ("resident_byte", "readahead", "hinted"),
    [(1, 8 * MiB, False), (0, 0, False), (0, 8 * MiB, True)],
    ids=["hot file untouched", "readahead off", "cold file hinted"],
)
def test_when_hints_are_given(blob_fd: int, resident_byte: int, readahead: int, hinted: bool) -> None:
    hints = Hints()
    stream = _coordinator(hints, resident_byte=resident_byte, readahead=readahead).open(blob_fd, 0, SIZE)
    stream.advance(16 * MiB)
    stream.close()
    assert bool(hints.calls) is hinted


@pytest.mark.parametrize(("streams", "window"), [(1, 8 * MiB), (3, 8 * MiB), (4, 6 * MiB), (12, 2 * MiB)])
def test_cold_streams_share_a_readahead_budget(blob_fd: int, streams: int, window: int) -> None:
    """Together cold streams read ahead at most the budget (24 MiB), each at least 2 MiB."""
    hints = Hints()
    coord = _coordinator(hints, resident_byte=0)
    opened = [coord.open(blob_fd, 0, SIZE) for _ in range(streams)]
    assert coord.window() == window
    last = opened[-1]
    # past what the first streams hinted when they opened (with a larger window, alone)
    for offset in range(10 * MiB, 32 * MiB + 1, 2 * MiB):
        last.advance(offset)
        assert offset <= hints.ahead() <= offset + window + 2 * MiB  # + one alignment block
    for stream in opened:
        stream.close()
    assert coord.window() == 8 * MiB  # nobody reads ahead any more: the full window again

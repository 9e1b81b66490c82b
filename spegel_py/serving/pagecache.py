"""Keep the page cache that serving charges to our memory cgroup bounded.

Every page ``sendfile`` reads is charged to this process's memory cgroup, so serving a few large
layers would grow the pod's "memory" by gigabytes. A stream therefore drops the pages it has
already sent (``posix_fadvise(DONTNEED)``) once they are ``lag`` bytes behind its send offset:
pages closer than that may still sit in socket buffers and cannot be dropped yet.

Several streams of the same blob (same device and inode) share pages, so one stream must not
evict what another still needs: a stream only evicts below the lowest offset of the other
in-flight streams of that file (minus the lag). The last stream to leave a file evicts every
range any stream read, and once more a moment later, when the socket buffers have drained.

The pages ahead of the send offset are bounded too: the kernel's own readahead window is a
property of the disk (``read_ahead_kb``; 8 MiB on some virtual disks, and up to twice that while
an asynchronous readahead is in flight), so several cold streams would each hold that much
charged cache in front of them. A stream therefore turns kernel readahead off for its own open
file (``POSIX_FADV_RANDOM`` affects only that descriptor) and asks for the next ``readahead``
bytes itself (``POSIX_FADV_WILLNEED``, which starts the reads without waiting for them).

Only pages that serving brought in are evicted: pages already resident when a file starts being
served (a snapshot taken with ``mincore``) were charged to whoever read them first (the memory
cgroup charges the first reader), so dropping them would not shrink our charge and would only
turn the next hot read cold.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from spegel_py.serving.residency import GRANULE, resident_granules

Advise = Callable[[int, int, int], None]
Hint = Callable[[int, int, int, int], None]
Residency = Callable[[int, int], "bytes | None"]

DEFAULT_LAG = 4 * 1024 * 1024
# Bytes a stream reads ahead of its send offset itself (kernel readahead is off for its file).
# 8 MiB keeps a cold stream's reads ahead of the socket on a virtual disk (measured with
# bench/serve_bench.py) while its footprint stays lag + readahead, whatever the disk's setting.
DEFAULT_READAHEAD = 8 * 1024 * 1024
# ... but all cold streams together read ahead at most this much: each gets
# min(readahead, budget / cold streams), at least one ALIGN block. Four cold streams with 8 MiB
# each peaked at 62-71 MiB of charged cache (the bar is 64); a budget of 3 windows keeps 1-3
# streams at full speed and four at 6 MiB each (54-59 MiB peak, bench/serve_bench.py).
DEFAULT_READAHEAD_BUDGET = 24 * 1024 * 1024
ALIGN = 2 * 1024 * 1024  # the largest page-cache folio on x86-64 (a PMD)
# Eviction is batched: a stream advises only when at least this much became evictable.
DEFAULT_STEP = 2 * 1024 * 1024
# Pages still referenced by socket buffers when the last stream ends survive the first advice;
# they are advised again (at 1/20, 1/4 and all of this delay) through a duplicated descriptor.
DEFAULT_SETTLE = 1.0
# Bound on files waiting for their delayed second pass (each holds one descriptor).
MAX_SETTLING = 256


def _fadvise_dontneed(fd: int, offset: int, length: int) -> None:
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


RANDOM = os.POSIX_FADV_RANDOM
WILLNEED = os.POSIX_FADV_WILLNEED


def _fadvise_hint(fd: int, offset: int, length: int, advice: int) -> None:
    """Best effort: a filesystem without fadvise support simply keeps its default readahead."""
    try:
        os.posix_fadvise(fd, offset, length, advice)
    except OSError:
        pass


@dataclass(eq=False)
class _File:
    """In-flight streams of one file and the ranges they read."""

    streams: set[Stream] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    # One byte per GRANULE, 1 = resident before serving began (never evicted); None = unknown.
    resident: bytes | None = None

    # False when the file was wholly resident before serving: nothing of it is ever ours to
    # evict, so its streams skip all bookkeeping (with 32 streams of one hot layer, each chunk's
    # scan of the other streams cost the registry ~15 % more CPU per GiB than eviction off).
    evictable: bool = field(init=False)

    def __post_init__(self) -> None:
        self.evictable = self.resident is None or 0 in self.resident


class Stream:
    """One response body being sent from one file: tell it the send offset as it moves."""

    __slots__ = ("_coordinator", "_evicted", "_file", "_key", "_prefetched", "end", "fd", "offset", "start")

    def __init__(
        self, coordinator: PageCacheCoordinator, key: tuple[int, int], fd: int, start: int, end: int
    ) -> None:
        self._coordinator = coordinator
        self._key = key
        self._file: _File | None = None
        self.fd = fd
        self.start = start
        self.end = end
        self.offset = start
        self._evicted = start
        self._prefetched = end  # nothing to read ahead unless the coordinator starts it

    def advance(self, offset: int) -> None:
        """Record that bytes before ``offset`` were handed to the kernel; evict what is safe."""
        self.offset = offset
        file = self._file
        if file is None or not file.evictable:
            return
        coordinator = self._coordinator
        if self._prefetched < self.end and offset + coordinator.window() // 2 >= self._prefetched:
            self._read_ahead(offset)
        limit = offset - coordinator.lag
        if limit - self._evicted < coordinator.step:
            return
        for other in file.streams:
            if other is not self and other.end > self._evicted and other.offset < limit + coordinator.lag:
                limit = min(limit, other.offset - coordinator.lag)
        # Windows end on ALIGN boundaries: the page cache may hold a file in large folios (up to
        # 2 MiB), and DONTNEED drops only folios that lie wholly inside the advised range.
        limit -= limit % ALIGN
        if limit - self._evicted >= coordinator.step:
            # The window advised reaches ``retry`` bytes further back than what is new: pages
            # still referenced by socket buffers (a loopback receive queue can hold tens of MiB)
            # survive one advice and are dropped by a later one, once the client has read them.
            # Re-advising dropped pages is cheap: the kernel walks only pages still cached.
            low = max(self.start, self._evicted - coordinator.retry)
            coordinator.evict(self.fd, low, self._evicted - low, file.resident, count=False)
            coordinator.evict(self.fd, self._evicted, limit - self._evicted, file.resident)
            self._evicted = limit

    def _read_ahead(self, offset: int) -> None:
        """Start reading up to the current window past ``offset`` (whole ALIGN blocks)."""
        target = offset + self._coordinator.window()
        target = min(self.end, target + (-target % ALIGN))
        if target > self._prefetched:
            self._coordinator.hint(self.fd, self._prefetched, target - self._prefetched, WILLNEED)
            self._prefetched = target

    def close(self) -> None:
        """The stream ended (completely or not). Idempotent."""
        file, self._file = self._file, None
        if file is not None:
            self._coordinator.leave(self._key, file, self)


class PageCacheCoordinator:
    """Per-process registry of in-flight file streams; decides what each may evict.

    ``enabled=False`` turns eviction off (streams are still handed out, they do nothing).
    ``readahead`` (bytes; 0 keeps the kernel's readahead) bounds what a stream reads ahead, and
    ``readahead_budget`` what all cold streams together read ahead (see :meth:`window`).
    ``advise`` and ``hint`` are injectable so tests can watch decisions without a real page cache.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        lag: int = DEFAULT_LAG,
        step: int = DEFAULT_STEP,
        settle: float = DEFAULT_SETTLE,
        readahead: int = DEFAULT_READAHEAD,
        readahead_budget: int = DEFAULT_READAHEAD_BUDGET,
        advise: Advise = _fadvise_dontneed,
        hint: Hint = _fadvise_hint,
        residency: Residency = resident_granules,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if lag < 0 or step <= 0 or settle < 0 or readahead < 0 or readahead_budget < 0:
            raise ValueError("lag, readahead, its budget and settle must be >= 0, step > 0")
        self.enabled = enabled
        self.lag = lag
        self.step = step
        # How far behind the newly evictable window each advice reaches again (see advance).
        self.retry = 8 * lag
        self._settle = settle
        self.readahead = readahead
        self._budget = readahead_budget
        self._reading: set[Stream] = set()  # cold streams that read ahead themselves
        self.hint = hint
        self._advise = advise
        self._residency = residency
        self._on_evict = on_evict
        self._files: dict[tuple[int, int], _File] = {}
        self._settling: dict[int, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}

    def open(self, fd: int, start: int, end: int) -> Stream:
        """Register a stream that will send ``[start, end)`` of the file open as ``fd``."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        stream = Stream(self, key, fd, start, end)
        if self.enabled and end > start:
            file = self._files.get(key)
            if file is None:
                file = self._files[key] = _File(resident=self._residency(fd, st.st_size))
            file.streams.add(stream)
            file.ranges.append((start, end))
            stream._file = file
            # A file that was wholly resident needs no reads: leave its descriptor alone.
            if self.readahead and file.evictable:
                self.hint(fd, start, end - start, RANDOM)
                self._reading.add(stream)
                stream._prefetched = start
                stream._read_ahead(start)
        return stream

    def window(self) -> int:
        """Bytes each cold stream may read ahead now: ``readahead``, shared out of the budget
        once more streams read ahead than it covers (never less than one ALIGN block)."""
        share = self._budget // max(1, len(self._reading))
        return min(self.readahead, max(ALIGN, share - share % ALIGN))

    def in_flight(self, fd: int) -> int:
        """How many streams of the file open as ``fd`` are registered (for tests and metrics)."""
        st = os.fstat(fd)
        file = self._files.get((st.st_dev, st.st_ino))
        return len(file.streams) if file else 0

    def evict(
        self, fd: int, offset: int, length: int, resident: bytes | None = None, *, count: bool = True
    ) -> None:
        """Drop the pages of ``[offset, offset+length)`` that were not ``resident`` before serving.

        Errors are not fatal: eviction is best effort (a filesystem may not support fadvise).
        """
        if length <= 0:
            return
        end_byte = offset + length
        if resident is None:
            runs = [(offset, end_byte)]
        else:
            runs = []
            pos, stop = offset // GRANULE, min(-(-end_byte // GRANULE), len(resident))
            while pos < stop:
                begin = resident.find(0, pos, stop)
                if begin < 0:
                    break
                end = resident.find(1, begin, stop)
                end = stop if end < 0 else end
                runs.append((max(begin * GRANULE, offset), min(end * GRANULE, end_byte)))
                pos = end
        for begin, end in runs:
            try:
                self._advise(fd, begin, end - begin)
            except OSError:
                return
            if count and self._on_evict is not None:
                self._on_evict(end - begin)

    def leave(self, key: tuple[int, int], file: _File, stream: Stream) -> None:
        """Remove ``stream``; the last one out evicts every range read, now and once more later."""
        file.streams.discard(stream)
        self._reading.discard(stream)
        if file.streams:
            return
        del self._files[key]
        if not file.evictable:
            return
        ranges = _merge(file.ranges)
        for start, end in ranges:
            self.evict(stream.fd, start, end - start, file.resident)
        self._settle_later(stream.fd, ranges, file.resident)

    def _settle_later(self, fd: int, ranges: list[tuple[int, int]], resident: bytes | None) -> None:
        if self._settle <= 0 or len(self._settling) >= MAX_SETTLING:
            return
        try:
            loop = asyncio.get_running_loop()
            dup = os.dup(fd)
        except (RuntimeError, OSError):  # no loop (sync use) or out of descriptors: skip the 2nd pass
            return

        # Passes at growing delays: on loopback a client's receive queue (up to tens of MiB)
        # holds pages until the client reads them, often within milliseconds, rarely later.
        delays = [self._settle / 20, self._settle / 4, self._settle]

        def again() -> None:
            final = len(delays) == 1
            try:
                for start, end in ranges:  # not counted: these bytes were counted on the first pass
                    self.evict(dup, start, end - start, resident, count=False)
            finally:
                if final:
                    self._settling.pop(dup, None)
                    os.close(dup)
                else:
                    previous = delays.pop(0)
                    self._settling[dup] = (loop.call_later(delays[0] - previous, again), final_pass)

        def final_pass() -> None:
            delays[:] = delays[-1:]
            again()

        self._settling[dup] = (loop.call_later(delays[0], again), final_pass)

    def close(self) -> None:
        """Run pending second passes now and release their descriptors (at shutdown)."""
        for handle, again in list(self._settling.values()):
            handle.cancel()
            again()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open ranges, sorted."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out

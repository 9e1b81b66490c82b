"""A bounded pool of reusable byte buffers for relaying peers' bytes.

Why: the relay's memory must not grow with the number of concurrent streams (a burst of pulls
would otherwise grow the pod until it is OOM-killed). Every relayed stream reads the peer's
socket into one of ``count`` preallocated buffers of ``size`` bytes and writes from it, so the
relay's memory is ``count * size`` however many streams run; when every buffer is in use, a new
stream waits (bounded) instead of allocating. Counters are plain attributes so the
metrics layer can export them without this module knowing about Prometheus.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from spegel_py.errors import BufferPoolExhaustedError


class BufferPool:
    """``count`` buffers of ``size`` bytes each, handed out one per stream and returned after."""

    def __init__(self, *, count: int = 64, size: int = 768 * 1024) -> None:
        if count < 1 or size < 4096:
            raise ValueError("a buffer pool needs at least one buffer of at least 4 KiB")
        self.capacity = count
        self.size = size
        # Allocated lazily, up to ``count``, so an idle daemon does not hold count * size bytes.
        self._free: list[memoryview] = []
        self._allocated = 0
        self._waiters: deque[asyncio.Future[memoryview]] = deque()
        self.in_use = 0
        self.waits_total = 0
        self.timeouts_total = 0

    @property
    def allocated(self) -> int:
        """Buffers created so far (never more than :attr:`capacity`)."""
        return self._allocated

    @property
    def free(self) -> int:
        """Buffers not lent out (allocated or not yet): :attr:`capacity` when every stream gave
        its buffer back."""
        return self.capacity - self.in_use

    @asynccontextmanager
    async def buffer(self, *, max_wait: float = 5.0) -> AsyncIterator[memoryview]:
        """Lend one buffer for the duration of the ``async with`` block.

        Waits up to ``max_wait`` seconds when all buffers are lent out, then raises
        :class:`BufferPoolExhaustedError`. The buffer's contents are garbage on entry.
        """
        buf = await self.acquire(max_wait=max_wait)
        try:
            yield buf
        finally:
            self.release(buf)

    async def acquire(self, *, max_wait: float = 5.0) -> memoryview:
        """Take a buffer (see :meth:`buffer`); the caller must :meth:`release` it exactly once."""
        if self._free:
            self.in_use += 1
            return self._free.pop()
        if self._allocated < self.capacity:
            self.in_use += 1
            return self._allocate()
        self.waits_total += 1
        waiter: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait):
                return await waiter
        except BaseException as exc:
            # A buffer handed over in the same loop iteration as a timeout or cancellation must
            # go back to the pool, not be lost with the abandoned waiter.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            if isinstance(exc, TimeoutError):
                self.timeouts_total += 1
                raise BufferPoolExhaustedError(f"no relay buffer free within {max_wait:.3f}s") from exc
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def take_spare(self, count: int, *, keep_free: int) -> list[memoryview]:
        """Up to ``count`` buffers without waiting, leaving at least ``keep_free`` not lent out
        (a multi-provider fetch's read-ahead must not starve the streams that need one buffer)."""
        taken: list[memoryview] = []
        while len(taken) < count and self.free > keep_free and not self._waiters:
            taken.append(self._free.pop() if self._free else self._allocate())
            self.in_use += 1
        return taken

    def _allocate(self) -> memoryview:
        self._allocated += 1
        return memoryview(bytearray(self.size))

    def release(self, buf: memoryview) -> None:
        """Give back a buffer taken with :meth:`acquire`."""
        # Hand the buffer straight to the oldest live waiter (in_use stays the same), else shelve it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(buf)
                return
        self.in_use -= 1
        self._free.append(buf)

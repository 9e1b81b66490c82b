"""The plan of a multi-provider fetch: the blob cut into pieces, who fetches which, and the
buffers that hold fetched bytes until the client has them, in order.

Why its own module: the bookkeeping is where a parallel fetch can deadlock, deliver out of order
or lose a buffer, so it is kept free of sockets and tested on its own. The rules:

- A piece is a byte range of whole relay buffers (the last piece may be shorter). It gets its
  buffers when a worker claims it, so a claimed piece never waits for memory: every piece in the
  plan can be completed, the head (the first piece not yet delivered) included, so the fetch
  cannot deadlock on its own buffers. A new piece is made only while the fetch has the buffers
  for it; the total is the fixed set the fetch took from the pool.
- Pieces are claimed lowest offset first, and a piece whose worker failed or was taken off it
  (an *orphan*) keeps its buffers and the bytes it has, and is claimed again before any new
  piece, by another provider that continues at its first missing byte.
- Bytes leave only from the head, one whole buffer at a time (the last one of a piece may be
  partial), in blob order; a delivered buffer goes back to the fetch's free set when the caller
  says so (after the hashing thread let go of it, see :mod:`.hashing`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Piece:
    """Bytes ``[start, end)`` of the blob, fetched into ``bufs`` (``filled`` of them so far)."""

    start: int
    end: int
    bufs: list[memoryview]
    filled: int = 0  # bytes fetched, from ``start``
    delivered: int = 0  # bytes handed to the client side, from ``start``
    owner: object | None = None  # the worker fetching it now (``None``: unclaimed)
    claims: int = 0  # how many workers have claimed it (more than one: it was re-requested)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def next_offset(self) -> int:
        """The first blob offset not fetched yet."""
        return self.start + self.filled

    @property
    def complete(self) -> bool:
        return self.filled >= self.length

    def space(self) -> memoryview:
        """Where the next fetched bytes go: the rest of the buffer holding ``next_offset``."""
        size = len(self.bufs[0])
        index, offset = divmod(self.filled, size)
        return self.bufs[index][offset : min(size, self.length - index * size)]


@dataclass(slots=True)
class Plan:
    """Pieces of a ``total``-byte blob over a fixed set of equal ``buffers``; ``piece_buffers``
    buffers per piece. Workers :meth:`claim` pieces and report bytes with :meth:`fetched`; the
    client side takes buffers in order with :meth:`next_chunk` and gives them back with
    :meth:`release`."""

    total: int
    buffers: list[memoryview]
    piece_buffers: int
    pieces: deque[Piece] = field(default_factory=deque)  # not yet fully delivered, in order
    failure: BaseException | None = None  # set when the fetch cannot go on (ends every wait)
    _free: list[memoryview] = field(default_factory=list)
    _next_start: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)  # claims may differ now
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a buffer of bytes is ready

    def __post_init__(self) -> None:
        if len(self.buffers) < self.piece_buffers or self.piece_buffers < 1:
            raise ValueError("a plan needs the buffers of at least one piece")
        self._free = list(self.buffers)

    @property
    def buffer_size(self) -> int:
        return len(self.buffers[0])

    @property
    def free_buffers(self) -> int:
        return len(self._free)

    @property
    def unstarted(self) -> bool:
        """True while some bytes belong to no piece yet."""
        return self._next_start < self.total

    @property
    def head(self) -> Piece | None:
        return self.pieces[0] if self.pieces else None

    def claim(self, worker: object) -> Piece | None:
        """The next piece for ``worker``: an orphan first, else a new piece if the buffers for it
        are free; ``None`` if neither (wait for :meth:`changed`)."""
        for piece in self.pieces:
            if piece.owner is None and not piece.complete:
                return self._give(piece, worker)
        if not self.unstarted:
            return None
        size = self.piece_buffers * self.buffer_size
        end = min(self.total, self._next_start + size)
        need = -(-(end - self._next_start) // self.buffer_size)
        if len(self._free) < need:
            return None
        piece = Piece(self._next_start, end, [self._free.pop() for _ in range(need)])
        self._next_start = end
        self.pieces.append(piece)
        return self._give(piece, worker)

    @property
    def all_fetched(self) -> bool:
        """True when every byte of the blob has been fetched (some may wait for delivery)."""
        return not self.unstarted and all(piece.complete for piece in self.pieces)

    def _give(self, piece: Piece, worker: object) -> Piece:
        piece.owner = worker
        piece.claims += 1
        self.notify()
        return piece

    def fetched(self, piece: Piece, n: int) -> None:
        """``n`` more bytes of ``piece`` arrived (in :meth:`Piece.space`)."""
        before = piece.filled // self.buffer_size
        piece.filled += n
        if piece.complete or piece.filled // self.buffer_size != before:
            # A whole buffer is ready for the client side. Only the client side is woken: a
            # worker cares about free buffers and orphans, and waking every idle worker per
            # buffer would cost more CPU than the bytes.
            self._arrived.set()

    def disown(self, piece: Piece) -> None:
        """``piece``'s worker stopped (failed or taken off it): it becomes an orphan."""
        piece.owner = None
        self.notify()

    def take_over(self, piece: Piece, worker: object) -> None:
        """``worker`` continues ``piece`` (its previous worker has stopped reading into it)."""
        self._give(piece, worker)

    def ready_chunk(self) -> tuple[memoryview, memoryview] | None:
        """The head's next whole buffer of fetched bytes and the buffer it lies in, if ready."""
        head = self.head
        if head is None:
            return None
        size = self.buffer_size
        index = head.delivered // size
        end = min((index + 1) * size, head.length)
        if head.filled < end:
            return None
        buf = head.bufs[index]
        chunk = buf[: end - index * size]
        head.delivered = end
        if head.delivered >= head.length:
            self.pieces.popleft()
            self.notify()
        return chunk, buf

    async def next_chunk(self) -> tuple[memoryview, memoryview]:
        """Wait for :meth:`ready_chunk` (raises :attr:`failure` if the fetch failed). The caller
        gives the buffer back with :meth:`release` once it is done with the chunk."""
        while True:
            if self.failure is not None:
                raise self.failure
            ready = self.ready_chunk()
            if ready is not None:
                return ready
            self._arrived.clear()
            await self._arrived.wait()

    def release(self, buf: memoryview) -> None:
        """Give a delivered buffer back to the free set."""
        self._free.append(buf)
        self.notify()

    def fail(self, exc: BaseException) -> None:
        """End every wait with ``exc`` (the first failure wins)."""
        if self.failure is None:
            self.failure = exc
        self._arrived.set()
        self.notify()

    def notify(self) -> None:
        """Wake everyone waiting in :meth:`changed` (buffers freed, a piece claimed or orphaned)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        """Return at the next change of the plan."""
        await self._changed.wait()

"""Moving relayed bytes into the client's response: ordered hashing and the response sink.

The peer side lives in :mod:`.peerclient`, the orchestration (resume, hold-back, verification)
in :mod:`.blobstream`. Here: :class:`StreamHasher` hashes a stream's chunks in order (optionally
on a worker thread), and :class:`ResponseSink` writes pooled-buffer views into an aiohttp
response safely, hands out the client socket for splicing, and can cut the connection before
the body completes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from concurrent.futures import Executor, Future

from aiohttp import web


class StreamHasher:
    """Hashes a stream's chunks in order, on a worker thread when ``executor`` is given.

    Why a thread may help: sha256 costs about as much CPU as moving the bytes through two sockets
    (~0.9 ms per MiB here) and ``hashlib`` releases the GIL, so hashing chunk *i* on a worker
    while the event loop sends it and receives chunk *i+1* can use a second core: the mirror
    hashes on one worker thread by default (``MirrorSettings.hash_threads``; the measurements
    are in docs/benchmarks.md). A finished hash is picked up with ``done()``, so the loop waits
    (and is woken by the thread) only when the worker is behind.
    Contract: after :meth:`update` returns, the worker may still be reading
    ``chunk`` until the next :meth:`update` or :meth:`hexdigest` returns; so a caller alternates
    between two halves of its buffer and never writes into the half passed last.
    """

    def __init__(self, hasher: hashlib._Hash, executor: Executor | None) -> None:
        self._hasher = hasher
        self._executor = executor
        self._pending: Future[None] | None = None

    @property
    def offloaded(self) -> bool:
        """True when hashing runs on a worker thread (callers must alternate buffer halves)."""
        return self._executor is not None

    async def _finish_pending(self) -> None:
        # Usually the worker finished while the loop moved the next chunk: then this costs a
        # flag check. Only a hash still running makes the loop wait (one wake-up from the
        # thread), which ``run_in_executor`` would have cost for every chunk.
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.done():
            pending.result()
        else:
            await asyncio.wrap_future(pending)

    async def update(self, chunk: memoryview) -> None:
        """Wait for the previous chunk's hash, then start hashing ``chunk`` (see class doc)."""
        await self._finish_pending()
        if self._executor is None:
            self._hasher.update(chunk)
            return
        self._pending = self._executor.submit(self._hasher.update, chunk)

    async def hexdigest(self) -> str:
        """The digest of everything passed to :meth:`update`, once the last hash finished."""
        await self._finish_pending()
        return self._hasher.hexdigest()


# CPython before 3.12 copies unsent bytes into the transport's own bytearray, so a pooled buffer
# may be reused as soon as write() returns. Later versions (and other loops) may keep a view of
# the caller's buffer until it is sent; there we hand the transport a copy instead.
_TRANSPORT_COPIES = sys.version_info < (3, 12)


class ResponseSink:
    """Writes relayed bytes into an aiohttp response, and can kill it before it completes."""

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        self._request = request
        self._response = response
        loop = asyncio.get_running_loop()
        self._copy = not (_TRANSPORT_COPIES and type(loop).__module__.startswith("asyncio"))
        self.sent = 0

    async def write(self, data: memoryview) -> None:
        """Send ``data`` (a pooled buffer's view may be reused once this returns)."""
        if not data:
            return
        await self._response.write(bytes(data) if self._copy else data)
        self.sent += len(data)

    async def raw_fd(self) -> int | None:
        """Flush the response head and return a duplicate of the client socket for splicing.

        ``None`` when that is not possible (no plain socket, or bytes still queued in the
        transport); the caller then keeps using :meth:`write`. The caller closes the descriptor.
        """
        transport = self._request.transport
        if transport is None or transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        await self._response.write(b"")  # aiohttp may hold the head back until the first write
        if transport.get_write_buffer_size() != 0:
            return None
        return os.dup(sock.fileno())

    def abort(self) -> None:
        """Drop the client connection at once so it never sees the rest (or end) of the body."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()

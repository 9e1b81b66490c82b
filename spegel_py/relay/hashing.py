"""Hashing relayed bytes as they pass, in order, optionally on worker threads.

Every relayed byte is checked against its digest before the client may see the last one
(:mod:`.stream`). :class:`StreamHasher` hashes one stream's chunks in order; :class:`HashPool`
owns the worker threads that all streams of one mirror share (``MirrorSettings.hash_threads``).
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from spegel_py.oci.digest import Digest


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


class HashPool:
    """The ``threads`` worker threads relayed blobs are hashed on (0: on the event loop).

    The threads start with the first stream that needs them; :meth:`close` stops them.
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._executor: Executor | None = None

    def hasher(self, digest: Digest) -> StreamHasher:
        """A fresh :class:`StreamHasher` for a stream that must match ``digest``."""
        if self._threads > 0 and self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="spegel-hash")
        return StreamHasher(digest.hasher(), self._executor)

    def close(self) -> None:
        """Stop the threads (waiting for a hash in progress). Idempotent."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

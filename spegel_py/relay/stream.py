"""One large blob relayed from peers to a client: resumed on failure, verified, tail held back.

Why its own module: this is the part of the relay that runs after the response has started,
where the only ways left to fail are "continue from another provider" and "cut the connection".
Bytes are read into one pooled buffer (two halves: one may still be hashed on a worker thread
while the other receives, see :class:`~spegel_py.relay.hashing.StreamHasher`), hashed, and
written to the client, except the last piece, which waits until the whole blob's digest checks
out. If a peer breaks off, stalls, or falls below the throughput floor (:mod:`.floor`), another
provider continues with ``Range: bytes=<offset>-``; the client sees one uninterrupted body. If
no provider can, the digest does not match, or the body outlives its size-derived deadline
(:mod:`.floor`), the client connection is aborted before the last byte, so a client never
receives a complete wrong (or truncated-but-successful) body.

The mirror hands a stream over in two frozen objects: the :class:`StreamContext` it built once
(client, buffer pool, hashing threads, peer reporter, stats, settings) and the
:class:`StreamStart` of this blob (the winning peer, its open response, the buffer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from spegel_py.errors import (
    IntegrityError,
    NotFoundError,
    PeerError,
    PeerMissError,
    ResumeFailedError,
    StreamDeadlineError,
)
from spegel_py.httpx.answers import BodyHead
from spegel_py.httpx.headers import MIRRORED_HEADER
from spegel_py.oci.digest import Digest
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.clientwrite import client_writer, forward
from spegel_py.relay.floor import StreamFloor
from spegel_py.relay.hashing import HashPool, StreamHasher
from spegel_py.relay.hedging import Hedger, Providers
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.peerhealth import PeerReporter
from spegel_py.relay.settings import MirrorSettings
from spegel_py.relay.sockio import ResponseSink
from spegel_py.relay.stats import RelayStats
from spegel_py.routing.base import Peer


@dataclass(frozen=True, slots=True)
class StreamContext:
    """What every blob stream uses of the mirror that started it (one per mirror)."""

    client: PeerClient  # asks other providers to resume
    pool: BufferPool  # takes the stream's buffer back
    hashing: HashPool
    reporter: PeerReporter  # peers that broke off or sent corrupt bytes
    stats: RelayStats
    settings: MirrorSettings

    def release(self, response: PeerResponse | None, buffer: memoryview | None) -> None:
        """Give back what a stream holds (either may be gone already): the peer connection, the buffer."""
        if response is not None:
            response.release()
        if buffer is not None:
            self.pool.release(buffer)


@dataclass(frozen=True, slots=True)
class StreamStart:
    """One blob's winning first answer: from whom, the open response, and the buffer to use."""

    target: str  # the request target, asked again with Range to resume
    digest: Digest
    providers: Providers  # the lookup, still open: resumes take peers from it
    peer: Peer
    response: PeerResponse  # its head read, its body not yet (content_length is set)
    buffer: memoryview  # from context.pool; the stream releases it


class BlobStream:
    """A blob whose response head came from a peer; :meth:`respond` relays its body."""

    def __init__(self, context: StreamContext, start: StreamStart) -> None:
        assert start.response.content_length is not None  # checked by the attempt that won
        self._context = context
        self._target = start.target
        self._digest = start.digest
        self._providers = start.providers
        self._peer = start.peer
        self._resp: PeerResponse | None = start.response
        self._buffer: memoryview | None = start.buffer
        self._total = start.response.content_length
        self._contributors: set[Peer] = {start.peer}

    async def aclose(self) -> None:
        """Release the peer connection, the buffer and the lookup. Idempotent."""
        self._context.release(self._resp, self._buffer)
        self._resp = self._buffer = None
        await self._providers.aclose()

    async def respond(self, request: web.BaseRequest, head: BodyHead) -> web.StreamResponse:
        """Relay bytes ``[head.start, head.end)`` of the blob in a response with ``head``."""
        try:
            response = head.response()
            await response.prepare(request)
            sink = ResponseSink(request, response)
            floor = StreamFloor(self._context.settings, self._total)
            try:
                await self._relay_direct(sink, floor, head.start, head.end)
            except (IntegrityError, ResumeFailedError, StreamDeadlineError, ConnectionError) as exc:
                # The client connection is gone or was cut on purpose: it sees a short body.
                if isinstance(exc, StreamDeadlineError):
                    self._context.stats.deadline_cut()
                sink.abort()
                return response
            await response.write_eof()
            return response
        finally:
            await self.aclose()

    def _drop_peer(self, exc: PeerError) -> None:
        if self._resp is not None:
            self._resp.release()
            self._resp = None
        self._context.reporter.failed(self._peer, self._providers.key, exc)

    async def _verify(self, sink: ResponseSink, hasher: StreamHasher) -> None:
        """Raise :class:`IntegrityError` (after cutting the client off) unless the digest matches."""
        if await hasher.hexdigest() == self._digest.hex:
            return
        self._context.stats.stream_corrupt()
        self._context.reporter.corrupted(self._contributors)
        sink.abort()
        raise IntegrityError(f"relayed bytes do not match {self._digest}")

    async def _relay_direct(self, sink: ResponseSink, floor: StreamFloor, start: int, end: int) -> None:
        """:meth:`_relay` writing straight into (a duplicate of) the client socket where it can
        (:func:`spegel_py.relay.sockio.send_all`; the module says why), else through aiohttp."""
        async with client_writer(sink, floor, self._context.settings.stall_timeout) as write:
            await self._relay(sink, floor, start, end, write)

    async def _relay(
        self,
        sink: ResponseSink,
        floor: StreamFloor,
        start: int,
        end: int,
        write: Callable[[memoryview], Coroutine[Any, Any, None]],
    ) -> None:
        """Send bytes ``[start, end)`` of the blob with ``write`` (bound by ``floor``'s deadline);
        read (and hash) all of it, each peer above ``floor``'s throughput."""
        assert self._buffer is not None
        hasher = self._context.hashing.hasher(self._digest)
        if hasher.offloaded:  # one half may still be read by the hashing thread
            half = len(self._buffer) // 2
            halves = (self._buffer[:half], self._buffer[half : 2 * half])
        else:
            halves = (self._buffer, self._buffer)
        turn = 0
        pos = 0
        held = b""
        while pos < self._total:
            buf = halves[turn]
            try:
                if self._resp is None:
                    self._resp = await self._resume(pos, floor.left())
                    floor.new_peer()
                n = await floor.read(self._resp, buf[: self._total - pos])
            except PeerError as exc:
                if isinstance(exc, ResumeFailedError):
                    raise
                self._drop_peer(exc)
                continue
            except BaseException:
                sink.abort()
                raise
            chunk = buf[:n]
            await hasher.update(chunk)
            turn ^= 1
            held = await forward(write, chunk, pos, start, end) or held
            pos += n
        await self._verify(sink, hasher)
        await write(memoryview(held))
        self._context.stats.relayed(sink.sent)

    async def _resume(self, pos: int, left: float | None) -> PeerResponse:
        """A response from another provider starting at blob offset ``pos``, found within
        ``resume_deadline`` (and ``left``, the seconds to the stream's deadline, if any)."""
        context = self._context
        settings = context.settings
        context.stats.stream_resumed()
        self._providers.rewind(exclude={self._peer})
        hedger: Hedger[PeerResponse] = Hedger(
            self._range_attempt(pos),
            PeerResponse.release,
            context.reporter,
            hedge_delay=settings.hedge_delay,
            first_provider_timeout=settings.first_provider_timeout,
        )
        try:
            bound = settings.resume_deadline if left is None else min(settings.resume_deadline, left)
            async with asyncio.timeout(bound):
                peer, resp = await hedger.run(self._providers)
        except (TimeoutError, NotFoundError) as exc:
            context.stats.resume_failed()
            raise ResumeFailedError(f"no provider to resume {self._digest} at byte {pos}") from exc
        self._peer = peer
        self._contributors.add(peer)
        return resp

    def _range_attempt(self, pos: int) -> Callable[[Peer], Coroutine[Any, Any, PeerResponse]]:
        client, settings = self._context.client, self._context.settings
        target, total = self._target, self._total
        expected = f"bytes {pos}-{total - 1}/{total}"

        async def attempt(peer: Peer) -> PeerResponse:
            resp = await client.request(
                peer,
                "GET",
                target,
                {MIRRORED_HEADER: "true", "Range": f"bytes={pos}-"},
                dial_timeout=settings.dial_timeout,
                first_byte_timeout=settings.first_byte_timeout,
            )
            if resp.status == 206 and resp.headers.get("content-range") == expected:
                return resp
            resp.release()
            raise PeerMissError(f"peer cannot resume at {pos}: {resp.status}")

        return attempt

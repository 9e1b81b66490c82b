"""One large blob relayed from peers to a client: resumed on failure, verified, tail held back.

Why its own module: this is the part of the mirror that runs after the response has started,
where the only ways left to fail are "continue from another provider" and "cut the connection".
Bytes are read into one pooled buffer (two halves: one may still be hashed on a worker thread
while the other receives, see :class:`~spegel_py.relay.hashing.StreamHasher`), hashed, and
written to the client, except the last piece, which waits until the whole blob's digest checks
out. If a peer breaks off, another provider continues with ``Range: bytes=<offset>-``; the client
sees one uninterrupted body. If the digest does not match, the client connection is aborted
before the last byte, so a client never receives a complete wrong body.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from spegel_py.errors import (
    IntegrityError,
    NotFoundError,
    PeerError,
    PeerMissError,
    PeerTimeoutError,
    RangeNotSatisfiableError,
    ResumeFailedError,
)
from spegel_py.httpx.ranges import parse_range
from spegel_py.oci.digest import Digest
from spegel_py.relay import sockio
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.hashing import StreamHasher
from spegel_py.relay.hedging import Hedger, Providers
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.peerhealth import PeerHealth
from spegel_py.relay.sockio import ResponseSink
from spegel_py.routing.base import Peer

if TYPE_CHECKING:  # annotations only: mirror.py imports this module
    from spegel_py.relay.mirror import MirrorRequest, MirrorSettings, MirrorStats

MIRRORED_HEADER = "X-Spegel-Mirrored"


class BlobStream:
    """A blob whose response head came from ``peer``; :meth:`respond` relays its body."""

    def __init__(
        self,
        *,
        request: MirrorRequest,
        digest: Digest,
        providers: Providers,
        peer: Peer,
        resp: PeerResponse,
        buffer: memoryview,
        client: PeerClient,
        pool: BufferPool,
        health: PeerHealth,
        settings: MirrorSettings,
        stats: MirrorStats,
        hasher: Callable[[Digest], StreamHasher],
    ) -> None:
        assert resp.content_length is not None  # checked by the attempt that produced resp
        self._request = request
        self._digest = digest
        self._providers = providers
        self._peer = peer
        self._resp: PeerResponse | None = resp
        self._buffer: memoryview | None = buffer
        self._client = client
        self._pool = pool
        self._health = health
        self._settings = settings
        self._stats = stats
        self._new_hasher = hasher
        self._total = resp.content_length
        self._contributors: set[Peer] = {peer}

    async def aclose(self) -> None:
        """Release the peer connection, the buffer and the lookup. Idempotent."""
        if self._resp is not None:
            self._resp.release()
            self._resp = None
        if self._buffer is not None:
            self._pool.release(self._buffer)
            self._buffer = None
        await self._providers.aclose()

    async def respond(self, request: web.BaseRequest, headers: dict[str, str]) -> web.StreamResponse:
        """Relay the blob (or the client's Range of it) into a response for ``request``."""
        try:
            try:
                selected = parse_range(self._request.range, self._total)
            except RangeNotSatisfiableError:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{self._total}"})
            headers = dict(headers)
            start, end, status = 0, self._total, 200
            if selected is not None:
                start, end, status = selected.start, selected.end, 206
                headers["Content-Range"] = selected.content_range()
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end - start
            await response.prepare(request)
            sink = ResponseSink(request, response)
            try:
                await self._relay_buffered(sink, start, end)
            except (IntegrityError, ResumeFailedError, ConnectionError):
                # The client connection is gone or was cut on purpose: it sees a short body.
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
        if not isinstance(exc, PeerTimeoutError):
            self._health.record_miss(self._peer, self._providers.key)

    async def _verify(self, sink: ResponseSink, hasher: StreamHasher) -> None:
        """Raise :class:`IntegrityError` (after cutting the client off) unless the digest matches."""
        if await hasher.hexdigest() == self._digest.hex:
            return
        self._stats.corrupt += 1
        self._stats.aborted += 1
        for peer in self._contributors:
            self._health.record_corruption(peer)
        sink.abort()
        raise IntegrityError(f"relayed bytes do not match {self._digest}")

    async def _relay_buffered(self, sink: ResponseSink, start: int, end: int) -> None:
        """:meth:`_relay` writing straight into (a duplicate of) the client socket where it can.

        Why: aiohttp's transport copies whatever the socket does not take at once into a
        buffer of its own, and every ``write`` goes through its writer and flow control; at a
        few thousand chunks per GiB that was a third of the relay's CPU (bench/relay_bench.py).
        ``os.write`` from the pooled buffer copies each byte once, into the socket.
        """
        fd = await sink.raw_fd()
        if fd is None:
            await self._relay(sink, start, end, sink.write)
            return
        stall = self._settings.stall_timeout

        async def write(data: memoryview) -> None:
            await sockio.send_all(fd, data, stall_timeout=stall)
            sink.sent += len(data)

        try:
            await self._relay(sink, start, end, write)
        finally:
            os.close(fd)

    async def _relay(
        self,
        sink: ResponseSink,
        start: int,
        end: int,
        write: Callable[[memoryview], Coroutine[Any, Any, None]],
    ) -> None:
        """Send bytes ``[start, end)`` of the blob with ``write``; read (and hash) all of it."""
        assert self._buffer is not None
        hasher = self._new_hasher(self._digest)
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
                    self._resp = await self._resume(pos)
                n = await self._resp.readinto(
                    buf[: self._total - pos], stall_timeout=self._settings.stall_timeout
                )
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
            lo, hi = max(pos, start), min(pos + n, end)
            if lo < hi:
                piece = chunk[lo - pos : hi - pos]
                if hi == end:
                    held = bytes(piece)  # the last bytes wait for the digest check
                else:
                    await write(piece)
            pos += n
        await self._verify(sink, hasher)
        await write(memoryview(held))
        self._stats.bytes_relayed += sink.sent

    async def _resume(self, pos: int) -> PeerResponse:
        """A response from another provider starting at blob offset ``pos``."""
        settings = self._settings
        self._stats.resumed += 1
        self._providers.rewind(exclude={self._peer})
        hedger: Hedger[PeerResponse] = Hedger(
            self._range_attempt(pos),
            PeerResponse.release,
            self._health,
            hedge_delay=settings.hedge_delay,
            first_provider_timeout=settings.first_provider_timeout,
        )
        try:
            async with asyncio.timeout(settings.resume_deadline):
                peer, resp = await hedger.run(self._providers)
        except (TimeoutError, NotFoundError) as exc:
            self._stats.aborted += 1
            raise ResumeFailedError(f"no provider to resume {self._digest} at byte {pos}") from exc
        self._peer = peer
        self._contributors.add(peer)
        return resp

    def _range_attempt(self, pos: int) -> Callable[[Peer], Coroutine[Any, Any, PeerResponse]]:
        settings, r, total = self._settings, self._request, self._total
        target = f"/v2/{r.name}/blobs/{r.reference}" + (f"?ns={r.registry}" if r.registry else "")
        expected = f"bytes {pos}-{total - 1}/{total}"

        async def attempt(peer: Peer) -> PeerResponse:
            resp = await self._client.request(
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

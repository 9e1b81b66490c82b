"""A peer's 206 relayed to the client: the bytes of one range, as the peer sends them.

Why its own module: a range of a blob cannot be checked against the blob's digest, so the
whole-blob stream (:mod:`.stream`: hashing, resuming, the tail held back until the digest
matches) does not apply, and fetching the whole blob to check a range would make ``Range:
bytes=-1`` cost the whole blob. The peer's head was checked before this starts (status,
``Content-Range`` against the range asked for, ``Content-Length``, the digest it reports; see
:mod:`.attempt`); the body is read into the pooled buffer and written straight to the client
(:mod:`.sockio`), as the whole-blob stream does, under the same floor (:mod:`.floor`: a
minimum throughput, a deadline from the range's length). A peer that breaks off, stalls for
``stall_timeout`` or falls below the floor cuts the client connection (a short body; the client
asks again) and is reported like any failed peer: a range is not resumed elsewhere.
"""

from __future__ import annotations

import os

from aiohttp import web

from spegel_py.errors import PeerError, StreamDeadlineError
from spegel_py.httpx.answers import BodyHead
from spegel_py.relay import sockio
from spegel_py.relay.floor import StreamFloor
from spegel_py.relay.peerclient import PeerResponse
from spegel_py.relay.sockio import ResponseSink
from spegel_py.relay.stream import StreamContext
from spegel_py.routing.base import Peer


class RangeStream:
    """A peer's open 206 response; :meth:`respond` relays its body. Owns ``buffer`` (from the
    context's pool) and ``response`` until :meth:`respond` or :meth:`aclose` releases them."""

    def __init__(
        self, context: StreamContext, key: str, peer: Peer, response: PeerResponse, buffer: memoryview
    ) -> None:
        self._context = context
        self._key = key
        self._peer = peer
        self._resp: PeerResponse | None = response
        self._buffer: memoryview | None = buffer

    async def aclose(self) -> None:
        """Release the peer connection and the buffer. Idempotent."""
        self._context.release(self._resp, self._buffer)
        self._resp = self._buffer = None

    async def respond(self, request: web.BaseRequest, head: BodyHead) -> web.StreamResponse:
        """Send the peer's body in a response with ``head`` (a 206 of the body's length)."""
        try:
            response = head.response()
            await response.prepare(request)
            sink = ResponseSink(request, response)
            try:
                await self._relay(sink)
            except PeerError as exc:
                self._context.reporter.failed(self._peer, self._key, exc)
                self._context.stats.range_cut()
                sink.abort()
                return response
            except (ConnectionError, StreamDeadlineError) as exc:  # the client left, or too late
                if isinstance(exc, StreamDeadlineError):
                    self._context.stats.deadline_cut()
                sink.abort()
                return response
            except BaseException:
                sink.abort()
                raise
            await response.write_eof()
            return response
        finally:
            await self.aclose()

    async def _relay(self, sink: ResponseSink) -> None:
        resp, buffer = self._resp, self._buffer
        assert resp is not None and buffer is not None
        stall = self._context.settings.stall_timeout
        floor = StreamFloor(self._context.settings, resp.remaining)
        fd = await sink.raw_fd()

        try:
            while resp.remaining:
                n = await floor.read(resp, buffer)
                if fd is None:
                    await floor.write(sink.write, buffer[:n])
                else:
                    await sockio.send_all(fd, buffer[:n], stall_timeout=stall, deadline=floor.deadline)
                    sink.sent += n
        finally:
            if fd is not None:
                os.close(fd)
            self._context.stats.relayed(sink.sent)

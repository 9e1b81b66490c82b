"""Bounds on an aiohttp listener that aiohttp itself does not offer.

Why it exists: the daemon answers anyone who can reach its ports, and aiohttp has no connection
cap, no deadline for a request head separate from keep-alive, and no bound on a response that a
client never reads (``drain`` waits for ever). :class:`BoundedSite` is a ``TCPSite`` whose
protocol factory enforces all three per connection, for every response path (small
``web.Response`` bodies, streamed and mirrored bodies alike), without touching handlers.

- **Connection cap** (``max_connections``): a connection accepted beyond it is closed at once
  (the client sees a reset or EOF); existing connections keep working. Connections accepted in
  one accept batch are counted when aiohttp registers them, so the cap may be exceeded by at
  most one batch (asyncio's accept backlog, 100).
- **Header deadline** (``header_timeout``): a connection that has not delivered a complete
  first request head within it is closed (slowloris). Later requests on a kept-alive connection
  are bounded by the keep-alive idle limit, which aiohttp applies to a partial head too.
- **Write deadline** (``write_timeout``): when the transport's write buffer is over its
  high-water mark (the client is not reading), the connection is aborted unless the buffer
  drains below the low-water mark within the deadline. A client that reads at any pace keeps
  its connection; memory pinned per stalled connection is bounded by the buffer plus one chunk.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

# Transport write buffer watermarks: above HIGH the handler's writes wait (drain) and the write
# deadline runs; a response never pins more than this plus the chunk being written.
WRITE_BUFFER_HIGH = 256 * 1024
WRITE_BUFFER_LOW = 64 * 1024


class _Refused(asyncio.Protocol):
    """Closes a connection accepted over the cap as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:  # pragma: no cover - create_server always gives a Transport
            transport.close()


class _BoundedHandler(RequestHandler):
    """aiohttp's request handler plus a first-head deadline and a write-stall deadline."""

    # RequestHandler has __slots__; ours add two timers.
    __slots__ = ("_bound_header_timeout", "_bound_write_timeout", "_header_timer", "_write_timer")

    def __init__(self, server: Server, *, header_timeout: float, write_timeout: float, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._bound_header_timeout = header_timeout
        self._bound_write_timeout = write_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        if self._bound_header_timeout > 0:
            self._header_timer = self._loop.call_later(self._bound_header_timeout, self._header_expired)

    def _header_expired(self) -> None:
        self._header_timer = None
        if self._request_count == 0 and not self._messages:
            self._abort()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._bound_write_timeout > 0 and self._write_timer is None:
            self._write_timer = self._loop.call_later(self._bound_write_timeout, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        self._abort()

    def _abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()  # connection_lost follows: aiohttp cancels the handler and cleans up

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = None
        super().connection_lost(exc)


class BoundedSite(web.TCPSite):
    """A ``TCPSite`` with a connection cap, a header deadline and a write deadline (seconds).

    The runner's handler options (``keepalive_timeout`` and the like) apply as usual; a bound of
    0 turns that bound off.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        max_connections: int,
        header_timeout: float,
        write_timeout: float,
        reuse_address: bool = True,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._write_timeout = write_timeout

    def _factory(self, server: Server) -> asyncio.Protocol:
        if self._max_connections > 0 and len(server.connections) >= self._max_connections:
            return _Refused()
        return _BoundedHandler(
            server,
            header_timeout=self._header_timeout,
            write_timeout=self._write_timeout,
            loop=asyncio.get_running_loop(),
            **server._kwargs,  # the runner's handler options (keepalive_timeout), as Server.__call__ has
        )

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner; TCPSite's own start is replaced
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

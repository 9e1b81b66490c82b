"""Bounds on an aiohttp listener that aiohttp itself does not offer.

Why it exists: the daemon answers anyone who can reach its ports, and aiohttp has no connection
cap, no deadline for a request head separate from keep-alive, and no bound on a response that a
client never reads (``drain`` waits for ever). :class:`BoundedSite` is a ``TCPSite`` whose
protocol factory enforces all three per connection, for every response path (small
``web.Response`` bodies, streamed and mirrored bodies alike), without touching handlers.

- **Connection cap** (``max_connections``): connections are counted as they are accepted, so
  the cap is exact. At the cap a newcomer takes the slot of a connection that has only waited
  for a request head (for ``evict_grace`` or more), which is closed: an idle kept-alive one
  first, else the one waiting longest for its first head. A request being handled or answered
  is never cut. With none to evict, the newcomer waits, unread, up to ``queue_timeout`` (at most
  ``queue_limit`` wait; beyond, closed at once); the oldest gets the next slot that frees, and
  at its timeout it tries to evict once more, else it is closed. (Without eviction, reconnecting
  slowloris clients held every slot and honest ones were refused: ``bench/reliability/slow.py``.)
- **Header deadline** (``header_timeout``): a connection that has not delivered a complete
  first request head within it is closed (slowloris). Later requests on a kept-alive connection
  are bounded by the keep-alive idle limit, which aiohttp applies to a partial head too.
- **Write deadline** (``write_timeout``): when the transport's write buffer is over its
  high-water mark (the client is not reading), the connection is aborted unless the buffer
  drains below the low-water mark within the deadline. A client that reads at any pace keeps
  its connection; memory pinned per stalled connection is bounded by the buffer plus one chunk.
  Bytes a response leaves in the buffer below the high-water mark (a small body the client
  never reads) must be gone within the deadline once the connection is idle, else it is
  aborted: aiohttp would otherwise hold them, and the descriptor, until the client reads.
- **Accept queue** as long as the cap (clamped to ``net.core.somaxconn``), not 128: a full one drops
  SYNs, resent 1 s later (``bench/reliability/slow.py``). asyncio still accepts 128 per wakeup.
- **Screen** (``screen``): requests that aiohttp's router would answer with a 500 go to the
  listener's own answer before routing (:mod:`spegel_py.httpx.expect`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from spegel_py.httpx.expect import Screen, refuse, screened

# Connections looked at (those waiting longest) for one to evict at the cap: once per accept.
EVICT_SCAN = 64
# Evictable after waiting this long (s): with 0.5, reconnecting slowloris clients filled the queue
# (47 % of honest requests answered on bench/reliability/slow.py's row, 99.6 % with 0).
EVICT_GRACE = 0.0

# Transport write buffer watermarks: above HIGH the handler's writes wait (drain) and the write
# deadline runs; a response never pins more than this plus the chunk being written.
WRITE_BUFFER_HIGH = 256 * 1024
WRITE_BUFFER_LOW = 64 * 1024


class _Refused(asyncio.Protocol):
    """Closes a connection accepted over the cap and the queue as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort() if isinstance(transport, asyncio.Transport) else transport.close()


class _Queued(asyncio.Protocol):
    """A connection accepted at the cap: not read until :meth:`admit` hands it a handler, or
    closed at ``timeout``."""

    def __init__(self, site: BoundedSite, timeout: float) -> None:
        self._site = site
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover - always a Transport
            transport.close()
            return
        self._transport = transport
        transport.pause_reading()  # the request waits in the kernel until a slot frees
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._site._queued.append(self)

    def _expire(self) -> None:
        self._timer = None
        self._leave()
        if not self._site._admit_evicting(self) and self._transport is not None:
            self._transport.abort()

    def _leave(self) -> None:
        if self in self._site._queued:
            self._site._queued.remove(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel() if self._timer is not None else None
        self._timer = self._transport = None
        self._leave()

    def admit(self, handler: asyncio.Protocol) -> bool:
        """Hand the connection to ``handler`` (False when it is already gone)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()
        return True


class _BoundedHandler(RequestHandler):
    """aiohttp's request handler plus a first-head deadline and write deadlines."""

    # RequestHandler has __slots__; ours add the timers and what they need.
    __slots__ = (
        "_bound_header_timeout",
        "_bound_on_close",
        "_bound_on_wait",
        "_bound_transport",
        "_bound_write_timeout",
        "_finished",
        "_header_timer",
        "_tail_mark",
        "_tail_timer",
        "_write_timer",
        "idle_since",
    )

    def __init__(
        self,
        server: Server,
        *,
        header_timeout: float,
        write_timeout: float,
        on_close: Callable[[_BoundedHandler], None],
        on_wait: Callable[[_BoundedHandler], None],
        screen: Screen,
        **kwargs: Any,
    ) -> None:
        super().__init__(server, **kwargs)
        self._bound_on_wait = on_wait
        self.idle_since = 0.0
        handler = self._request_handler
        if handler is not None:
            self._request_handler = screened(self._started(handler), screen)
        self._bound_header_timeout = header_timeout
        self._bound_write_timeout = write_timeout
        self._bound_on_close: Callable[[_BoundedHandler], None] | None = on_close
        self._bound_transport: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._tail_timer: asyncio.TimerHandle | None = None
        self._tail_mark = 0
        self._finished = 0  # responses finished on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if isinstance(transport, asyncio.Transport):
            # aiohttp drops its reference when it closes; a closing transport may still hold
            # unsent bytes, which the tail deadline must still be able to abort.
            self._bound_transport = transport
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        if self._bound_header_timeout > 0:
            self._header_timer = self._loop.call_later(self._bound_header_timeout, self._header_expired)
        self._bound_on_wait(self)

    def _started(self, handler: Screen) -> Screen:
        async def handle(request: BaseRequest) -> StreamResponse:
            self._bound_on_wait(self)  # busy now: to the back of the site's eviction order
            return await handler(request)

        return handle

    def waiting_for_head(self) -> bool:
        """True when nothing is being handled or sent: the connection only waits for (the rest
        of) a request head, so closing it loses no request or response."""
        transport, waiter = self._bound_transport, self._waiter
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        busy = self._messages or self._request_in_progress
        return waiter is not None and not waiter.done() and not busy

    def evict(self) -> None:
        """Close the connection to give its slot to another: the slot is not freed on close."""
        self._bound_on_close = None
        self._abort()

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
        self._watch_tail()

    def _write_expired(self) -> None:
        self._write_timer = None
        self._abort()

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._finished += 1
        self._bound_on_wait(self)
        self._watch_tail()
        return result

    def _watch_tail(self) -> None:
        """Start the tail deadline if bytes wait in the buffer (none is running yet)."""
        transport = self._bound_transport
        if self._bound_write_timeout <= 0 or self._tail_timer is not None or transport is None:
            return
        if transport.get_write_buffer_size():
            self._tail_mark = self._finished
            self._tail_timer = self._loop.call_later(self._bound_write_timeout, self._tail_expired)

    def _tail_expired(self) -> None:
        """Abort an idle connection whose last response's bytes did not leave the buffer."""
        self._tail_timer = None
        transport = self._bound_transport
        if transport is None or not transport.get_write_buffer_size():
            return
        busy = self._request_count > self._finished or self._finished != self._tail_mark
        if busy or self._write_timer is not None:
            # A response is being written (or was since): the high-water deadline covers a
            # stalled writer, and this one watches the tail of the newest response.
            self._watch_tail()
            return
        self._abort()

    def _abort(self) -> None:
        transport = self._bound_transport
        if transport is not None:
            transport.abort()  # connection_lost follows: aiohttp cancels the handler and cleans up

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in (self._header_timer, self._write_timer, self._tail_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = self._tail_timer = None
        self._bound_transport = None
        on_close, self._bound_on_close = self._bound_on_close, None
        super().connection_lost(exc)
        if on_close is not None:
            on_close(self)


class BoundedSite(web.TCPSite):
    """A ``TCPSite`` with a connection cap (and a short queue at it), a header deadline and a
    write deadline (seconds).

    The runner's handler options (``keepalive_timeout`` and the like) apply as usual; a bound of
    0 turns that bound off (``queue_timeout`` 0: refuse at the cap at once).
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
        queue_timeout: float = 1.0,
        queue_limit: int = 128,
        reuse_address: bool = True,
        screen: Screen = refuse,
        evict_grace: float = EVICT_GRACE,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._write_timeout = write_timeout
        self._queue_timeout = queue_timeout
        self._queue_limit = queue_limit
        self._open = 0  # connections with a handler: counted when accepted, not when registered
        self._queued: deque[_Queued] = deque()
        self._screen = screen
        self._evict_grace = evict_grace
        # Served connections, in the order they last started waiting for a request head (accepted,
        # or a response finished); one that starts handling a request moves to the back.
        self._waiting: dict[_BoundedHandler, None] = {}

    @property
    def open_connections(self) -> int:
        """Connections being served (not counting those queued at the cap)."""
        return self._open

    @property
    def queued_connections(self) -> int:
        """Connections waiting at the cap for a slot."""
        return len(self._queued)

    def _factory(self, server: Server) -> asyncio.Protocol:
        if self._max_connections <= 0 or self._open < self._max_connections:
            self._open += 1
            return self._handler(server)
        if self._make_room():
            # The evicted connection's slot, still counted. Not to a queued connection first: one
            # queued waits because none was evictable then, and most are reconnecting attackers
            # (52 % of honest requests answered on the slowloris row that way).
            return self._handler(server)
        if self._queue_timeout > 0 and len(self._queued) < self._queue_limit:
            return _Queued(self, self._queue_timeout)
        return _Refused()

    def _admit_evicting(self, queued: _Queued) -> bool:
        """At its queue timeout, ``queued`` takes the slot of a connection that waits for a head."""
        server = self._runner.server
        if server is None or not self._make_room():
            return False
        if not queued.admit(self._handler(server)) and not self._admit_queued(server):
            self._open -= 1  # gone meanwhile, and no one else waits: the slot is free
        return True

    def _admit_queued(self, server: Server) -> bool:
        """Give a counted, free slot to the oldest queued connection still open (False: none)."""
        while self._queued:
            if self._queued.popleft().admit(self._handler(server)):
                return True
        return False

    def _make_room(self) -> bool:
        """Evict the kept-alive connection idle longest, else the connection that has waited
        longest for its first request head (among the first :data:`EVICT_SCAN`)."""
        victim: _BoundedHandler | None = None
        old = asyncio.get_running_loop().time() - self._evict_grace
        for index, handler in enumerate(self._waiting):
            if index >= EVICT_SCAN or handler.idle_since > old:
                break  # the rest waited less (the order is by idle_since)
            if handler.waiting_for_head():
                if handler._request_count > 0:  # kept alive: idle between requests
                    victim = handler
                    break
                victim = victim or handler
        if victim is None:
            return False
        del self._waiting[victim]
        victim.evict()
        return True

    def _to_back(self, handler: _BoundedHandler) -> None:
        self._waiting.pop(handler, None)
        self._waiting[handler] = None
        handler.idle_since = asyncio.get_running_loop().time()

    def _handler(self, server: Server) -> _BoundedHandler:
        """A handler for a connection whose slot is already counted."""
        return _BoundedHandler(
            server,
            header_timeout=self._header_timeout,
            write_timeout=self._write_timeout,
            on_close=lambda handler: self._closed(server, handler),
            on_wait=self._to_back,
            screen=self._screen,
            loop=asyncio.get_running_loop(),
            **server._kwargs,  # the runner's handler options (keepalive_timeout), as Server.__call__ has
        )

    def _closed(self, server: Server, handler: _BoundedHandler) -> None:
        """A served connection ended: its slot goes to the oldest queued connection still open."""
        self._waiting.pop(handler, None)
        if not self._admit_queued(server):
            self._open -= 1

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
        for listener in sockets:  # through a duplicate: asyncio's own wrapper has no listen()
            with socket.socket(fileno=os.dup(listener.fileno())) as dup:
                dup.listen(max(self._backlog, self._max_connections))
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

"""A small HTTP/1.1 client for peers' registries, reading bodies into the caller's buffers.

Why our own instead of ``aiohttp.ClientSession``: aiohttp's client allocates a fresh ``bytes``
object for every socket read and queues them in its StreamReader, so it cannot read into a
caller's buffer. Relaying must read the peer's socket straight into a pooled buffer
(:mod:`.bufferpool`, ``socket.recv_into``) to keep memory flat as concurrency grows. The
protocol needed is tiny: a GET or HEAD to another spegel-py (or Go Spegel) registry, whose
answers carry ``Content-Length``; anything else (chunked bodies, heads that :mod:`.peerhead`
refuses) fails the peer, and the mirror moves on to the next provider.

Connections are kept alive per peer (bounded idle count and age) because dials cost time that a
mirror request cannot spare; the total number of open peer connections is bounded too.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from spegel_py.errors import (
    PeerDownError,
    PeerError,
    PeerProtocolError,
    PeerTimeoutError,
    PeerUnreachableError,
)
from spegel_py.relay.peerhead import parse_head
from spegel_py.routing.base import Peer

_MAX_HEAD = 16 * 1024  # a registry's response head is a few hundred bytes
# Seconds a batched read waits after a short read (readinto): ~120 KiB at 1 Gbit/s.
_COALESCE = 0.001


@dataclass(slots=True, eq=False)  # identity semantics: kept in sets of open connections
class _Conn:
    sock: socket.socket
    peer_key: tuple[str, int]
    reused: bool = False
    idle_since: float = 0.0


@dataclass(slots=True)
class PeerResponse:
    """A peer's response head; the body (if any) is read with :meth:`readinto`.

    Call :meth:`release` when done: the connection goes back to the keep-alive pool only when
    the body was read to its end, otherwise it is closed.
    """

    status: int
    headers: dict[str, str]  # lower-cased, only :data:`~spegel_py.relay.peerhead.KEPT` names
    content_length: int | None
    _client: PeerClient
    _conn: _Conn | None
    _early: bytearray = field(default_factory=bytearray)  # body bytes read together with the head
    _remaining: int = 0
    _keep_alive: bool = True

    @property
    def remaining(self) -> int:
        """Body bytes not yet read."""
        return self._remaining

    async def readinto(self, buf: memoryview, *, stall_timeout: float, batch: int = 0) -> int:
        """Read up to ``len(buf)`` body bytes into ``buf``; 0 only at the end of the body.

        Raises :class:`PeerError` if the peer closes early, :class:`PeerTimeoutError` if it stays
        silent for ``stall_timeout`` seconds. ``batch``: when a wait for the socket brought
        fewer bytes than that, pause :data:`_COALESCE` seconds before returning them, so the next
        read finds more waiting: a link paced at 1 Gbit/s otherwise costs a wake-up, a read and a
        task switch per few KiB (the multi-provider fetch reads four such links at once).
        ``SO_RCVLOWAT`` would say the same to the kernel, but stalled the receive window here.
        """
        if self._remaining <= 0:
            return 0
        want = min(len(buf), self._remaining)
        if self._early:
            n = min(want, len(self._early))
            buf[:n] = self._early[:n]
            del self._early[:n]
            self._remaining -= n
            return n
        if self._conn is None:
            raise PeerError("response already released")
        sock = self._conn.sock
        try:
            # Fast path: bytes already waiting cost one syscall, no timer and no future. It
            # still yields once so that one fast stream cannot keep the event loop to itself.
            n = sock.recv_into(buf[:want])
        except BlockingIOError:
            n = -1
        except OSError as exc:
            raise PeerError(f"peer connection failed mid-body: {exc}") from exc
        if n >= 0:
            await asyncio.sleep(0)
        else:
            n = await self._wait_recv(sock, buf[:want], stall_timeout)
            if 0 < n < min(batch, want):
                await asyncio.sleep(_COALESCE)
        if n == 0:
            raise PeerError(f"peer closed the connection with {self._remaining} body bytes missing")
        self._remaining -= n
        return n

    async def _wait_recv(self, sock: socket.socket, buf: memoryview, stall_timeout: float) -> int:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(stall_timeout):
                return await loop.sock_recv_into(sock, buf)
        except TimeoutError as exc:
            raise PeerTimeoutError(f"peer silent for {stall_timeout:.3f}s mid-body") from exc
        except OSError as exc:
            raise PeerError(f"peer connection failed mid-body: {exc}") from exc

    async def read_all(self, *, limit: int, stall_timeout: float) -> bytes:
        """Read the whole body (at most ``limit`` bytes, else :class:`PeerError`)."""
        if self._remaining > limit:
            raise PeerError(f"peer body of {self._remaining} bytes exceeds {limit}")
        out = bytearray(self._remaining)
        view = memoryview(out)
        pos = 0
        while self._remaining:
            pos += await self.readinto(view[pos:], stall_timeout=stall_timeout)
        return bytes(out)

    def release(self) -> None:
        """Return the connection to the pool if reusable, else close it. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._give_back(conn, reusable=self._keep_alive and self._remaining == 0)


class PeerClient:
    """HTTP/1.1 requests to peers' registries with keep-alive and a bound on open connections."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_idle_per_peer: int = 8,
        idle_timeout: float = 30.0,
        authorization: str | None = None,
    ) -> None:
        """``max_connections``: open peer sockets at most (requests wait for a slot).
        ``max_idle_per_peer``: kept-alive sockets per peer. ``idle_timeout``: seconds an idle
        socket is kept before it is closed (peers close idle connections too). ``authorization``:
        sent with every request (Spegel's registry basic auth, which every node shares).
        """
        self._authorization = authorization
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle_per_peer
        self._idle_timeout = idle_timeout
        self._idle: defaultdict[tuple[str, int], deque[_Conn]] = defaultdict(deque)
        self._open: set[_Conn] = set()
        self._closed = False
        self.dials_total = 0
        self.reuses_total = 0

    @property
    def open_connections(self) -> int:
        """Sockets currently open to peers (idle or busy)."""
        return len(self._open)

    async def request(
        self,
        peer: Peer,
        method: str,
        target: str,
        headers: dict[str, str],
        *,
        dial_timeout: float,
        first_byte_timeout: float,
    ) -> PeerResponse:
        """Send ``method target`` to ``peer`` and return once the response head has arrived.

        ``dial_timeout`` bounds the TCP connect, ``first_byte_timeout`` the wait for the head.
        A kept-alive socket that turns out to be closed is retried once on a fresh one.
        """
        if self._closed:
            raise PeerError("peer client is closed")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {peer.base_url.removeprefix('http://')}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self._authorization is not None:
            lines.append(f"Authorization: {self._authorization}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for _ in range(2):
            conn = await self._connect(peer, dial_timeout)
            try:
                return await self._exchange(conn, raw, method, first_byte_timeout)
            except _StaleConnectionError:
                self._give_back(conn, reusable=False)
                continue
            except BaseException:
                self._give_back(conn, reusable=False)
                raise
        raise PeerError(f"peer {peer.host}:{peer.port} keeps closing kept-alive connections")

    async def _connect(self, peer: Peer, dial_timeout: float) -> _Conn:
        key = (peer.host, peer.port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout:
                conn.reused = True
                self.reuses_total += 1
                return conn
            self._close(conn)
        if self._slots.locked():
            self._evict_one_idle()  # an idle socket to another peer must not block a new dial
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(dial_timeout):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise PeerUnreachableError("too many open peer connections") from exc
        family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        conn = _Conn(sock, key)
        self._open.add(conn)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(dial_timeout):
                await loop.sock_connect(sock, key)
        except BaseException as exc:
            self._close(conn)
            if isinstance(exc, TimeoutError):
                raise PeerDownError(f"dial to {peer.host}:{peer.port} timed out") from exc
            if isinstance(exc, OSError):
                raise PeerDownError(f"dial to {peer.host}:{peer.port} failed: {exc}") from exc
            raise
        self.dials_total += 1
        return conn

    async def _exchange(
        self, conn: _Conn, raw: bytes, method: str, first_byte_timeout: float
    ) -> PeerResponse:
        loop = asyncio.get_running_loop()
        head = bytearray()
        chunk = bytearray(4096)
        try:
            async with asyncio.timeout(first_byte_timeout):
                await loop.sock_sendall(conn.sock, raw)
                while (end := head.find(b"\r\n\r\n")) < 0:
                    if len(head) > _MAX_HEAD:
                        raise PeerProtocolError("peer response head too large")
                    n = await loop.sock_recv_into(conn.sock, chunk)
                    if n == 0:
                        if conn.reused and not head:
                            raise _StaleConnectionError
                        raise PeerError("peer closed the connection before answering")
                    head += chunk[:n]
        except TimeoutError as exc:
            raise PeerTimeoutError(f"peer sent no response within {first_byte_timeout:.3f}s") from exc
        except OSError as exc:
            if conn.reused and not head and exc.errno in (errno.ECONNRESET, errno.EPIPE):
                raise _StaleConnectionError from exc
            raise PeerError(f"peer connection failed: {exc}") from exc
        parsed = parse_head(bytes(head[:end]))
        status, length, keep_alive = parsed.status, parsed.content_length, parsed.keep_alive
        early = head[end + 4 :]
        # Registries answer with Content-Length; a chunked body is not worth supporting here.
        bodyless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        remaining = 0 if bodyless else (length if length is not None else 0)
        if not bodyless and length is None:
            keep_alive = False
        if len(early) > remaining:
            raise PeerProtocolError("peer sent more bytes than its Content-Length")
        return PeerResponse(status, parsed.headers, length, self, conn, early, remaining, keep_alive)

    def _evict_one_idle(self) -> None:
        oldest: _Conn | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.peer_key].remove(oldest)
            self._close(oldest)

    def _give_back(self, conn: _Conn, *, reusable: bool) -> None:
        if not reusable or self._closed:
            self._close(conn)
            return
        idle = self._idle[conn.peer_key]
        if len(idle) >= self._max_idle:
            self._close(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _close(self, conn: _Conn) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._slots.release()
        conn.sock.close()

    async def close(self) -> None:
        """Close every idle connection and refuse new requests; busy ones close on release."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._close(idle.pop())
        self._idle.clear()


class _StaleConnectionError(PeerError):
    """A kept-alive socket the peer had already closed; retried on a fresh connection."""

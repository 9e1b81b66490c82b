"""Writing relayed bytes to the client: straight into its socket, or through aiohttp.

Why straight into the socket: aiohttp's transport copies whatever the socket does not take at
once into a buffer of its own, and every ``write`` goes through its writer and flow control; at
a few thousand chunks per GiB that was a third of the relay's CPU (bench/relay_bench.py).
:func:`send_all` writes from the pooled buffer with ``os.write`` into a duplicate of the client
socket (:meth:`ResponseSink.raw_fd`), so each byte is copied once, into the socket; waiting for
room uses the event loop's ``add_writer`` on that duplicate, which no asyncio transport owns.
:class:`ResponseSink` is the fallback through aiohttp (TLS, or bytes still queued in the
transport) and the one way to cut the client off before the body completes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys

from aiohttp import web

from spegel_py.errors import StreamDeadlineError


async def wait_writable(sock_fd: int, stall_timeout: float | None, deadline: float | None = None) -> None:
    """Wait for room in the client socket; a client that takes none for ``stall_timeout``
    seconds is treated as gone (``ConnectionResetError``), so it cannot hold a relay forever.
    Past ``deadline`` (loop time) the wait ends with :class:`StreamDeadlineError`."""
    loop = asyncio.get_running_loop()
    timeout, by_deadline = stall_timeout, False
    if deadline is not None:
        left = deadline - loop.time()
        if stall_timeout is None or left < stall_timeout:
            timeout, by_deadline = max(left, 0.0), True
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock_fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError as exc:
        if by_deadline:
            raise StreamDeadlineError("relayed body exceeded its deadline while the client read") from exc
        raise ConnectionResetError(errno.ETIMEDOUT, "client stopped reading") from exc
    finally:
        loop.remove_writer(sock_fd)


async def send_all(
    sock_fd: int, data: memoryview, *, stall_timeout: float | None = None, deadline: float | None = None
) -> None:
    """Write all of ``data`` to the (non-blocking) socket ``sock_fd``, by ``deadline`` (loop
    time, see :func:`wait_writable`; checked only when the socket is full, so a client that
    keeps up costs no timer).

    A client that went away raises ``ConnectionError`` (``EPIPE``/``ECONNRESET`` from the write).
    """
    while data:
        try:
            data = data[os.write(sock_fd, data) :]
        except BlockingIOError:
            await wait_writable(sock_fd, stall_timeout, deadline)


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
        """Flush the response head and return a duplicate of the client socket for :func:`send_all`.

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

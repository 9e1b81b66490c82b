"""Zero-copy sending of a file range into an aiohttp connection with ``os.sendfile``.

Why not ``loop.sendfile``: it re-registers the socket with the selector after every partial
send and gives no hook at each offset, which the page-cache coordinator needs. This sender keeps
one writability registration for the whole body, calls ``os.sendfile`` (at most :data:`CHUNK`
bytes per call, for fairness) straight from the selector callback, with no task switch per
chunk, and reports each new offset to a
:class:`~spegel_py.serving.pagecache.Stream`.

The selector refuses a second registration of a descriptor that a transport owns, so the
socket is duplicated for the duration of the body; both descriptors name one socket. Before the
first byte, the transport's own buffer (the response headers) is flushed so bytes stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

from spegel_py.errors import ContentNotFoundError
from spegel_py.serving.pagecache import Stream

# Most bytes one sendfile() call may send before other connections get a turn. nginx uses
# 2 MiB (sendfile_max_chunk), but each turn here costs a Python loop iteration: at the 8-12 GB/s
# loopback reaches on this machine, 2 MiB turns kept spegel-py at 0.78-0.90x nginx while 8 MiB
# gave 0.88-0.97x (bench/serve_bench.py, docs/benchmarks.md) with the cold page-cache peak
# unchanged. A turn is still bounded: ~1 ms at loopback speed, less over a NIC, where the socket
# takes less per call anyway.
CHUNK = 8 << 20
_DISCONNECTED = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


@contextlib.contextmanager
def sendfile_socket(transport: asyncio.BaseTransport | None) -> Iterator[int | None]:
    """The socket descriptor to ``sendfile`` into, held for the whole response, or ``None`` when
    only streaming can work (TLS, or the connection is already gone).

    It is a duplicate, closed on exit: the transport's own number is released when the client
    goes away, and the kernel gives it to the next socket or file the process opens; a send made
    through that number between two steps of a body (a growing blob is sent in many) would put
    this blob's bytes into another connection. A held duplicate cannot be reused, and a send
    through it after the client left fails with EPIPE.
    """
    sock = None
    if transport is not None and not transport.is_closing() and not transport.get_extra_info("sslcontext"):
        sock = transport.get_extra_info("socket")
    try:
        held = None if sock is None else os.dup(sock.fileno())
    except OSError:  # closed under us (fileno() -1)
        held = None
    try:
        yield held
    finally:
        if held is not None:
            os.close(held)


async def flush(transport: asyncio.WriteTransport, drain: Callable[[], Awaitable[None]]) -> None:
    """Wait until ``transport`` has written everything it buffered (the headers, usually at once).

    Lowering the high-water mark to zero makes the transport pause its protocol while anything is
    buffered and resume it when empty; ``drain`` (the aiohttp writer's) waits for that resume.
    """
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()  # asyncio gives (low, high)
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def send_range(
    sock_fd: int,
    fd: int,
    offset: int,
    count: int,
    stream: Stream | None = None,
    *,
    stall_timeout: float = 30.0,
    deadline: float | None = None,
) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset`` into the (non-blocking) socket ``sock_fd``.

    Raises ``ConnectionResetError`` when the client goes away, accepts no byte for
    ``stall_timeout`` seconds (a reader that stalls must not hold a descriptor forever) or has
    not taken all ``count`` bytes within ``deadline`` seconds (``None``: no deadline; a reader
    that trickles must not either), and ``ContentNotFoundError`` if the file turns out shorter
    than promised; the caller must then abort the connection.
    """
    if count <= 0:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sock = socket.socket(fileno=os.dup(sock_fd))
    out = sock.fileno()
    # Cork the body, as nginx's tcp_nopush does: with TCP_NODELAY set by aiohttp, each 2 MiB
    # sendfile call would otherwise end in a short segment and wake the client more often.
    _set_cork(sock, 1)
    end = offset + count
    position = offset
    registered = False

    def pump() -> None:
        nonlocal position, registered
        if done.done():
            return
        try:
            # One bounded call per writability event: with a client that drains as fast as we
            # send (loopback, a LAN), a single unbounded call could push a whole blob while every
            # other connection waits. The registration is level-triggered, so the next chunk
            # goes out on the next loop iteration, after the other connections had their turn.
            sent = os.sendfile(out, fd, position, min(end - position, CHUNK))
            if sent == 0:
                raise ContentNotFoundError("blob shrank while it was being sent")
            position += sent
            if stream is not None:
                stream.advance(position)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno in _DISCONNECTED:
                done.set_exception(ConnectionResetError(exc.errno, "client went away"))
            else:
                done.set_exception(exc)
            return
        except ContentNotFoundError as exc:
            done.set_exception(exc)
            return
        if position >= end:
            done.set_result(None)
        elif not registered:
            loop.add_writer(out, pump)
            registered = True

    watched = position
    timer: asyncio.TimerHandle | None = None

    def watchdog() -> None:
        nonlocal watched, timer
        if done.done():
            return
        if position == watched:
            done.set_exception(ConnectionResetError(errno.ETIMEDOUT, "client stopped reading"))
            return
        watched = position
        timer = loop.call_later(stall_timeout, watchdog)

    def expire() -> None:
        if not done.done():
            done.set_exception(ConnectionResetError(errno.ETIMEDOUT, "response deadline passed"))

    timer = loop.call_later(stall_timeout, watchdog)
    cutoff = None if deadline is None else loop.call_later(deadline, expire)
    try:
        pump()
        await done
    finally:
        for handle in (timer, cutoff):
            if handle is not None:
                handle.cancel()
        if registered:
            loop.remove_writer(out)
        _set_cork(sock, 0)  # uncorking flushes the last partial segment at once
        sock.close()


def _set_cork(sock: socket.socket, value: int) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, value)
    except OSError:  # not TCP (a unix socket in tests) or already closed: nothing to cork
        pass

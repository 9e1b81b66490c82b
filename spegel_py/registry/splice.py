"""Kernel-side relaying: peer socket -> pipe -> client socket, with a tee'd copy to hash.

Why: relaying through a user-space buffer costs two copies per byte (out of the peer's socket,
into the client's) on top of hashing. ``splice(2)`` moves the bytes between the sockets through
a pipe without copying them to user space, and ``tee(2)`` duplicates the pipe's contents into a
second pipe, which is read (one copy) only to hash them. Measured on a busy 2-core machine: a
bare prototype relayed 1.3-1.8x faster than recv_into + send, but inside the mirror
(bench/relay_bench.py) the gain was within noise, so the mirror enables it only on request
(``MirrorSettings.splice``). Linux only; ``tee`` is not in
:mod:`os`, so it is called from libc through :mod:`ctypes`; where either is unavailable the
mirror uses the buffer path (:func:`available` says which).

Only raw file descriptors are handled here; waiting for readiness is done with the event loop's
``add_reader``/``add_writer`` on descriptors that no asyncio transport owns (the client socket is
``dup``-ed for that reason).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
from collections.abc import Callable
from functools import cache

from spegel_py.errors import SpegelError

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ exists only from Python 3.10 on some builds


class SpliceUnavailableError(SpegelError):
    """The kernel or libc cannot splice/tee here; relay through a buffer instead."""


@cache
def _tee() -> Callable[[int, int, int, int], int] | None:
    if not hasattr(os, "splice"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is loaded already; find_library would spawn ldconfig
        tee = libc.tee
    except (OSError, AttributeError):
        return None
    tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    tee.restype = ctypes.c_ssize_t
    typed: Callable[[int, int, int, int], int] = tee
    return typed


def available() -> bool:
    """True when ``splice`` and ``tee`` can be used."""
    return _tee() is not None


class PipePair:
    """Two non-blocking pipes of ``size`` bytes: the relay pipe and the tee'd hashing pipe."""

    def __init__(self, size: int) -> None:
        if not available():
            raise SpliceUnavailableError("splice/tee not available")
        fds: list[int] = []
        try:
            for _ in range(2):
                r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                fds += [r, w]
                fcntl.fcntl(w, _F_SETPIPE_SZ, size)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise SpliceUnavailableError(f"cannot create pipes of {size} bytes: {exc}") from exc
        self.relay_r, self.relay_w, self.hash_r, self.hash_w = fds
        self.size = size

    def tee(self, n: int) -> int:
        """Duplicate the first ``n`` bytes waiting in the relay pipe into the hashing pipe."""
        tee = _tee()
        assert tee is not None
        done = tee(self.relay_r, self.hash_w, n, 0)
        if done < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(done)

    def read_hash_copy(self, buf: memoryview, n: int) -> None:
        """Read the ``n`` tee'd bytes into ``buf`` (they are in the pipe already: no waiting)."""
        got = 0
        while got < n:
            got += os.readv(self.hash_r, [buf[got:n]])

    def close(self) -> None:
        for fd in (self.relay_r, self.relay_w, self.hash_r, self.hash_w):
            os.close(fd)


async def wait_fd(fd: int, *, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable); the caller bounds the wait with a timeout."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _wait_writable(sock_fd: int, stall_timeout: float | None) -> None:
    """Wait for room in the client socket; a client that takes none for ``stall_timeout``
    seconds is treated as gone (``ConnectionResetError``), so it cannot hold a relay forever."""
    try:
        async with asyncio.timeout(stall_timeout):
            await wait_fd(sock_fd, write=True)
    except TimeoutError as exc:
        raise ConnectionResetError(errno.ETIMEDOUT, "client stopped reading") from exc


async def splice_out(pipe_r: int, sock_fd: int, n: int, *, stall_timeout: float | None = None) -> None:
    """Move exactly ``n`` bytes from ``pipe_r`` into the (non-blocking) socket ``sock_fd``."""
    while n:
        try:
            n -= os.splice(pipe_r, sock_fd, n, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
        except BlockingIOError:
            await _wait_writable(sock_fd, stall_timeout)


async def send_all(sock_fd: int, data: memoryview, *, stall_timeout: float | None = None) -> None:
    """Write all of ``data`` to the (non-blocking) socket ``sock_fd``.

    A client that went away raises ``ConnectionError`` (``EPIPE``/``ECONNRESET`` from the write).
    """
    while data:
        try:
            data = data[os.write(sock_fd, data) :]
        except BlockingIOError:
            await _wait_writable(sock_fd, stall_timeout)

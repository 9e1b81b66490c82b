"""The floor under a relayed body: a minimum peer throughput, and a deadline from the size.

Why: a per-read stall timeout alone lets a peer that sends one byte every few seconds hold a
pull, and a relay buffer, for ever (issue 11: 64 such streams emptied the pool). Two bounds
close that, both off when ``MirrorSettings.min_throughput`` is 0:

- **Throughput floor.** The peer's reads are measured in windows: each window of
  ``throughput_window`` seconds spent *waiting for the peer* must bring ``min_throughput x
  throughput_window`` bytes (or the rest of the body, if less). A window that ends short raises
  :class:`~spegel_py.errors.PeerSlowError`; the blob stream then resumes from another provider
  with ``Range`` (:mod:`.stream`), a range stream cuts the client (:mod:`.rangestream`). Only
  time inside reads counts, so a client that reads slowly never makes its peer look slow (the
  client's side is bounded by the write stall timeout and the deadline below). A window that
  filled up starts the next one at once, so the floor is an average over each window, and a
  burst followed by silence passes only while the burst covers the window.
- **Deadline.** The whole response, client writes and resumes included, must finish within
  ``deadline_allowance + size / min_throughput`` seconds of wall time (``size``: the bytes read
  from peers); past it :class:`~spegel_py.errors.StreamDeadlineError` cuts the client, which
  retries. A stream kept alive by a chain of peers each just above the floor, or by a client
  that reads just fast enough to pass the write stall bound, ends here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from spegel_py.errors import PeerSlowError, PeerTimeoutError, StreamDeadlineError
from spegel_py.relay.peerclient import PeerResponse
from spegel_py.relay.settings import MirrorSettings


def body_deadline(settings: MirrorSettings, size: int) -> float | None:
    """Seconds a relayed body of ``size`` bytes may take in all (``None``: no floor, no deadline)."""
    if settings.min_throughput <= 0:
        return None
    return settings.deadline_allowance + size / settings.min_throughput


class StreamFloor:
    """The floor and deadline of one relayed body of ``size`` bytes (starts running when made)."""

    def __init__(self, settings: MirrorSettings, size: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._stall = settings.stall_timeout
        self._rate = settings.min_throughput
        self._window = settings.throughput_window
        self._remaining = size
        seconds = body_deadline(settings, size)
        self.deadline = None if seconds is None else self._loop.time() + seconds  # loop time
        self._spent = 0.0  # seconds waited for the peer in the current window
        self._got = 0  # bytes received in the current window
        self._need = 0  # bytes the current window must bring
        self.new_peer()

    def new_peer(self) -> None:
        """A (resumed) peer starts: its first window begins with its first read."""
        self._spent = 0.0
        self._got = 0
        self._need = min(self._remaining, int(self._rate * self._window))

    def left(self) -> float | None:
        """Seconds to the deadline (``None``: no deadline); raises once it has passed."""
        if self.deadline is None:
            return None
        left = self.deadline - self._loop.time()
        if left <= 0:
            raise StreamDeadlineError(f"relayed body exceeded its deadline ({self._remaining} bytes left)")
        return left

    async def read(self, resp: PeerResponse, buf: memoryview, *, batch: int = 0) -> int:
        """``resp.readinto(buf, batch=batch)`` within the stall timeout, the window and the deadline."""
        left = self.left()
        window = self._window - self._spent if self._rate > 0 else float("inf")
        timeout = min(self._stall, window, float("inf") if left is None else left)
        started = self._loop.time()
        try:
            n = await resp.readinto(buf, stall_timeout=max(timeout, 0.0), batch=batch)
        except PeerTimeoutError as exc:
            self._spent += self._loop.time() - started
            if left is not None and timeout == left:
                raise StreamDeadlineError(
                    f"relayed body exceeded its deadline ({self._remaining} bytes left)"
                ) from exc
            if timeout == window:  # the window ran out, not the stall bound
                raise self._slow() from exc
            raise
        self._spent += self._loop.time() - started
        self._remaining -= n
        self._got += n
        if self._rate > 0 and self._got >= self._need:  # the window is full: the next one starts
            self._spent, self._got = 0.0, 0
            self._need = min(self._remaining, int(self._rate * self._window))
        else:
            self._check()
        return n

    def _check(self) -> None:
        if self._rate > 0 and self._spent >= self._window:
            raise self._slow()

    def _slow(self) -> PeerSlowError:
        return PeerSlowError(f"peer sent {self._got} bytes in {self._spent:.1f}s, below {self._rate} bytes/s")

    async def write(self, send: Callable[[memoryview], Awaitable[None]], data: memoryview) -> None:
        """``send(data)`` to the client through aiohttp, cut at the deadline
        (:class:`StreamDeadlineError`); writes straight into the socket pass :attr:`deadline` to
        :func:`~spegel_py.relay.sockio.send_all` instead, which needs no timer per chunk."""
        left = self.left()
        if left is None:
            await send(data)
            return
        try:
            async with asyncio.timeout(left):
                await send(data)
        except TimeoutError as exc:
            raise StreamDeadlineError("relayed body exceeded its deadline while the client read") from exc

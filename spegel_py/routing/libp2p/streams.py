"""Long-lived DHT streams to one peer: pipelined ADD_PROVIDER writes and a pool for requests.

Opening a stream costs ~4 ms and ~4-5 ms CPU per side on py-libp2p 0.8, and one ``write()`` per
message costs ~300 us, so both directions keep streams open:

- :class:`ProvideSender` appends framed ADD_PROVIDER messages to a buffer and a writer task
  drains it in ~64 KB writes on one stream (no reply per ADD_PROVIDER, as go-libp2p-kad-dht);
  the buffer is bounded and a peer that stops reading is disconnected (:class:`.limits.SendLimits`).
- :class:`RequestPool` sends GET_PROVIDERS / FIND_NODE over a few streams; a peer answers the
  requests of one stream in order, so each stream keeps a FIFO of waiters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from spegel_py.errors import RoutingError
from spegel_py.routing.libp2p.limits import SendLimits
from spegel_py.routing.libp2p.wire import Deframer, Message, WireError, decode, frame

log = logging.getLogger(__name__)

PROTOCOL = TProtocol("/spegel/kad/1.0.0")  # what every DHT stream speaks (Spegel's Kademlia)
# 65,507 bytes: a 64 KiB yamux frame plus its header no longer fits one Noise message (65,519
# bytes max) and py-libp2p splits it in two; this size keeps one write = one Noise message.
WRITE_CHUNK = 65507
READ_SIZE = 65536
RETRY_MAX = 5.0  # seconds between attempts to reopen a failed provide stream, at most
# Provide streams that fail in a row before the queue drains: the peer stops reading (py-libp2p's
# Yamux fails a write after 5 s of a full window, and a new stream would get a fresh window)
FAILURES_BEFORE_DISCONNECT = 3
# Longest reply read (go-libp2p-kad-dht allows 4 MiB). An honest reply holds k = 20 closer peers
# and the providers of one key (at most RecordLimits.per_key = 256 from us; ~70 bytes each):
# under 32 KiB. A longer one ends its stream before a byte of it is buffered, so a peer cannot
# make each of our requests cost 4 MiB of reading, decrypting and buffering.
MAX_REPLY = 1 << 20


class StreamClosed(RoutingError):
    """The stream to a peer failed or closed before a reply arrived."""


async def reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.reset()
        except Exception:  # the stream is already gone; nothing left to release
            log.debug("reset of a dead stream", exc_info=True)


class ProvideSender:
    """ADD_PROVIDER messages to one peer, written in large batches on one long-lived stream.

    Bounded against a peer that stops reading (``limits``): the queue holds at most
    ``max_pending`` bytes (past it the queue is dropped, and ``on_loss`` queues everything again
    once the peer reads again), and a write that makes no progress for ``stall_timeout``
    seconds, or :data:`FAILURES_BEFORE_DISCONNECT` streams failing in a row before the queue
    drains, disconnect the peer (the node then drops this sender with the peer).
    """

    def __init__(
        self,
        host: IHost,
        peer: ID,
        protocol: TProtocol,
        *,
        on_loss: Callable[[], None],
        limits: SendLimits | None = None,
    ) -> None:
        self._host = host
        self._peer = peer
        self._protocol = protocol
        self._on_loss = on_loss  # asks the node to re-queue every record this peer should hold
        self._limits = limits if limits is not None else SendLimits()
        self._buf = bytearray()
        self._wake = trio.Event()
        self._stream: INetStream | None = None
        self._closed = False
        self._overflowed = False  # batches were dropped: queue everything again once drained
        self.sent_bytes = 0
        self.dropped_bytes = 0  # queued bytes dropped because the peer did not read them
        self.stalled = False  # the peer stopped reading and was disconnected

    def enqueue(self, data: bytes) -> None:
        if self._closed:
            return
        if len(self._buf) + len(data) > self._limits.max_pending:
            self.dropped_bytes += len(self._buf) + len(data)
            self._buf.clear()
            self._overflowed = True
            return
        self._buf += data
        self._wake.set()

    def pending(self) -> int:
        return len(self._buf)

    async def run(self) -> None:
        """Writer task: drains the buffer; on failure drops it (reprovides resend) and retries."""
        delay = 0.1
        failures = 0
        try:
            while not self._closed:
                if not self._buf:
                    if self._overflowed:  # the peer reads again: what was dropped goes again
                        self._overflowed = False
                        self._on_loss()
                        continue
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                try:
                    if self._stream is None:
                        self._stream = await self._host.new_stream(self._peer, [self._protocol])
                    while self._buf:
                        chunk = bytes(self._buf[:WRITE_CHUNK])
                        del self._buf[:WRITE_CHUNK]
                        with trio.move_on_after(self._limits.stall_timeout) as scope:
                            await self._stream.write(chunk)
                        if scope.cancelled_caught:
                            await self._stall()
                            return
                        self.sent_bytes += len(chunk)
                    delay, failures = 0.1, 0
                except Exception as exc:  # any stream failure: what was in flight may be lost
                    log.debug("provide stream to %s failed: %s", self._peer, exc)
                    failures += 1
                    if failures >= FAILURES_BEFORE_DISCONNECT:
                        await self._stall()
                        return
                    self._buf.clear()
                    if self._stream is not None:
                        await reset_quietly(self._stream)
                        self._stream = None
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    if not self._closed:
                        self._on_loss()  # resend everything it should hold (idempotent records)
        finally:
            self._closed = True
            if self._stream is not None:
                await reset_quietly(self._stream)

    async def _stall(self) -> None:
        """The peer stopped reading: drop its queue and disconnect it (it leaves the table; when
        it comes back it gets every record it should hold)."""
        log.info(
            "peer %s stopped reading our records for %ss: disconnecting it",
            self._peer,
            self._limits.stall_timeout,
        )
        self.stalled = True
        self._closed = True
        self.dropped_bytes += len(self._buf)
        self._buf.clear()
        with trio.CancelScope(shield=True), trio.move_on_after(self._limits.stall_timeout):
            try:
                await self._host.disconnect(self._peer)
            except Exception:  # already gone
                log.debug("disconnecting %s", self._peer, exc_info=True)

    def close(self) -> None:
        self._closed = True
        self._buf.clear()
        self._wake.set()


class _Waiter:
    __slots__ = ("body", "done", "failed")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.body: bytes | None = None
        self.failed = False


class _RequestStream:
    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self.pending: deque[_Waiter] = deque()
        self.lock = trio.Lock()  # a request's write and its place in `pending` stay in order
        self.dead = False

    def fail(self) -> None:
        self.dead = True
        while self.pending:
            w = self.pending.popleft()
            w.failed = True
            w.done.set()


class RequestPool:
    """Request/response over up to ``max_streams`` long-lived streams to one peer."""

    def __init__(
        self,
        host: IHost,
        peer: ID,
        protocol: TProtocol,
        spawn: Callable[..., None],
        *,
        max_streams: int = 4,
    ) -> None:
        self._host = host
        self._peer = peer
        self._protocol = protocol
        self._spawn = spawn  # nursery.start_soon of the DHT node: readers live as long as it
        self._max = max_streams
        self._streams: list[_RequestStream] = []
        self._opening = 0
        self._opened = trio.Event()
        self._closed = False

    async def request(self, body: bytes) -> Message:
        rs = await self._pick()
        waiter = _Waiter()
        async with rs.lock:
            if rs.dead:
                raise StreamClosed(f"stream to {self._peer} closed")
            rs.pending.append(waiter)
            try:
                await rs.stream.write(frame(body))
            except Exception as exc:
                rs.fail()
                await reset_quietly(rs.stream)
                raise StreamClosed(f"write to {self._peer} failed: {exc}") from exc
        await waiter.done.wait()
        if waiter.failed or waiter.body is None:
            raise StreamClosed(f"stream to {self._peer} closed before the reply")
        return decode(waiter.body)

    async def _pick(self) -> _RequestStream:
        while True:
            if self._closed:
                raise StreamClosed("request pool closed")
            self._streams = [s for s in self._streams if not s.dead]
            live = self._streams
            best = min(live, key=lambda s: len(s.pending)) if live else None
            if best is not None and (not best.pending or len(live) + self._opening >= self._max):
                return best
            if len(live) + self._opening < self._max:
                return await self._open()
            opened = self._opened  # only streams being opened: wait for one
            await opened.wait()

    async def _open(self) -> _RequestStream:
        self._opening += 1
        try:
            stream = await self._host.new_stream(self._peer, [self._protocol])
        except Exception as exc:
            raise StreamClosed(f"cannot open a stream to {self._peer}: {exc}") from exc
        finally:
            self._opening -= 1
            self._opened.set()
            self._opened = trio.Event()
        rs = _RequestStream(stream)
        if self._closed:
            await reset_quietly(stream)
            raise StreamClosed("request pool closed")
        self._streams.append(rs)
        self._spawn(self._reader, rs)
        return rs

    async def _reader(self, rs: _RequestStream) -> None:
        # a stream buffers at most MAX_REPLY, and decoding keeps a bounded number of entries
        deframer = Deframer(MAX_REPLY)
        try:
            while not rs.dead:
                data = await rs.stream.read(READ_SIZE)
                if not data:
                    break
                for body in deframer.feed(data):
                    if not rs.pending:
                        raise WireError("reply without a request")
                    w = rs.pending.popleft()
                    w.body = body
                    w.done.set()
        except Exception as exc:  # reset, EOF, protocol error: the stream is done either way
            log.debug("request stream to %s ended: %s", self._peer, exc)
        finally:
            rs.fail()
            await reset_quietly(rs.stream)

    def close(self) -> None:
        self._closed = True
        for rs in self._streams:
            rs.fail()
        self._opened.set()

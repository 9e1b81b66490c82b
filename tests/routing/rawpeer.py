"""A bare libp2p host for sending hand-made DHT bytes to a router under test (a plain module:
test modules import it, never each other).

:class:`RawPeer` runs py-libp2p's host with Spegel's transport stack (TCP, Noise, Yamux) in its
own trio thread, but no DHT: a test dials the router, opens ``/spegel/kad/1.0.0`` streams and
writes whatever bytes it likes, or answers the router's requests with a ``handler`` of its own.
That is how a hostile peer looks to the router: a real, authenticated libp2p connection.

The hostile inputs of issue 10 item 3 are built here too: an ADD_PROVIDER flood
(:func:`add_providers`), replies from :func:`answering` handlers (a 4 MiB frame of empty
entries: :func:`empty_entries`; closer peers that do not exist: :func:`invented`; malformed
multiaddrs: :data:`MALFORMED`), requests whose replies are never read (:func:`never_read`), and
a listener on a poisoned address that counts what reaches it (:class:`PoisonListener`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import IHost, INetStream

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.bridge import TrioThread
from spegel_py.routing.libp2p.host import build_host, dial, split_p2p
from spegel_py.routing.libp2p.pnet import transport
from spegel_py.routing.libp2p.psk import PreSharedKey
from spegel_py.routing.libp2p.streams import PROTOCOL, READ_SIZE

T = TypeVar("T")
Handler = Callable[[INetStream], Awaitable[None]]


class RawPeer:
    """``await start()``, ``await call(fn, ...)`` (``fn(host, ...)`` runs in the trio thread),
    ``await close()``. ``handler``: serves inbound ``/spegel/kad/1.0.0`` streams, if given.
    ``psk``: the private network's key its connections use, if any."""

    def __init__(self, ip: str, *, handler: Handler | None = None, psk: PreSharedKey | None = None) -> None:
        self._ip = ip
        self._psk = psk
        self._handler = handler
        self._thread = TrioThread(name=f"rawpeer-{ip}")
        self._host: IHost | None = None
        self._stop: trio.Event | None = None
        self._main: asyncio.Future[None] | None = None

    @property
    def host(self) -> IHost:
        assert self._host is not None, "not started"
        return self._host

    @property
    def peer_id(self) -> bytes:
        return self.host.get_id().to_bytes()

    def addr(self) -> bytes:
        """This peer's listen address, binary (as it goes into a DHT message)."""
        return bytes(split_p2p(str(self.host.get_addrs()[0]))[0].to_bytes())

    async def start(self) -> None:
        await self._thread.astart()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        async def run() -> None:
            tcp = transport(self._psk)
            host = build_host(os.urandom(32), tcp)
            self._host, self._stop = host, trio.Event()
            try:
                async with host.run([multiaddr.Multiaddr(f"/ip4/{self._ip}/tcp/0")]):
                    if self._handler is not None:
                        host.set_stream_handler(PROTOCOL, self._handler)
                    loop.call_soon_threadsafe(started.set_result, None)
                    await self._stop.wait()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await host.close()
                tcp.close_leftovers()

        self._main = self._thread.submit(run)
        done, _ = await asyncio.wait({self._main, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._main in done:
            started.cancel()
            await self._main  # raises why it did not start

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._thread.call(fn, self.host, *args)

    async def close(self) -> None:
        if self._main is not None:
            stop = self._stop

            async def set_stop() -> None:
                if stop is not None:
                    stop.set()

            await self._thread.call(set_stop)
            await self._main
        await self._thread.astop()


async def open_stream(host: IHost, addr: str) -> INetStream:
    """A new ``/spegel/kad/1.0.0`` stream to the router at ``addr`` (``.../p2p/<id>``), dialled first."""
    maddr, pid = split_p2p(addr)
    assert pid is not None
    await dial(host, maddr, pid)
    return await host.new_stream(pid, [PROTOCOL])


async def read_message(stream: INetStream, deframer: wire.Deframer) -> wire.Message | None:
    """The next message on ``stream`` (one request in flight: one reply); None once it ends."""
    while True:
        try:
            data = await stream.read(READ_SIZE)
        except Exception:  # reset by the router: what a refusal looks like
            return None
        if not data:
            return None
        bodies = deframer.feed(data)
        if bodies:
            return wire.decode(bodies[0])


async def request(stream: INetStream, msg: wire.Message) -> wire.Message | None:
    """Write ``msg``, read the reply; None if the router ended the stream instead."""
    try:
        await stream.write(wire.frame(wire.encode(msg)))
    except Exception:  # reset already
        return None
    return await read_message(stream, wire.Deframer())


async def reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:  # gone already
        pass


async def ping(host: IHost, addr: str) -> wire.Message | None:
    """PING on a new stream: the router admits the peer that opened it into its table."""
    stream = await open_stream(host, addr)
    try:
        return await request(stream, wire.Message(wire.PING))
    finally:
        await reset(stream)


async def ask_providers(host: IHost, addr: str, key: bytes) -> list[bytes]:
    """An honest GET_PROVIDERS on a stream of its own: the provider ids of the reply."""
    stream = await open_stream(host, addr)
    try:
        reply = await request(stream, wire.Message(wire.GET_PROVIDERS, key=key))
    finally:
        await reset(stream)
    assert reply is not None, "the node did not answer"
    return [p.id for p in reply.providers]


def flood_key(i: int) -> bytes:
    return b"\x12\x20" + i.to_bytes(32, "big")


async def add_providers(
    host: IHost, addr: str, numbers: range, bad: list[bytes] | None = None, self_addrs: tuple[bytes, ...] = ()
) -> None:
    """Pipeline ADD_PROVIDER for ``flood_key(i)`` of every i in ``numbers`` (after one for each
    key in ``bad``) on one stream to the node at ``addr``, as fast as the stream takes them.
    The records name this host at its listen address, or at ``self_addrs`` if given."""
    stream = await open_stream(host, addr)
    own = self_addrs or (bytes(split_p2p(str(host.get_addrs()[0]))[0].to_bytes()),)
    me = wire.PeerInfo(host.get_id().to_bytes(), own)
    head, tail = wire.add_provider_prefix(wire.encode_peer(me))
    invalid = (
        wire.frame(wire.encode(wire.Message(wire.ADD_PROVIDER, key=k, providers=[me]))) for k in bad or []
    )
    await stream.write(b"".join(invalid))
    for start in range(numbers.start, numbers.stop, 10_000):
        keys = range(start, min(start + 10_000, numbers.stop))
        batch = b"".join(head + flood_key(i) + tail for i in keys)
        for attempt in range(5):
            try:
                await stream.write(batch)
                break
            except Exception:  # the stream or connection went under load: a flood goes on
                if attempt == 4:
                    raise
                await reset(stream)
                stream = await reopen(host, addr)
    await stream.close()  # the node reads to the end, then ends the stream


async def reopen(host: IHost, addr: str) -> INetStream:
    """A new stream to ``addr`` once the swarm has let go of a dead connection (a few tries)."""
    for attempt in range(10):
        try:
            return await open_stream(host, addr)
        except Exception:
            if attempt == 9:
                raise
            await trio.sleep(0.5)
    raise AssertionError("unreachable")


def answering(reply: Callable[[wire.Message], bytes]) -> Handler:
    """A handler that answers every request the router sends with the bytes ``reply`` makes."""

    async def handle(stream: INetStream) -> None:
        deframer = wire.Deframer()
        try:
            while data := await stream.read(READ_SIZE):
                for body in deframer.feed(data):
                    await stream.write(reply(wire.decode(body)))
        except Exception:  # the router reset the stream
            pass
        finally:
            await reset(stream)

    return handle


def empty_entries() -> bytes:
    """A 4 MiB frame (the wire's limit) of empty provider entries: two million, undecoded."""
    return wire.frame(b"\x08\x03" + b"\x4a\x00" * ((wire.MAX_MESSAGE - 2) // 2))


def invented(n: int, addrs: tuple[bytes, ...]) -> list[wire.PeerInfo]:
    """``n`` peers that do not exist (valid-looking Ed25519 peer ids), each at ``addrs``."""
    return [wire.PeerInfo(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32), addrs) for _ in range(n)]


# binary multiaddrs that are not: truncated ip4/ip6, a port cut short, unknown protocol codes
MALFORMED = (
    b"\x04\x7f\x00",
    b"\x29\x00\x01",
    b"\x04\x7f\x00\x00\x01\x06\x13",
    b"\xff\xff\xff\xff",
    b"\x06",
    b"",
)


async def never_read(host: IHost, addr: str, streams: int, requests: int) -> list[INetStream]:
    """Open ``streams`` streams, pipeline ``requests`` GET_PROVIDERS on each, never read a reply;
    returns the streams the router admitted."""
    held = []
    body = b"".join(
        wire.frame(wire.encode(wire.Message(wire.GET_PROVIDERS, key=flood_key(i)))) for i in range(requests)
    )
    for _ in range(streams):
        try:
            stream = await open_stream(host, addr)
        except Exception:  # refused: the router holds this peer's limit of streams already
            continue
        held.append(stream)
        with trio.move_on_after(2):  # the router stops reading once its replies are not read
            try:
                await stream.write(body)
            except Exception:  # reset by the router
                pass
    return held


class PoisonListener:
    """A TCP listener on an address no honest peer has: counts connections, and those whose
    first bytes are an HTTP request (what the mirror would send). Runs in a thread."""

    def __init__(self, ip: str, port: int) -> None:
        self._sock = socket.create_server((ip, port))
        self._sock.settimeout(0.2)
        self.connections = 0
        self.http_requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"poison-{ip}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.connections += 1
                conn.settimeout(1.0)
                try:
                    first = conn.recv(16)
                except OSError:
                    first = b""
                if first.split(b" ", 1)[0] in (b"GET", b"HEAD", b"POST", b"PUT"):
                    self.http_requests += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

"""A bare libp2p host for sending hand-made DHT bytes to a router under test (a plain module:
test modules import it, never each other).

:class:`RawPeer` runs py-libp2p's host with Spegel's transport stack (TCP, Noise, Yamux) in its
own trio thread, but no DHT: a test dials the router, opens ``/spegel/kad/1.0.0`` streams and
writes whatever bytes it likes, or answers the router's requests with a ``handler`` of its own.
That is how a hostile peer looks to the router: a real, authenticated libp2p connection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
import trio
from libp2p.abc import IHost, INetStream

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.bridge import TrioThread
from spegel_py.routing.libp2p.host import TrackedTCP, build_host, dial, split_p2p
from spegel_py.routing.libp2p.streams import PROTOCOL, READ_SIZE

T = TypeVar("T")
Handler = Callable[[INetStream], Awaitable[None]]


class RawPeer:
    """``await start()``, ``await call(fn, ...)`` (``fn(host, ...)`` runs in the trio thread),
    ``await close()``. ``handler``: serves inbound ``/spegel/kad/1.0.0`` streams, if given."""

    def __init__(self, ip: str, *, handler: Handler | None = None) -> None:
        self._ip = ip
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
            tcp = TrackedTCP()
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

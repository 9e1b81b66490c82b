"""A bound on the inbound streams one connection keeps open, whatever their protocol.

py-libp2p 0.8's Yamux accepts every stream a peer opens and hands it to the swarm, which waits
for a free slot of its node-wide stream semaphore (``host.MAX_STREAMS``) and then for the peer's
multistream negotiation, up to ``INBOUND_NEGOTIATION_TIMEOUT`` seconds: a peer that opens
thousands of streams and never negotiates them would tie up every slot of the node and a task
per stream. Go's yamux bounds the streams a connection accepts; py-libp2p builds its Yamux
itself (a subclass cannot be configured), so :class:`StreamGuard` does it as a notifee: the
swarm tells it of every new stream before negotiating it, and past :data:`MAX_INBOUND_STREAMS`
open inbound streams on the stream's connection the new one is reset at once and counted. A
spegel-py peer holds at most 5 DHT streams to a node, plus identify and ping; Go and js-libp2p
a few more.
"""

from __future__ import annotations

import contextlib
from typing import Any

import multiaddr  # type: ignore[import-untyped]  # py-multiaddr ships no type information
from libp2p.abc import INetConn, INetStream, INetwork, INotifee

MAX_INBOUND_STREAMS = 32  # open inbound streams per connection; more are reset as they arrive
INBOUND_NEGOTIATION_TIMEOUT = 5.0  # seconds a peer has to name a protocol on a new stream


class StreamGuard(INotifee):
    """Resets inbound streams past ``limit`` per connection; :attr:`refused` counts them (an int
    the metrics thread reads)."""

    def __init__(self, limit: int = MAX_INBOUND_STREAMS) -> None:
        self._limit = limit
        self.refused = 0

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        muxed: Any = getattr(stream, "muxed_stream", None)
        if muxed is None or getattr(muxed, "is_initiator", True):
            return  # ours, or not a Yamux stream
        streams: dict[Any, Any] = getattr(stream.muxed_conn, "streams", {})
        inbound = sum(1 for s in list(streams.values()) if not s.is_initiator and not s.closed)
        if inbound > self._limit:
            self.refused += 1
            with contextlib.suppress(Exception):  # the peer may have reset it already
                await stream.reset()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

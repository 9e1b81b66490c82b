"""The mirror tests' cluster: fake peers on 127.0.0.x, a router over them, mirrors behind front
servers, all torn down together (the ``cluster`` fixture in this folder's conftest yields one).

A module of its own so test modules can name the type without importing from a conftest.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from mirror_fakes import FakePeer, FakeRouter, Front, Knobs

from spegel_py.registry.bufferpool import BufferPool
from spegel_py.registry.mirror import Mirror, MirrorSettings
from spegel_py.registry.peerclient import PeerClient
from spegel_py.registry.peerhealth import PeerHealth
from spegel_py.routing.base import Peer


class Cluster:
    """Peers, a router over them, and a mirror behind a front server, torn down together."""

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.fronts: list[Front] = []
        self.mirrors: list[Mirror] = []
        self.sessions: list[aiohttp.ClientSession] = []
        self._sockets: list[socket.socket] = []
        self._next_host = 2

    async def peer(
        self, blobs: dict[str, bytes], tags: dict[str, str] | None = None, **knobs: Any
    ) -> FakePeer:
        peer = FakePeer(f"127.0.0.{self._next_host}", dict(blobs), dict(tags or {}), Knobs(**knobs))
        self._next_host += 1
        await peer.start()
        self.peers.append(peer)
        return peer

    def dead_peer(self) -> Peer:
        """An address nothing listens on: connections are refused, as for a node that died."""
        host = f"127.0.0.{self._next_host}"
        self._next_host += 1
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        return Peer(f"dead-{host}", host, port)

    def blackhole_peer(self) -> Peer:
        """An address whose connections are never accepted, as for a node that vanished (its
        SYNs go unanswered): a listener with a full accept queue drops further SYNs."""
        host = f"127.0.0.{self._next_host}"
        self._next_host += 1
        listener = socket.socket()
        listener.bind((host, 0))
        listener.listen(0)
        filler = socket.socket()
        filler.settimeout(5)
        filler.connect(listener.getsockname())  # takes the one queue slot, never accepted
        self._sockets += [listener, filler]
        return Peer(f"blackhole-{host}", host, listener.getsockname()[1])

    async def mirror(
        self,
        providers: Iterable[Peer] | FakeRouter,
        *,
        pool: BufferPool | None = None,
        health: PeerHealth | None = None,
        client: PeerClient | None = None,
        **settings: Any,
    ) -> tuple[Front, Mirror]:
        router = providers if isinstance(providers, FakeRouter) else FakeRouter(providers)
        mirror = Mirror(
            router,
            client=client or PeerClient(),
            pool=pool or BufferPool(count=8, size=64 * 1024),
            health=health,
            settings=MirrorSettings(**settings),
        )
        front = Front(mirror)
        await front.start()
        self.mirrors.append(mirror)
        self.fronts.append(front)
        return front, mirror

    def session(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        for front in self.fronts:
            await front.stop()
        for mirror in self.mirrors:
            await mirror.close()
        for peer in self.peers:
            await peer.stop()
        for sock in self._sockets:
            sock.close()

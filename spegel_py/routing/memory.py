"""An in-process router for tests: several :class:`MemoryRouter` nodes share one :class:`MemoryNetwork`.

It has the Router contract's semantics without a network (a lookup yields other nodes that
advertise the key, never the asking node, up to ``limit``), so components above the router are
tested fast and deterministically. It passes the same conformance suite as the libp2p router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer


class MemoryNetwork:
    """Who advertises what, shared by the routers of one test."""

    def __init__(self) -> None:
        self._members: dict[str, Peer] = {}
        self._providers: dict[str, dict[str, None]] = {}  # key -> peer ids, in advertising order

    def join(self, peer: Peer) -> None:
        if peer.peer_id in self._members:
            raise RoutingError(f"peer id {peer.peer_id} already joined")
        self._members[peer.peer_id] = peer

    def leave(self, peer_id: str) -> None:
        self._members.pop(peer_id, None)
        for key in list(self._providers):
            self.remove(key, peer_id)

    def members(self) -> int:
        return len(self._members)

    def add(self, key: str, peer_id: str) -> None:
        self._providers.setdefault(key, {})[peer_id] = None

    def remove(self, key: str, peer_id: str) -> None:
        holders = self._providers.get(key)
        if holders is not None:
            holders.pop(peer_id, None)
            if not holders:
                del self._providers[key]

    def providers(self, key: str) -> list[Peer]:
        return [self._members[p] for p in self._providers.get(key, ()) if p in self._members]


class MemoryRouter:
    """One node on a :class:`MemoryNetwork`; implements :class:`spegel_py.routing.base.Router`."""

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        peer_id: str,
        host: str = "127.0.0.1",
        port: int = 5000,
        alone: bool = False,
    ) -> None:
        self._network = network
        self._alone = alone
        self.peer = Peer(peer_id=peer_id, host=host, port=port)
        self._closed = False
        network.join(self.peer)

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def ready(self) -> bool:
        return not self._closed and (self._alone or self._network.members() > 1)

    async def advertise(self, keys: Iterable[str]) -> None:
        self._check_open()
        for key in keys:
            self._network.add(key, self.peer.peer_id)

    async def withdraw(self, keys: Iterable[str]) -> None:
        self._check_open()
        for key in keys:
            self._network.remove(key, self.peer.peer_id)

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        if self._closed:
            return
        found = [p for p in self._network.providers(key) if p.peer_id != self.peer.peer_id]
        for peer in found[: max(limit, 0)]:
            yield peer

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network.leave(self.peer.peer_id)

    def _check_open(self) -> None:
        if self._closed:
            raise RoutingError("router is closed")

"""An in-process rendezvous for tests: the nodes of one :class:`ClaimNetwork` claim from each other.

The rendezvous of a key is the member closest to it (XOR of sha256, as on the DHT), each
member keeps its own :class:`~spegel_py.routing.claims.ClaimBook`, and a node may be given a
partial view of the members (``knows``), which is how tests make two nodes disagree on the
rendezvous. A member marked down makes claims routed to it fail, as an unreachable peer does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.claims import CLAIM_LEASE, ClaimBook, Verdict


def distance(key: str, peer_id: str) -> int:
    """XOR distance between a key and a peer id (sha256 of each)."""
    return _kad(key) ^ _kad(peer_id)


def _kad(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


class ClaimNetwork:
    """The members of one test and the claim book each keeps as a rendezvous."""

    def __init__(self, *, lease: float = CLAIM_LEASE, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease = lease
        self._clock = clock
        self.books: dict[str, ClaimBook] = {}
        self.members: dict[str, Peer] = {}
        self.down: set[str] = set()  # peer ids whose rendezvous does not answer
        self.asked: list[tuple[str, str]] = []  # (claimant, rendezvous) per claim, in order

    def join(self, peer: Peer) -> MemoryRendezvous:
        if peer.peer_id in self.members:
            raise RoutingError(f"peer id {peer.peer_id} already joined")
        self.members[peer.peer_id] = peer
        self.books[peer.peer_id] = ClaimBook(lease=self._lease, clock=self._clock)
        return MemoryRendezvous(self, peer)

    def rendezvous_of(self, key: str, among: Collection[str]) -> str:
        return min(among, key=lambda pid: distance(key, pid))


class MemoryRendezvous:
    """One member's :class:`~spegel_py.routing.claims.Rendezvous` on a :class:`ClaimNetwork`."""

    def __init__(self, network: ClaimNetwork, peer: Peer) -> None:
        self._network = network
        self.peer = peer
        self.knows: set[str] | None = None  # the members this node knows (None: all of them)

    async def claim(self, key: str, *, failed: str | None = None) -> Verdict:
        net = self._network
        known = net.members.keys() if self.knows is None else self.knows | {self.peer.peer_id}
        target = net.rendezvous_of(key, known)
        net.asked.append((self.peer.peer_id, target))
        if target in net.down:
            raise RoutingError(f"rendezvous {target} does not answer")
        return net.books[target].decide(key, self.peer, failed=failed)

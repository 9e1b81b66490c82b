"""The routing table: peers that speak ``/spegel/kad/1.0.0``, in XOR order around any key.

Spegel clusters hold tens to a few hundred nodes, so the table keeps every peer it has verified
(a connection and a DHT exchange) rather than Kademlia's k-buckets: the k closest peers to any
key are then exact, and one round of queries reaches the nodes that store its records. Peers
leave the table when their connection closes. Where peers listen is not kept here but in the
address book (:mod:`.addrs`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from spegel_py.routing.libp2p.keys import kad_id


@dataclass(slots=True)
class Entry:
    id: bytes  # raw peer id bytes
    b58: str  # the textual peer id (what Peer.peer_id carries)
    kad: int  # position in the XOR keyspace


class RoutingTable:
    """Verified peers by raw id; a plain data structure, changed in the trio thread only.

    The asyncio thread reads its size and a copy of its entries (single C-level operations).
    """

    def __init__(self, self_id: bytes) -> None:
        self._self = self_id
        self._peers: dict[bytes, Entry] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._peers

    def get(self, peer: bytes) -> Entry | None:
        return self._peers.get(peer)

    def add(self, peer: bytes, b58: str) -> tuple[Entry, bool]:
        """Insert if missing; returns (entry, True when the peer is new)."""
        entry = self._peers.get(peer)
        if entry is not None:
            return entry, False
        entry = Entry(peer, b58, kad_id(peer))
        self._peers[peer] = entry
        return entry, True

    def remove(self, peer: bytes) -> Entry | None:
        return self._peers.pop(peer, None)

    def peers(self) -> list[Entry]:
        return list(self._peers.values())

    def closest(self, target: int, k: int, exclude: bytes = b"") -> list[Entry]:
        """The ``k`` peers closest to ``target`` by XOR distance, nearest first."""
        peers = [e for e in self._peers.values() if e.id != exclude]
        if len(peers) <= k:
            return sorted(peers, key=lambda e: e.kad ^ target)
        return heapq.nsmallest(k, peers, key=lambda e: e.kad ^ target)

"""The routing table: peers that speak ``/spegel/kad/1.0.0``, their addresses, and XOR order.

Spegel clusters hold tens to a few hundred nodes, so the table keeps every peer it has verified
(a connection and a DHT exchange) rather than Kademlia's k-buckets: the k closest peers to any
key are then exact, and one round of queries reaches the nodes that store its records. Peers
leave the table when their connection closes.
"""

from __future__ import annotations

import heapq
import ipaddress
from dataclasses import dataclass, field

from spegel_py.routing.libp2p.keys import kad_id


@dataclass(slots=True)
class Entry:
    id: bytes  # raw peer id bytes
    b58: str  # the textual peer id (what Peer.peer_id carries)
    kad: int  # position in the XOR keyspace
    addrs: tuple[bytes, ...] = field(default=())  # binary multiaddrs to give other peers


class RoutingTable:
    def __init__(self, self_id: bytes) -> None:
        self._self = self_id
        self._peers: dict[bytes, Entry] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._peers

    def get(self, peer: bytes) -> Entry | None:
        return self._peers.get(peer)

    def add(self, peer: bytes, b58: str, addrs: tuple[bytes, ...]) -> tuple[Entry, bool]:
        """Insert or update; returns (entry, True when the peer is new)."""
        entry = self._peers.get(peer)
        if entry is not None:
            if addrs and addrs != entry.addrs:
                entry.addrs = addrs
            return entry, False
        entry = Entry(peer, b58, kad_id(peer), addrs)
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


def addr_ip(addr: bytes) -> str | None:
    """The IP of a binary multiaddr that starts with ip4 or ip6; None for anything else."""
    if len(addr) >= 5 and addr[0] == 0x04:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(addr[1:5])
    elif len(addr) >= 17 and addr[0] == 0x29:
        ip = ipaddress.IPv6Address(addr[1:17])
    else:
        return None
    return None if ip.is_unspecified else str(ip)


def tcp_addr(ip: str, port: int) -> bytes:
    """Binary multiaddr ``/ip4|ip6/<ip>/tcp/<port>``."""
    parsed = ipaddress.ip_address(ip)
    head = b"\x04" if parsed.version == 4 else b"\x29"
    return head + parsed.packed + b"\x06" + port.to_bytes(2, "big")


def addr_port(addr: bytes) -> int | None:
    """The TCP port of a binary ``/ip4|ip6/.../tcp/N`` multiaddr."""
    off = 5 if addr[:1] == b"\x04" else 17 if addr[:1] == b"\x29" else -1
    if off < 0 or len(addr) < off + 3 or addr[off] != 0x06:
        return None
    return int.from_bytes(addr[off + 1 : off + 3], "big")

"""The routing table: Kademlia k-buckets of peers that speak ``/spegel/kad/1.0.0``.

A peer goes into the bucket of the length of the prefix its kad id shares with ours (the
position of the first differing bit of the XOR distance), and a bucket holds at most ``k``
peers: a node knows every peer near it in the keyspace and ``k`` in each half, quarter, ... of
the rest, ``k * log2(N / k)`` peers in all, so memory, connections and maintenance do not grow
with the cluster. In a cluster of at most ``k + 1`` nodes no bucket fills up and every node
knows every other. A peer that arrives at a full bucket waits in that bucket's replacement
list and takes the place of the first member that fails (:meth:`RoutingTable.remove`):
Kademlia keeps long-lived peers, which are the likeliest to stay.

Peers enter when they answer a request or send one (they speak the protocol) and leave when
requests to them fail ``max_failures`` times in a row, not when their connection closes:
connections are closed when idle (:mod:`.conns`) and dialled again on demand. Where peers
listen is not kept here but in the address book (:mod:`.addrs`). Plain data, changed in one
thread (the trio thread, or the simulation's); the asyncio thread reads its size and a copy of
its entries.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from spegel_py.routing.libp2p.keys import kad_id

KEY_BITS = 256  # kad ids are sha256 digests
PREFIX_BITS = 12  # leading kad-id bits of the refresh key table: 4,096 keys, ~40k sha256 once


@functools.cache
def _keys_by_prefix() -> tuple[bytes, ...]:
    """For every ``PREFIX_BITS``-bit prefix, a key (4 bytes) whose kad id starts with it."""
    found: dict[int, bytes] = {}
    i = 0
    while len(found) < 1 << PREFIX_BITS:
        key = i.to_bytes(4, "big")
        found.setdefault(kad_id(key) >> (KEY_BITS - PREFIX_BITS), key)
        i += 1
    return tuple(found[p] for p in range(1 << PREFIX_BITS))


@dataclass(slots=True)
class Entry:
    id: bytes  # raw peer id bytes
    b58: str  # the textual peer id (what Peer.peer_id carries)
    kad: int  # position in the XOR keyspace


class RoutingTable:
    """Verified peers in k-buckets by shared prefix length with this node's kad id."""

    def __init__(self, self_id: bytes, k: int = 20, max_failures: int = 3) -> None:
        self._self = self_id
        self._self_kad = kad_id(self_id)
        self.k = k
        self._max_failures = max_failures
        self._failures: dict[bytes, int] = {}  # member -> requests failed in a row
        self._peers: dict[bytes, Entry] = {}
        self._buckets: dict[int, dict[bytes, Entry]] = {}  # prefix length -> members, oldest first
        self._spare: dict[int, dict[bytes, Entry]] = {}  # prefix length -> replacements, newest last

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._peers

    def get(self, peer: bytes) -> Entry | None:
        return self._peers.get(peer)

    def bucket_of(self, kad: int) -> int:
        """The bucket of a kad id: how many leading bits it shares with ours."""
        return KEY_BITS - (kad ^ self._self_kad).bit_length()

    def add(self, peer: bytes, b58: str) -> tuple[Entry, bool]:
        """Insert if there is room; returns (entry, True when the peer is now a member and was
        not). A peer refused by a full bucket is kept as a replacement (entry returned, False)."""
        entry = self._peers.get(peer)
        if entry is not None or peer == self._self:
            return entry or Entry(peer, b58, self._self_kad), False
        entry = Entry(peer, b58, kad_id(peer))
        b = self.bucket_of(entry.kad)
        bucket = self._buckets.setdefault(b, {})
        if len(bucket) < self.k:
            bucket[peer] = entry
            self._peers[peer] = entry
            self._spare.get(b, {}).pop(peer, None)
            return entry, True
        spare = self._spare.setdefault(b, {})
        spare.pop(peer, None)
        spare[peer] = entry
        if len(spare) > self.k:
            del spare[next(iter(spare))]
        return entry, False

    def remove(self, peer: bytes) -> tuple[Entry | None, Entry | None]:
        """Drop a peer (a request to it failed); returns (the removed entry, the replacement
        promoted into its bucket, which the caller treats as a new member)."""
        entry = self._peers.pop(peer, None)
        if entry is None:
            for spare in self._spare.values():
                spare.pop(peer, None)
            return None, None
        b = self.bucket_of(entry.kad)
        del self._buckets[b][peer]
        spares = self._spare.get(b)
        if spares:
            pid = next(reversed(spares))
            promoted = spares.pop(pid)
            self._buckets[b][pid] = promoted
            self._peers[pid] = promoted
            return entry, promoted
        return entry, None

    def complete(self) -> bool:
        """True while no bucket has turned a peer away: at most ``k`` peers and no full bucket,
        so (once the node has looked itself up) every peer is among the k closest of any key."""
        return len(self._peers) <= self.k and all(len(b) < self.k for b in self._buckets.values())

    def answered(self, peer: bytes) -> None:
        """A request to ``peer`` succeeded: its failure count starts again."""
        self._failures.pop(peer, None)

    def failed(self, peer: bytes) -> tuple[Entry | None, Entry | None]:
        """A request to ``peer`` failed; after ``max_failures`` in a row it is removed (see
        :meth:`remove`): one failed dial is often a collision or a busy node, not a dead one."""
        count = self._failures.get(peer, 0) + 1
        if count < self._max_failures and peer in self._peers:
            self._failures[peer] = count
            return None, None
        self._failures.pop(peer, None)
        return self.remove(peer)

    def peers(self) -> list[Entry]:
        return list(self._peers.values())

    def closest(self, target: int, k: int, exclude: bytes = b"") -> list[Entry]:
        """The ``k`` peers closest to ``target`` by XOR distance, nearest first.

        Walks the buckets in distance order instead of sorting the whole table: with ``c`` the
        bucket of ``target``, bucket ``c`` holds the nearest peers, all deeper buckets the next
        (they share ``c`` bits with it), then buckets ``c - 1``, ``c - 2``, ... each farther."""
        c = self.bucket_of(target)
        buckets = self._buckets
        tiers: list[list[Entry]] = [list(buckets.get(c, {}).values())]
        tiers.append([e for b, members in buckets.items() if b > c for e in members.values()])
        tiers.extend(list(buckets[b].values()) for b in range(c - 1, -1, -1) if b in buckets)
        out: list[Entry] = []
        for tier in tiers:
            if exclude:
                tier = [e for e in tier if e.id != exclude]
            tier.sort(key=lambda e: e.kad ^ target)
            out.extend(tier[: k - len(out)])
            if len(out) >= k:
                break
        return out

    def refresh_targets(self) -> list[bytes]:
        """A FIND_NODE key for each bucket up to one past the deepest non-empty one, at most
        :data:`PREFIX_BITS` buckets: a key whose kad id falls in that bucket, random within it.
        A lookup for each fills the buckets with what peers know of that part of the keyspace,
        as go-libp2p-kad-dht's refresh does; the deeper buckets, nearest to us, are filled by
        the lookup of our own id that the refresh also makes.

        Kad ids are sha256 of the key, so a key for a bucket cannot be computed; it is taken from
        a table of keys by the leading bits of their kad id (:func:`_keys_by_prefix`), built once,
        instead of drawing ~2^(b+1) random keys for bucket b at every refresh."""
        deepest = min(max(self._buckets, default=-1) + 1, PREFIX_BITS - 1)
        table = _keys_by_prefix()
        mine = self._self_kad >> (KEY_BITS - PREFIX_BITS)
        out = []
        for b in range(deepest + 1):
            flip = 1 << (PREFIX_BITS - 1 - b)  # the first bit where bucket b differs from us
            low = random.getrandbits(PREFIX_BITS - 1 - b) if b < PREFIX_BITS - 1 else 0
            prefix = ((mine ^ flip) & ~(flip - 1)) | low
            out.append(table[prefix])
        return out

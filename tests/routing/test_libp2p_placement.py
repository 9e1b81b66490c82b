"""Kademlia placement with more nodes than k: records go to the k closest peers, lookups find them.

Five in-process routers with k = 2 (buckets of two, so no node knows every other): each key's
records must land exactly at the two peers whose sha256(peer id) is XOR-closest to
sha256(multihash) (what go-libp2p-kad-dht computes, so a Go Spegel node asks the same peers),
found by an iterative lookup, and a node holding no record finds the provider in at most two
rounds (log2(5 / 2) rounded up).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libp2p.peer.id import ID
from support.poll import eventually

from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.query import LookupStats
from spegel_py.routing.libp2p.router import Libp2pRouter

K = 2
KEYS = [f"sha256:{i:064x}" for i in range(40)]


class Static:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


@pytest.fixture
async def five(tmp_path: Path) -> AsyncIterator[list[Libp2pRouter]]:
    routers: list[Libp2pRouter] = []
    try:
        for i in range(5):
            boot = Static(routers[0].listen_multiaddrs()) if routers else None
            r = Libp2pRouter(
                listen_addrs=[f"/ip4/127.0.0.{70 + i}/tcp/0"],
                data_dir=tmp_path / str(i),
                registry_port=5000,
                bootstrap=boot,
                k=K,
                cache_ttl=0.0,
                bootstrap_interval=0.2,
                refresh_interval=0.5,
            )
            await r.start()
            routers.append(r)
        await eventually(
            lambda: all(r.peer_count() >= K for r in routers), within=30, interval=0.05, what="full buckets"
        )
        yield routers
    finally:
        for r in routers:
            await r.close()


def closest(routers: list[Libp2pRouter], key: str, exclude: Libp2pRouter) -> set[str]:
    """The K peers closest to ``key``, computed independently with hashlib."""
    target = int.from_bytes(hashlib.sha256(multihash(key)).digest(), "big")

    def distance(r: Libp2pRouter) -> int:
        pid = ID.from_base58(r.peer_id).to_bytes()
        return int.from_bytes(hashlib.sha256(pid).digest(), "big") ^ target

    return {r.peer_id for r in sorted((r for r in routers if r is not exclude), key=distance)[:K]}


def holders(routers: list[Libp2pRouter], key: str) -> set[str]:
    mh = multihash(key)
    return {r.peer_id for r in routers if r._node is not None and r._node.store.get(mh)}


async def test_records_land_at_the_k_closest_and_are_found_by_lookups(five: list[Libp2pRouter]) -> None:
    provider = five[0]
    await provider.advertise(KEYS)
    await eventually(
        lambda: all(holders(five, k) >= closest(five, k, provider) for k in KEYS),
        within=60,  # a loaded machine: placement lookups wait on dials and handshakes
        interval=0.05,
        what="records at the K closest",
    )
    for key in KEYS:
        # at least the K closest: a provider whose young table held <= K peers sends every key
        # to all of them (the small-cluster path), so a farther peer may hold a copy until expiry
        assert holders(five, key) >= closest(five, key, provider), key
        for seeker in five[1:]:
            stats = await eventually(
                lambda seeker=seeker, key=key: found_once(seeker, key, provider),
                within=10,
                what=f"{key} found by {seeker.peer_id}",
            )
            if seeker.peer_id in holders(five, key):
                assert stats.hops == 0
            else:
                assert 1 <= stats.hops <= 2


async def found_once(seeker: Libp2pRouter, key: str, provider: Libp2pRouter) -> LookupStats | None:
    """The stats of one lookup that found exactly ``provider``, or None to ask again.

    Why again: py-libp2p now and then fails to open a stream on an established connection
    (a multiselect handshake write fails), and one lookup then ends empty; the lookup's own
    retries belong to issue 10. Each retry is a fresh lookup (``cache_ttl=0``), and the hop
    count asserted is that of the lookup that succeeded.
    """
    found, stats = await seeker.lookup_stats(key, limit=1)
    return stats if [p.peer_id for p in found] == [provider.peer_id] else None

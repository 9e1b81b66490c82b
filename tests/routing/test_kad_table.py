"""k-buckets (table.py) and the choice of connections to close (conns.py), as plain data."""

from __future__ import annotations

import random

from spegel_py.routing.libp2p.conns import ConnectionKeeper, ConnLimits
from spegel_py.routing.libp2p.keys import kad_id
from spegel_py.routing.libp2p.table import RoutingTable


def test_buckets_hold_k_peers_and_promote_a_replacement() -> None:
    rng = random.Random(1)
    table = RoutingTable(b"self", k=4)
    peers = [rng.randbytes(8) for _ in range(200)]
    for p in peers:
        table.add(p, p.hex())
    by_bucket: dict[int, list[bytes]] = {}
    for p in peers:
        by_bucket.setdefault(table.bucket_of(kad_id(p)), []).append(p)
    for b, members in by_bucket.items():
        assert sum(1 for e in table.peers() if table.bucket_of(e.kad) == b) == min(4, len(members))
    assert len(table) < 40  # ~k * log2(N / k), not N
    full = next(b for b, m in by_bucket.items() if len(m) > 4)
    first = next(e for e in table.peers() if table.bucket_of(e.kad) == full)
    removed, promoted = table.remove(first.id)
    assert removed is first and promoted is not None
    assert table.bucket_of(promoted.kad) == full and promoted.id in table
    assert promoted.id == by_bucket[full][-1]  # the most recently seen replacement


def test_refresh_targets_fall_in_each_bucket() -> None:
    table = RoutingTable(b"self", k=2)
    for i in range(64):
        table.add(f"p{i}".encode(), str(i))
    targets = table.refresh_targets()
    assert [table.bucket_of(kad_id(t)) for t in targets] == list(range(len(targets)))


def test_keeper_closes_idle_strangers_then_the_least_used_above_the_limit() -> None:
    now = [0.0]
    keeper = ConnectionKeeper(ConnLimits(high=4, low=2, idle=60, grace=5), clock=lambda: now[0])
    members = {b"m1", b"m2", b"m3"}
    for p in (b"m1", b"m2", b"m3", b"s1"):
        keeper.touch(p)
    now[0] = 30.0
    assert keeper.to_close([b"m1", b"m2", b"m3", b"s1"], members.__contains__) == []
    now[0] = 61.0
    assert keeper.to_close([b"m1", b"m2", b"m3", b"s1"], members.__contains__) == [b"s1"]
    for p in (b"s2", b"s3"):
        keeper.touch(p)
    now[0] = 62.0
    keeper.touch(b"m3")  # just used: spared
    # 5 connected, above high = 4: down to low = 2, strangers first, then the least recently used
    now[0] = 70.0
    keeper.touch(b"m3")
    closed = keeper.to_close([b"m1", b"m2", b"m3", b"s2", b"s3"], members.__contains__)
    assert set(closed[:2]) == {b"s2", b"s3"} and len(closed) == 3 and b"m3" not in closed

"""The production table, placement and lookup code on the in-memory network (simnet.py).

Small sizes of what bench/dht_sim.py measures at 1,000-5,000 nodes: every lookup succeeds with
all nodes alive, nearly all with 30 % killed without warning, in few rounds; in a cluster of
k + 1 nodes every node holds every record (the fast path of small clusters); records land on
the k closest nodes. Virtual time (MockClock): no wall-clock bar, the modelled latency is free.
"""

from __future__ import annotations

import random

import trio
import trio.testing

from spegel_py.routing.libp2p.keys import kad_id, multihash
from spegel_py.routing.libp2p.simnet import SimNetwork, SimNode


def key_of(i: int, j: int) -> bytes:
    return multihash(f"sha256:{i:032x}{j:032x}")


async def cluster(nursery: trio.Nursery, n: int, keys: int, k: int) -> list[SimNode]:
    net = SimNetwork()
    nodes = [SimNode(net, i, k=k) for i in range(n)]
    for node in nodes:
        node.start(nursery)
    for node in nodes[1:]:
        await node.join(nodes[0])
    for node in nodes:
        await node.refresh()
    for i, node in enumerate(nodes):
        await node.publisher.provide([key_of(i, j) for j in range(keys)])
    await trio.sleep(1.0)  # the senders deliver
    return nodes


def run(fn: object, *args: object) -> object:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


async def lookups(nodes: list[SimNode], keys: int, count: int, rng: random.Random) -> tuple[int, list[int]]:
    alive = [i for i, x in enumerate(nodes) if x.alive]
    ok, rounds = 0, []
    for _ in range(count):
        owner, asker = rng.sample(alive, 2)
        stats = await nodes[asker].lookup(key_of(owner, rng.randrange(keys)))
        if stats.found:
            ok += 1
            rounds.append(stats.hops)
    return ok, rounds


def test_lookups_succeed_with_all_alive_and_with_30_percent_killed() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nodes = await cluster(nursery, 120, 5, k=8)
            # records sit at the k nodes closest to each key, as Go Spegel would look for them
            ids = [x.id for x in nodes]
            for i in (0, 57, 119):
                target = kad_id(key_of(i, 0))
                want = {p for p in sorted(ids, key=lambda p: kad_id(p) ^ target) if p != ids[i]}
                best = sorted(want, key=lambda p: kad_id(p) ^ target)[:8]
                holders = {x.id for x in nodes if x.store.get(key_of(i, 0))}
                assert holders == set(best)
            rng = random.Random(3)
            ok, rounds = await lookups(nodes, 5, 300, rng)
            assert ok == 300
            assert max(rounds) <= 4
            for x in rng.sample(nodes, 36):
                x.kill()
            ok, rounds = await lookups(nodes, 5, 300, rng)
            assert ok >= 294  # 98 %: a key whose k holders all died is lost until its reprovide
            nursery.cancel_scope.cancel()

    run(main)


def test_every_node_holds_every_record_in_a_cluster_of_k_plus_one() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nodes = await cluster(nursery, 9, 20, k=8)
            for i, owner in enumerate(nodes):
                for j in range(20):
                    holders = {x.id for x in nodes if x.store.get(key_of(i, j))}
                    assert holders == {x.id for x in nodes} - {owner.id}
            nursery.cancel_scope.cancel()

    run(main)

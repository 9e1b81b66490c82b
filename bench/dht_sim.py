"""Simulated DHT at 1,000-5,000 nodes: the production table, placement and lookup code on an
in-memory network (spegel_py/routing/libp2p/simnet.py) with a modelled 0.5 ms round trip.

    .venv/bin/python -m bench.dht_sim --nodes 1000 5000 --keys 50 --lookups 2000 --out sim.json

Per size: nodes join one after another through node 0 (a lookup of their own id, then one per
bucket), then every node refreshes its buckets once (what the periodic refresh does); every node
advertises ``--keys`` keys (placement: an iterative FIND_NODE lookup per key, records to the k
closest that answered); then ``--lookups`` lookups of random keys from random other nodes (limit
1, as the mirror asks), with all nodes alive, with 10 % and with 30 % of the nodes killed without
warning (no repair in between: no reprovide, no refresh). Reports lookup success, rounds (0 =
the asker held a record) p50/p99, records per node, and messages per advertised key (FIND_NODE
requests of the placement lookups + ADD_PROVIDER messages). All figures are simulated: the
latency is modelled (trio's MockClock), the CPU cost is not measured.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import trio
import trio.testing

from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.simnet import SimNetwork, SimNode


def pct(values: list[int], p: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else -1


def key_of(i: int, j: int) -> bytes:
    return multihash(f"sha256:{i:032x}{j:032x}")


async def _gather(fns: list[Any], limit: int) -> None:
    sem = trio.Semaphore(limit)

    async def one(fn: Any) -> None:
        async with sem:
            await fn()

    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(one, fn)


async def build(
    nursery: trio.Nursery, n: int, keys: int, *, k: int = 20, seed: int = 1, refresh: bool = True
) -> tuple[SimNetwork, list[SimNode], dict[str, Any]]:
    """A joined, refreshed cluster of ``n`` nodes, each advertising ``keys`` keys."""
    rng = random.Random(seed)
    random.seed(seed)
    net = SimNetwork()
    nodes = [SimNode(net, i, k=k) for i in range(n)]
    info: dict[str, Any] = {"nodes": n, "keys_per_node": keys}
    for node in nodes:
        node.start(nursery)
    t0 = time.perf_counter()
    for node in nodes[1:]:
        await node.join(nodes[0])
    await _gather([node.refresh for node in rng.sample(nodes, n)], 64)
    info["join_wall_s"] = round(time.perf_counter() - t0, 1)
    info["table_size"] = {
        "p50": pct([len(x.table) for x in nodes], 0.5),
        "max": max(len(x.table) for x in nodes),
    }
    before_req, before_rec = net.requests, net.records_sent
    t0 = time.perf_counter()
    await _gather(
        [
            lambda node=node, i=node_i: node.publisher.provide([key_of(i, j) for j in range(keys)])
            for node_i, node in enumerate(nodes)
        ],
        256,
    )
    await trio.sleep(1.0)  # the senders deliver
    info["provide_wall_s"] = round(time.perf_counter() - t0, 1)
    total = n * keys
    info["messages_per_key"] = {
        "find_node": round((net.requests - before_req) / total, 1),
        "add_provider": round((net.records_sent - before_rec) / total, 1),
    }
    recs = [x.store.records for x in nodes]
    info["records_per_node"] = {
        "p50": pct(recs, 0.5),
        "min": min(recs),
        "max": max(recs),
        "mean": sum(recs) / n,
    }
    return net, nodes, info


async def lookups(nodes: list[SimNode], keys: int, count: int, rng: random.Random) -> dict[str, Any]:
    alive = [i for i, x in enumerate(nodes) if x.alive]
    rounds: list[int] = []
    ok = 0
    for _ in range(count):
        owner, asker = rng.sample(alive, 2)
        with trio.move_on_after(5.0):
            stats = await nodes[asker].lookup(key_of(owner, rng.randrange(keys)))
            if stats.found:
                ok += 1
                rounds.append(stats.hops)
    return {
        "success": round(ok / count, 4),
        "rounds_p50": pct(rounds, 0.5),
        "rounds_p99": pct(rounds, 0.99),
        "rounds_max": max(rounds, default=-1),
        "local": round(sum(1 for r in rounds if r == 0) / max(1, len(rounds)), 3),
    }


async def run_size(n: int, keys: int, count: int, refresh: bool) -> dict[str, Any]:
    rng = random.Random(2)
    async with trio.open_nursery() as nursery:
        _, nodes, info = await build(nursery, n, keys, refresh=refresh)
        info["refresh_round"] = refresh
        info["alive_100"] = await lookups(nodes, keys, count, rng)
        for frac, name in ((0.10, "killed_10"), (0.30, "killed_30")):
            dead = sum(1 for x in nodes if not x.alive)
            for x in rng.sample([x for x in nodes if x.alive], int(n * frac) - dead):
                x.kill()
            info[name] = await lookups(nodes, keys, count, rng)
        nursery.cancel_scope.cancel()
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--keys", type=int, default=50)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--no-refresh", action="store_true", help="skip the refresh round after the joins")
    ap.add_argument("--out")
    args = ap.parse_args()
    results = []
    for n in args.nodes:
        t0 = time.perf_counter()
        res = trio.run(
            run_size,
            n,
            args.keys,
            args.lookups,
            not args.no_refresh,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(res), flush=True)
        results.append(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

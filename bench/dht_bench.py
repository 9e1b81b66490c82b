"""DHT routing benchmark (issue 3): spegel-py's Libp2pRouter and py-libp2p's stock KadDHT, same run.

    .venv/bin/python -m bench.dht_bench run [--keys 5000] [--stock-keys 100] [--out FILE]

Every node is a real libp2p host on its own loopback address (127.0.0.x), nodes are separate
processes (several hosts per process only in the 25/50-node scaling runs), and all processes
share this machine's CPUs. The orchestrator drives node processes over JSON lines
(``python -m bench.dht_bench node ...``); CPU is read per process (``time.process_time`` in the
node, including its libp2p thread), RSS from ``/proc/self/status``.

Phases: (A) 10 nodes x N keys each, advertised at start: time from the last node's start until
every key of every other node is found from every node; RSS per node; (B) lookup latency from
each node, idle (one node at a time) and with 16 concurrent lookups per node on all nodes at
once (cache disabled); (C) CPU per key per peer: one node advertises extra keys, CPU of the
sender and of the receivers until stored; (D) 10/25/50 nodes: lookup latency and hops.

    .venv/bin/python -m bench.dht_bench cold [--sizes 3 10 25] [--n 300] [--out FILE]

Cold lookups (``--mirror-resolve-timeout`` vs the network): time from ``Router.lookup`` to its
first provider, as the mirror sees it (asyncio side, thread hand-offs included), for keys whose
provider records are NOT in the asking node's own store, so the answer needs a network round
trip. In clusters of <= k (20) nodes every node stores every record, so the asker's copy of the
key is dropped right before each lookup ("forced"); with more nodes than k, keys the asker
does not hold anyway are looked up too ("natural").
The stock KadDHT runs the same phases with fewer keys (its receivers rate-limit ADD_PROVIDER
to 10 per 10 s per peer and drop the rest silently; ``provide`` costs ~50 ms of CPU per key).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BASE_IP = 100  # nodes use 127.0.0.100 + i
CHECK_DEADLINE = 300.0  # seconds phase A may take before it reports "not all found"
STOCK_CHECK_DEADLINE = 150.0  # the stock DHT's failed lookups take their full 5 s timeout each


def key(owner: int, j: int) -> str:
    return "sha256:" + hashlib.sha256(f"bench-{owner}-{j}".encode()).hexdigest()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


# ------------------------------------------------------------------ node: ours (asyncio)


class OursNode:
    """Libp2pRouter instances in this process; ``lookup`` returns (found, hops or None)."""

    def __init__(self, ips: list[str], bootstrap: list[str], tmp: str) -> None:
        from spegel_py.routing.libp2p.router import Libp2pRouter

        class Static:
            async def peers(self) -> list[str]:
                return bootstrap

        self.routers = [
            Libp2pRouter(
                listen_addrs=[f"/ip4/{ip}/tcp/0"],
                data_dir=os.path.join(tmp, ip),
                registry_port=5000,
                bootstrap=Static() if bootstrap else None,
                cache_ttl=0.0,  # every lookup is a real lookup
                lookup_timeout=5.0,
                bootstrap_interval=2.0,  # 12 s once it has peers
                refresh_interval=5.0,
            )
            for ip in ips
        ]

    async def start(self) -> list[str]:
        for r in self.routers:
            await r.start()
        return [r.listen_multiaddrs()[0] for r in self.routers]

    def records(self) -> int:
        return sum(len(r._node.store) for r in self.routers if r._node is not None)

    def peers(self) -> list[int]:
        return [r.peer_count() for r in self.routers]

    async def advertise(self, idx: int, keys: list[str]) -> None:
        await self.routers[idx].advertise(keys)

    async def lookup(self, idx: int, k: str, hops: bool) -> tuple[int, int | None]:
        r = self.routers[idx]
        if hops:
            found, stats = await r.lookup_stats(k, limit=1)
            return len(found), stats.hops
        n = 0
        async for _ in r.lookup(k, limit=1):
            n += 1
        return n, None

    def holds(self, idx: int, k: str) -> bool:
        from spegel_py.routing.libp2p.keys import multihash

        node = self.routers[idx]._node
        return node is not None and bool(node.store.get(multihash(k)))

    async def drop_local(self, idx: int, k: str) -> bool:
        """Forget the asker's own records of ``k`` (in its trio thread, the store's only user)."""
        from spegel_py.routing.libp2p.keys import multihash

        r = self.routers[idx]
        node = r._node
        assert node is not None
        store = node.store

        async def run() -> bool:
            return store._records.pop(multihash(k), None) is not None

        return bool(await r._thread.call(run))

    async def first_provider_ms(self, idx: int, k: str) -> tuple[float | None, float]:
        """Milliseconds from ``lookup`` to its first provider (None: none) and to its end."""
        t = time.perf_counter()
        first = None
        async for _ in self.routers[idx].lookup(k, limit=1):  # limit 1: ends after the first
            first = (time.perf_counter() - t) * 1000
        return first, (time.perf_counter() - t) * 1000

    async def close(self) -> None:
        for r in self.routers:
            await r.close()


# ------------------------------------------------------------------ node: stock KadDHT (trio)


class StockNode:
    """py-libp2p's KadDHT (same host stack as ours); runs in a trio thread like ours, for parity."""

    def __init__(self, ips: list[str], bootstrap: list[str], tmp: str) -> None:
        from spegel_py.routing.libp2p.bridge import TrioThread

        self.ips = ips
        self.bootstrap = bootstrap
        self.thread = TrioThread(name="stock")
        self.dhts: list[Any] = []
        self._stop: Any = None
        self._main: Any = None

    async def start(self) -> list[str]:
        import multiaddr
        import trio
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo
        from libp2p.tools.anyio_service import background_trio_service

        from spegel_py.routing.libp2p.host import TrackedTCP, build_host

        self.thread.start()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[list[str]] = loop.create_future()

        async def run() -> None:
            from contextlib import AsyncExitStack

            self._stop = trio.Event()
            async with AsyncExitStack() as stack:
                addrs = []
                for ip in self.ips:
                    host = build_host(os.urandom(32), TrackedTCP())
                    await stack.enter_async_context(host.run([multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]))
                    dht = KadDHT(host, DHTMode.SERVER)
                    await stack.enter_async_context(background_trio_service(dht))
                    self.dhts.append(dht)
                    addrs.append(f"{host.get_addrs()[0]}")
                for dht in self.dhts:
                    for b in self.bootstrap:
                        ma = multiaddr.Multiaddr(b)
                        pid = ID.from_base58(ma.value_for_protocol("p2p"))
                        if pid == dht.host.get_id():
                            continue
                        await dht.host.connect(
                            PeerInfo(pid, [ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{pid}"))])
                        )
                        await dht.add_peer(pid)
                    await dht.refresh_routing_table()
                loop.call_soon_threadsafe(started.set_result, addrs)
                await self._stop.wait()

        self._main = self.thread.submit(run)
        return await started

    def records(self) -> int:
        return sum(len(d.provider_store.providers) for d in self.dhts)

    def peers(self) -> list[int]:
        return [d.get_routing_table_size() for d in self.dhts]

    async def advertise(self, idx: int, keys: list[str]) -> None:
        from spegel_py.routing.libp2p.keys import multihash

        dht = self.dhts[idx]

        async def run() -> None:
            for k in keys:
                await dht.provide(multihash(k).hex())

        await self.thread.call(run)

    async def lookup(self, idx: int, k: str, hops: bool) -> tuple[int, int | None]:
        import trio

        from spegel_py.routing.libp2p.keys import multihash

        dht = self.dhts[idx]
        me = dht.host.get_id()

        async def run() -> int:
            with trio.move_on_after(5.0):
                found = await dht.find_providers(multihash(k).hex(), 1)
                return len([p for p in found if p.peer_id != me])
            return 0

        return await self.thread.call(run), None

    async def close(self) -> None:
        import trio

        if self._stop is not None:
            await self.thread.call(trio.lowlevel.checkpoint)  # the trio loop is responsive
            self.thread.portal.start_task_soon(_set_event, self._stop)
        if self._main is not None:
            await asyncio.wait([self._main], timeout=20)
        self.thread.stop()


async def _set_event(ev: Any) -> None:
    ev.set()


# ------------------------------------------------------------------ node process


async def node_main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="dhtbench-")
    ips = args.ips.split(",")
    node: Any = (OursNode if args.impl == "ours" else StockNode)(ips, args.bootstrap, tmp)
    addrs = await node.start()
    gc.freeze()  # start-up objects never need collecting; cuts full-GC pauses
    print(json.dumps({"addrs": addrs}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}

    async def usage(cmd: dict[str, Any]) -> dict[str, Any]:
        return {
            "cpu": time.process_time(),
            "rss_kib": rss_kib(),
            "records": node.records(),
            "peers": node.peers(),
        }

    async def advertise(cmd: dict[str, Any]) -> dict[str, Any]:
        c0, t0 = time.process_time(), time.time()
        await node.advertise(
            cmd["idx"], [key(cmd["owner"], j) for j in range(cmd["start"], cmd["start"] + cmd["count"])]
        )
        return {"cpu": time.process_time() - c0, "wall": time.time() - t0, "done_at": time.time()}

    async def check(cmd: dict[str, Any]) -> dict[str, Any]:
        """Look up every key of ``owners`` from every local host until all are found."""
        deadline = time.time() + cmd["deadline"]
        missing = {
            (i, key(o, j)) for i in range(len(ips)) for o in cmd["owners"][i] for j in range(cmd["count"])
        }
        passes = 0
        while missing and time.time() < deadline:
            passes += 1
            for i, k in list(missing):
                if time.time() >= deadline:
                    break
                n, _ = await node.lookup(i, k, False)
                if n:
                    missing.discard((i, k))
            if missing:
                await asyncio.sleep(0.2)
        return {
            "all_found_at": time.time() if not missing else None,
            "missing": len(missing),
            "passes": passes,
        }

    async def lat(cmd: dict[str, Any]) -> dict[str, Any]:
        rnd = random.Random(cmd.get("seed", 1))
        lat_ms: list[float] = []
        hops: list[int] = []
        found = 0
        jobs = []
        for _ in range(cmd["n"]):
            i = rnd.randrange(len(ips))
            o = rnd.choice(cmd["owners"][i])
            jobs.append((i, key(o, rnd.randrange(cmd["count"]))))
        queue = list(jobs)

        async def worker() -> None:
            nonlocal found
            while queue:
                i, k = queue.pop()
                t = time.perf_counter()
                n, h = await node.lookup(i, k, cmd.get("hops", False))
                lat_ms.append((time.perf_counter() - t) * 1000)
                found += n > 0
                if h is not None:
                    hops.append(h)

        c0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(cmd.get("concurrency", 1))))
        return {
            "lat_ms": lat_ms,
            "found": found,
            "n": len(jobs),
            "hops": hops,
            "cpu": time.process_time() - c0,
        }

    async def cold(cmd: dict[str, Any]) -> dict[str, Any]:
        """Time to first provider of other nodes' keys the asker does not hold (see module doc).

        ``forced``: the asker's own records of the key are dropped first; otherwise only keys
        the asker does not hold are asked (and how many it did hold is counted). ``miss``: keys
        nobody advertised; the time is until the lookup gives up (what a miss costs).
        """
        rnd = random.Random(cmd.get("seed", 1))
        lat_ms: list[float] = []
        missed = held = dropped = 0
        while len(lat_ms) + missed < cmd["n"] and held < 50 * cmd["n"]:
            i = rnd.randrange(len(ips))
            k = key(rnd.choice(cmd["owners"][i]), rnd.randrange(cmd["count"]))
            if cmd.get("miss"):
                k = key(-1, rnd.randrange(1 << 40))
            elif cmd["forced"]:
                dropped += await node.drop_local(i, k)
            elif node.holds(i, k):
                held += 1
                continue
            first, end = await node.first_provider_ms(i, k)
            if cmd.get("miss"):
                lat_ms.append(end)
                missed += first is not None  # found: cannot happen for an unadvertised key
            elif first is None:
                missed += 1
            else:
                lat_ms.append(first)
        return {"lat_ms": lat_ms, "missed": missed, "held": held, "dropped": dropped}

    ops.update(usage=usage, advertise=advertise, check=check, lat=lat, cold=cold)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                break
            print(json.dumps(await ops[cmd["op"]](cmd)), flush=True)
    finally:
        await node.close()


# ------------------------------------------------------------------ orchestrator


class Proc:
    def __init__(
        self, p: asyncio.subprocess.Process, hello: dict[str, Any], ips: list[str], started: float
    ) -> None:
        self.p, self.addrs, self.ips, self.started = p, hello["addrs"], ips, started
        self.ready = started  # set when the node reported it listens

    async def ask(self, wait: float = 900, **cmd: Any) -> dict[str, Any]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.p.stdin.drain()
        line = await asyncio.wait_for(self.p.stdout.readline(), wait)
        if not line:
            raise RuntimeError("node process exited")
        out: dict[str, Any] = json.loads(line)
        return out

    async def stop(self) -> None:
        if self.p.returncode is None:
            try:
                await self.ask(op="exit", wait=1)
            except (RuntimeError, TimeoutError, json.JSONDecodeError, BrokenPipeError, ConnectionResetError):
                pass
            try:
                await asyncio.wait_for(self.p.wait(), 30)
            except TimeoutError:
                self.p.kill()
                await self.p.wait()


async def spawn(impl: str, ips: list[str], bootstrap: list[str]) -> Proc:
    started = time.time()
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.dht_bench",
        "node",
        "--impl",
        impl,
        "--ips",
        ",".join(ips),
        "--bootstrap",
        *bootstrap,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,
    )
    assert p.stdout
    line = await asyncio.wait_for(p.stdout.readline(), 120)
    if not line:
        raise RuntimeError(f"{impl} node on {ips} failed to start")
    proc = Proc(p, json.loads(line), ips, started)
    proc.ready = time.time()
    return proc


async def cluster(impl: str, nodes: int, per_proc: int) -> list[Proc]:
    ips = [f"127.0.0.{BASE_IP + i}" for i in range(nodes)]
    first = await spawn(impl, ips[:1], [])  # alone in its process: everyone bootstraps from it
    rest = await asyncio.gather(
        *(spawn(impl, ips[i : i + per_proc], first.addrs[:1]) for i in range(1, nodes, per_proc))
    )
    return [first, *rest]


async def settle(procs: list[Proc], nodes: int, impl: str) -> float:
    """Wait until every host knows every other (ours) or has a routing table (stock)."""
    t0 = time.time()
    want = nodes - 1 if impl == "ours" else 1
    while time.time() - t0 < 60:
        us = await asyncio.gather(*(p.ask(op="usage") for p in procs))
        if all(min(u["peers"]) >= want for u in us):
            break
        await asyncio.sleep(0.2)
    return time.time() - t0


def owners_for(procs: list[Proc], nodes: int) -> list[list[list[int]]]:
    """For each process, for each of its hosts: the node indexes of all *other* nodes."""
    out, n = [], 0
    for p in procs:
        out.append([[o for o in range(nodes) if o != n + i] for i in range(len(p.ips))])
        n += len(p.ips)
    return out


async def phase_a(impl: str, keys: int) -> dict[str, Any]:
    """10 nodes, one per process, each advertising ``keys`` keys as soon as it starts."""
    nodes = 10
    procs = await cluster(impl, nodes, 1)
    last_start = max(p.started for p in procs)
    settled = await settle(procs, nodes, impl)
    adv_at = time.time()
    adv = await asyncio.gather(
        *(p.ask(op="advertise", idx=0, owner=i, start=0, count=keys) for i, p in enumerate(procs))
    )
    owners = owners_for(procs, nodes)
    stored_at = None
    if impl == "ours":  # every record has arrived (cheap to poll); the lookups below confirm it
        while time.time() - last_start < 120:
            us = await asyncio.gather(*(p.ask(op="usage") for p in procs))
            if all(u["records"] >= (nodes - 1) * keys for u in us):
                stored_at = time.time()
                break
            await asyncio.sleep(0.05)
    check_deadline = CHECK_DEADLINE if impl == "ours" else STOCK_CHECK_DEADLINE
    checks = await asyncio.gather(
        *(
            p.ask(op="check", owners=owners[i], count=keys, deadline=check_deadline)
            for i, p in enumerate(procs)
        )
    )
    usage = await asyncio.gather(*(p.ask(op="usage") for p in procs))
    done = [c["all_found_at"] for c in checks]
    res: dict[str, Any] = {
        "nodes": nodes,
        "keys_per_node": keys,
        "settle_s": settled,
        "last_ready_after_start_s": max(p.ready for p in procs) - last_start,
        "stored_s": (stored_at - last_start) if stored_at else None,
        "stored_after_advertise_s": (stored_at - adv_at) if stored_at else None,
        "findable_s": (max(done) - last_start) if all(done) else None,
        "missing": sum(c["missing"] for c in checks),
        "advertise_wall_s": max(a["wall"] for a in adv),
        "advertise_cpu_s": statistics.mean(a["cpu"] for a in adv),
        "rss_mib": [u["rss_kib"] / 1024 for u in usage],
        "records": [u["records"] for u in usage],
    }
    # (B) latency: idle (one process at a time) then 16 concurrent per node, all at once
    idle: list[float] = []
    n_idle = 300 if impl == "ours" else 30
    found = total = 0
    for i, p in enumerate(procs[:3]):
        r = await p.ask(op="lat", owners=owners[i], count=keys, n=n_idle, seed=i)
        idle += r["lat_ms"]
        found += r["found"]
        total += r["n"]
    n_conc = 800 if impl == "ours" else 32
    conc = await asyncio.gather(
        *(
            p.ask(op="lat", owners=owners[i], count=keys, n=n_conc, concurrency=16, seed=100 + i)
            for i, p in enumerate(procs)
        )
    )
    cl = [x for r in conc for x in r["lat_ms"]]
    res.update(
        idle_p50=pct(idle, 0.5),
        idle_p99=pct(idle, 0.99),
        idle_found=f"{found}/{total}",
        conc_p50=pct(cl, 0.5),
        conc_p99=pct(cl, 0.99),
        conc_found=f"{sum(r['found'] for r in conc)}/{sum(r['n'] for r in conc)}",
    )
    # (C) CPU per key per peer: process 0 advertises extra keys; receivers store them
    extra = keys * 2 if impl == "ours" else max(keys // 2, 20)
    before = await asyncio.gather(*(p.ask(op="usage") for p in procs))
    t0 = time.time()
    sent = await procs[0].ask(op="advertise", idx=0, owner=1000, start=0, count=extra)
    if impl == "ours":  # wait until every receiver stored them (stock: provide() returns after its sends)
        want = [b["records"] + extra for b in before[1:]]
        while time.time() - t0 < 120:
            now = await asyncio.gather(*(p.ask(op="usage") for p in procs[1:]))
            if all(u["records"] >= w for u, w in zip(now, want, strict=True)):
                break
            await asyncio.sleep(0.05)
    after = await asyncio.gather(*(p.ask(op="usage") for p in procs))
    peers = nodes - 1
    recv_cpu = [a["cpu"] - b["cpu"] for a, b in zip(after[1:], before[1:], strict=True)]
    res.update(
        extra_keys=extra,
        extra_wall_s=time.time() - t0,
        sender_ms_per_key_peer=sent["cpu"] * 1000 / (extra * peers),
        receiver_ms_per_key=statistics.mean(recv_cpu) * 1000 / extra,
        receiver_stored=[a["records"] - b["records"] for a, b in zip(after[1:], before[1:], strict=True)],
    )
    await asyncio.gather(*(p.stop() for p in procs))
    return res


async def phase_d(impl: str, nodes: int, per_proc: int, keys: int, n: int) -> dict[str, Any]:
    procs = await cluster(impl, nodes, per_proc)
    settled = await settle(procs, nodes, impl)
    idx = 0
    for p in procs:
        for i in range(len(p.ips)):
            await p.ask(op="advertise", idx=i, owner=idx, start=0, count=keys)
            idx += 1
    owners = owners_for(procs, nodes)
    # wait until node 0 finds a key of the last node (records have spread)
    await procs[0].ask(
        op="check", owners=[[nodes - 1]] + [[] for _ in procs[0].ips[1:]], count=keys, deadline=60
    )
    res = await asyncio.gather(
        *(
            p.ask(op="lat", owners=owners[i], count=keys, n=n, hops=True, seed=7 + i)
            for i, p in enumerate(procs[:4])
        )
    )
    lat = [x for r in res for x in r["lat_ms"]]
    hops = [x for r in res for x in r["hops"]]
    usage = await asyncio.gather(*(p.ask(op="usage") for p in procs))
    await asyncio.gather(*(p.stop() for p in procs))
    return {
        "nodes": nodes,
        "settle_s": settled,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "found": f"{sum(r['found'] for r in res)}/{sum(r['n'] for r in res)}",
        "hops": {h: hops.count(h) for h in sorted(set(hops))},
        "local_share": (hops.count(0) / len(hops)) if hops else None,
        "rss_mib_per_proc": statistics.mean(u["rss_kib"] for u in usage) / 1024,
    }


async def phase_cold(nodes: int, per_proc: int, keys: int, n: int, natural: bool) -> dict[str, Any]:
    """Cold lookups at idle: one asking process at a time, one lookup at a time."""
    procs = await cluster("ours", nodes, per_proc)
    settled = await settle(procs, nodes, "ours")
    idx = 0
    for p in procs:
        for i in range(len(p.ips)):
            await p.ask(op="advertise", idx=i, owner=idx, start=0, count=keys)
            idx += 1
    owners = owners_for(procs, nodes)
    # records have spread once node 0 finds a key of the last node
    await procs[0].ask(
        op="check", owners=[[nodes - 1]] + [[] for _ in procs[0].ips[1:]], count=keys, deadline=60
    )
    askers = procs[: min(len(procs), 3)]
    out: dict[str, Any] = {"nodes": nodes, "settle_s": settled, "load_before": os.getloadavg()}
    # natural first, and other keys (seeds) than forced: forced lookups drop the asker's records
    modes = ([("natural", False, 1011)] if natural else []) + [("forced", True, 11), ("miss", False, 2011)]
    for mode, forced, seed in modes:
        lat: list[float] = []
        missed = held = dropped = 0
        for i, p in enumerate(askers):
            r = await p.ask(
                op="cold",
                owners=owners[i],
                count=keys,
                n=(n if mode != "miss" else n // 3) // len(askers),
                forced=forced,
                miss=mode == "miss",
                seed=seed + i,
            )
            lat += r["lat_ms"]
            missed += r["missed"]
            held += r["held"]
            dropped += r["dropped"]
        out[mode] = {  # miss: times until the lookup ended empty; "not_found" counts finds
            "lookups": len(lat) + missed,
            "asker_held_dropped": dropped,
            "not_found": missed,
            "held_locally_skipped": held,
            "p50_ms": pct(lat, 0.5),
            "p95_ms": pct(lat, 0.95),
            "p99_ms": pct(lat, 0.99),
            "max_ms": max(lat) if lat else None,
            "under_20ms": (sum(x < 20 for x in lat) / (len(lat) + missed)) if lat or missed else None,
        }
    out["load_after"] = os.getloadavg()
    await asyncio.gather(*(p.stop() for p in procs))
    return out


async def cold_main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"args": vars(args)}
    for nodes in args.sizes:
        per_proc = 1 if nodes <= 10 else 5  # 2 cores: 25 one-host processes would measure the scheduler
        print(f"cold lookups, {nodes} nodes...", file=sys.stderr, flush=True)
        results[f"cold_{nodes}"] = await phase_cold(nodes, per_proc, args.keys, args.n, nodes > 20)
        print(json.dumps(results[f"cold_{nodes}"]), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1, default=str)
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text)
    print(text)


async def run_main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"args": vars(args), "load_before": os.getloadavg()}
    for impl, keys in (("ours", args.keys), ("stock", args.stock_keys)):
        if impl in args.skip or f"a-{impl}" in args.skip:
            continue
        print(f"phase A-C {impl} ({keys} keys/node)...", file=sys.stderr, flush=True)
        results[f"a_{impl}"] = await phase_a(impl, keys)
        print(json.dumps(results[f"a_{impl}"]), file=sys.stderr, flush=True)
    for nodes, per_proc in ((10, 1), (25, 5), (50, 5)):
        for impl in ("ours", "stock"):
            skipped = impl in args.skip or f"d-{impl}" in args.skip
            if skipped or (impl == "stock" and nodes > args.stock_max_nodes):
                continue
            print(f"phase D {impl} {nodes} nodes...", file=sys.stderr, flush=True)
            n = 200 if impl == "ours" else 20
            results[f"d_{impl}_{nodes}"] = await phase_d(
                impl, nodes, per_proc, 50 if impl == "ours" else 5, n
            )
            print(json.dumps(results[f"d_{impl}_{nodes}"]), file=sys.stderr, flush=True)
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1, default=str)
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--keys", type=int, default=5000)
    r.add_argument("--stock-keys", type=int, default=100)
    r.add_argument("--stock-max-nodes", type=int, default=25)
    r.add_argument("--skip", nargs="*", default=[])
    r.add_argument("--out")
    c = sub.add_parser("cold")
    c.add_argument("--sizes", type=int, nargs="*", default=[3, 10, 25])
    c.add_argument("--n", type=int, default=300)
    c.add_argument("--keys", type=int, default=50)
    c.add_argument("--out")
    n = sub.add_parser("node")
    n.add_argument("--impl", choices=["ours", "stock"], required=True)
    n.add_argument("--ips", required=True)
    n.add_argument("--bootstrap", nargs="*", default=[])
    args = ap.parse_args()
    mains = {"run": run_main, "cold": cold_main, "node": node_main}
    asyncio.run(mains[args.cmd](args))


if __name__ == "__main__":
    main()

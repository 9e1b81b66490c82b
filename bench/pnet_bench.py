"""What the private network costs (issue 10, item 4): connection setup and lookup latency with
and without a pre-shared key, in the same run, the two interleaved round by round (the order
swapped every other round), so that load from elsewhere on the machine hits both alike.

    .venv/bin/python -m bench.pnet_bench [--rounds 4] [--dials 100] [--lookups 300] [--out FILE]

- **setup**: two bare py-libp2p hosts built exactly as the router builds its own
  (``host.build_host`` on ``pnet.transport``), in one trio loop, no DHT: one dials the other,
  the connection is closed, and the next dial starts once the listener has dropped it. Time =
  TCP connect + (pnet nonces) + multistream-select + Noise + Yamux; CPU = both ends (one process).
- **lookup**: two ``Libp2pRouter``s (the asker bootstraps to the other), ``lookup()`` of keys
  nobody advertised, result cache off: each is one GET_PROVIDERS round trip over the
  established connection plus the router's thread hand-offs, the cost a cold mirror lookup pays
  before its first provider. Time from ``lookup`` to its end, as the mirror would see it.

Everything runs on 127.0.0.17x in this process; numbers are real (not simulated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio

from spegel_py.routing.libp2p.host import build_host, dial, split_p2p
from spegel_py.routing.libp2p.pnet import transport
from spegel_py.routing.libp2p.psk import PreSharedKey
from spegel_py.routing.libp2p.router import Libp2pRouter

KEY = PreSharedKey(os.urandom(32))
VARIANTS: dict[str, PreSharedKey | None] = {"plain": None, "psk": KEY}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def setup_times(psk: PreSharedKey | None, dials: int) -> dict[str, Any]:
    """``dials`` connection setups between two bare hosts (see the module docstring)."""

    async def body() -> dict[str, Any]:
        tcp_a, tcp_b = transport(psk), transport(psk)
        a, b = build_host(os.urandom(32), tcp_a), build_host(os.urandom(32), tcp_b)
        ms: list[float] = []
        async with (
            a.run([multiaddr.Multiaddr("/ip4/127.0.0.171/tcp/0")]),
            b.run([multiaddr.Multiaddr("/ip4/127.0.0.172/tcp/0")]),
        ):
            addr, pid = split_p2p(f"{a.get_addrs()[0]}")
            assert pid is not None
            cpu = time.process_time()
            for _ in range(dials):
                t = time.perf_counter()
                await dial(b, addr, pid)
                ms.append((time.perf_counter() - t) * 1000)
                await b.get_network().close_peer(pid)
                # the listener's side closes a moment later (py-libp2p signals it with no event)
                while a.get_network().get_connections(b.get_id()):  # noqa: ASYNC110
                    await trio.sleep(0.001)
            cpu_ms = (time.process_time() - cpu) * 1000 / dials
            await a.close()
            await b.close()
        tcp_a.close_leftovers()
        tcp_b.close_leftovers()
        return {"ms": ms, "cpu_ms_per_setup": cpu_ms}

    return trio.run(body)


async def lookup_times(psk: PreSharedKey | None, lookups: int, data: Path) -> dict[str, Any]:
    """``lookups`` one-round lookups from one router to the other (see the module docstring)."""

    class Static:
        def __init__(self, addrs: list[str]) -> None:
            self.addrs = addrs

        async def peers(self) -> list[str]:
            return self.addrs

    common: dict[str, Any] = {"registry_port": 5000, "refresh_interval": 600, "cache_ttl": 0, "psk": psk}
    async with Libp2pRouter(listen_addrs=["/ip4/127.0.0.173/tcp/0"], data_dir=data / "a", alone=True,
                            **common) as a:
        async with Libp2pRouter(listen_addrs=["/ip4/127.0.0.174/tcp/0"], data_dir=data / "b",
                                bootstrap=Static(a.listen_multiaddrs()), bootstrap_interval=0.1,
                                **common) as b:
            while b.peers() != [a.peer_id] or a.peers() != [b.peer_id]:  # noqa: ASYNC110  # no event
                await asyncio.sleep(0.01)
            ms: list[float] = []
            cpu = time.process_time()
            for i in range(lookups):
                t = time.perf_counter()
                found = [p async for p in b.lookup(f"sha256:{os.urandom(32).hex()}")]
                ms.append((time.perf_counter() - t) * 1000)
                assert found == [], (i, found)
            cpu_ms = (time.process_time() - cpu) * 1000 / lookups
    return {"ms": ms, "cpu_ms_per_lookup": cpu_ms}


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 3),
        "p90": round(pct(samples, 0.90), 3),
        "p99": round(pct(samples, 0.99), 3),
        "n": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dials", type=int, default=100, help="connection setups per variant per round")
    parser.add_argument("--lookups", type=int, default=300, help="lookups per variant per round")
    parser.add_argument("--out", type=Path, help="write the raw results as JSON here")
    args = parser.parse_args()
    setup: dict[str, list[float]] = {v: [] for v in VARIANTS}
    look: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, dict[str, list[float]]] = {v: {"setup": [], "lookup": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="pnet-bench-") as tmp:
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                s = setup_times(VARIANTS[name], args.dials)
                setup[name] += s["ms"]
                cpu[name]["setup"].append(s["cpu_ms_per_setup"])
                lk = asyncio.run(lookup_times(VARIANTS[name], args.lookups, Path(tmp) / f"{name}{r}"))
                look[name] += lk["ms"]
                cpu[name]["lookup"].append(lk["cpu_ms_per_lookup"])
                print(f"round {r} {name}: setup p50 {statistics.median(s['ms']):.2f} ms, "
                      f"lookup p50 {statistics.median(lk['ms']):.2f} ms", flush=True)
    result: dict[str, Any] = {"rounds": args.rounds, "dials": args.dials, "lookups": args.lookups}
    for name in VARIANTS:
        result[name] = {
            "setup_ms": summary(setup[name]),
            "setup_cpu_ms": round(statistics.median(cpu[name]["setup"]), 3),
            "lookup_ms": summary(look[name]),
            "lookup_cpu_ms": round(statistics.median(cpu[name]["lookup"]), 3),
        }
    result["ratio_psk_over_plain"] = {
        f"{what}_{q}": round(result["psk"][f"{what}_ms"][q] / result["plain"][f"{what}_ms"][q], 3)
        for what in ("setup", "lookup")
        for q in ("p50", "p99")
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

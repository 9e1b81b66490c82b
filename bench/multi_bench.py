"""Issue-12 multi-provider benchmark: one large blob relayed from 4 providers at once vs from one.

Processes on loopback, run inside a network namespace of their own (``/work/wt/isolate`` or
``unshare --net``) so the ``tc`` qdisc on its ``lo`` is nobody else's: ``--providers`` peers
(the real ``spegel-py registry`` over one OCI layout, sendfile) on 127.0.0.81.., each peer's
outgoing bytes capped at ``--peer-rate`` by a ``tc`` htb class of its own matched on its
source address (``bench/lib/shaping.py``: every peer behind its own 1 Gbit/s NIC, while relay ->
client stays loopback, as containerd -> its node's spegel-py is); two relay nodes (the real
``RegistryServer`` + ``Mirror``, the CLI's default pool, a static router naming every peer):
``multi`` with ``multi_peer_fetch`` on, ``single`` with it off (Spegel's behaviour: one provider
per blob); and the lean client of ``bench.lib.client``, which copies every byte. Rounds are
interleaved (order flips every round); the bar compares medians of the same run:
multi >= 2.5x single. Every relayed body is hashed by the client and checked first.
Run as root from the repository root:
    /work/wt/isolate .venv/bin/python -m bench.multi_bench [--rounds 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from typing import Any

from bench.lib import runner
from bench.lib.blobs import BlobSpec, ensure_layout
from bench.lib.servers import Server, Spegel
from bench.relay_bench import RelayNode, rss_mib

MiB = 1 << 20
BAR = 2.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--size-mib", type=int, default=1024, help="the blob's size")
    ap.add_argument("--providers", type=int, default=4, help="peers holding the blob")
    ap.add_argument("--peer-rate", default="1gbit", help="each peer's outgoing link (tc rate)")
    ap.add_argument("--pool", default="64x786432", help="relay buffer pool COUNTxSIZE (default: the CLI's)")
    ap.add_argument("--range-size", type=int, default=4 << 20, help="--multi-peer-range-size of the relay")
    ap.add_argument("--buffers", type=int, default=32, help="--multi-peer-buffers of the relay")
    ap.add_argument("--cache-dir", default=os.path.join(runner.REPO_ROOT, ".work", "cache", "multi-bench"))
    ap.add_argument("--out", default=os.path.join(runner.REPO_ROOT, ".work", "bench", "multi_bench.json"))
    ap.add_argument("--spegel-bin", default=os.path.join(runner.REPO_ROOT, ".venv", "bin", "spegel-py"))
    return ap.parse_args(argv)


def run(a: argparse.Namespace) -> dict[str, Any]:
    layout = ensure_layout(os.path.join(a.cache_dir, "layout"), [BlobSpec("big", a.size_mib, "multi-big")])
    big = layout.by_role("big")[0]
    peers = [
        Spegel(f"multi-peer-{i}", f"127.0.0.{81 + i}", command=[a.spegel_bin], layout=layout.root, extra=[])
        for i in range(a.providers)
    ]
    relays: dict[str, Server] = {
        label: RelayNode(label, host, peer=peers[0], more_peers=tuple(peers[1:]), pool=a.pool,
                         hash_threads=1, multi=label == "multi", multi_range=a.range_size,
                         multi_buffers=a.buffers)
        for label, host in (("multi", "127.0.0.72"), ("single", "127.0.0.73"))
    }  # fmt: skip
    result: dict[str, Any] = {
        "machine": runner.machine(),
        "args": vars(a),
        "shaping": f"loopback, tc htb per peer source address at {a.peer_rate}",
    }
    servers: list[Server] = [*peers, *relays.values()]
    try:
        for server in servers:
            server.start()
        for label, relay in relays.items():  # correctness before speed
            got = runner.run_py_client(relay.addr, [big.url_path()], concurrency=1, verify=True)
            if got["errors"] or got["streams"][0]["digest"] != big.digest:
                raise RuntimeError(f"{label} served wrong content: {got['errors']}")
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in relays}
        for r in range(a.rounds):
            for label in ("multi", "single") if r % 2 == 0 else ("single", "multi"):
                rec = runner.hot_run("py", relays[label], big.url_path(), big.path, 1, sample_rss=False)
                rec["relay_rss_MiB"] = rss_mib(relays[label])
                runs[label].append(rec)
                print(f"  round {r + 1} {label:<6} {rec['MiBps']:8.1f} MiB/s", flush=True)
        for label, recs in runs.items():
            rates = [rec["MiBps"] for rec in recs]
            result[label] = {
                "median_MiBps": statistics.median(rates),
                "min_MiBps": min(rates),
                "max_MiBps": max(rates),
                "relay_cpu_s_per_GiB": sum(rec["server_cpu_seconds"] for rec in recs)
                / (sum(rec["bytes"] for rec in recs) / (1 << 30)),
                "runs": recs,
            }
        result["ratio_multi_vs_single"] = result["multi"]["median_MiBps"] / result["single"]["median_MiBps"]
        result["bar"] = BAR
        result["met"] = result["ratio_multi_vs_single"] >= BAR
    finally:
        for server in reversed(servers):
            server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from bench.lib.shaping import shaped_sources

    with shaped_sources([f"127.0.0.{81 + i}" for i in range(a.providers)], a.peer_rate):
        result = run(a)
    runner.write_result(a.out, result)
    multi, single = result["multi"], result["single"]
    print(
        f"\n{a.size_mib} MiB from {a.providers} providers at {a.peer_rate} each: multi "
        f"{multi['median_MiBps']:.1f} MiB/s (min {multi['min_MiBps']:.1f}), single "
        f"{single['median_MiBps']:.1f} MiB/s (min {single['min_MiBps']:.1f}): ratio "
        f"{result['ratio_multi_vs_single']:.2f}x (bar >= {BAR}x: {'met' if result['met'] else 'NOT met'}); "
        f"relay CPU {multi['relay_cpu_s_per_GiB']:.2f} vs {single['relay_cpu_s_per_GiB']:.2f} s/GiB"
    )
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

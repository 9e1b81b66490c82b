"""Issue-4 relay benchmark: a blob relayed by the mirror next to a direct GET from the peer.

Three processes on loopback: a peer (the real ``spegel-py registry`` over an OCI layout, serving
with sendfile), a relay node (the real :class:`RegistryServer` with an empty store and the
:class:`Mirror` pointed at the peer by a static router), and the lean epoll client of
``bench.lib.client``. Measured in one run, rounds interleaved (order flips every round), medians:
  1. single-stream throughput of the big blob: relay vs direct from the peer (bar: >= 0.8x);
  2. N concurrent streams of the 100 MiB blob: aggregate throughput, and the relay process's RSS
     (VmRSS summed over its tree, sampled every 5 ms) against its idle RSS (bar: <= +32 MiB).
Correctness first: the relayed bytes are hashed by the client and compared with the digest.
Run as root from the repository root:
    .venv/bin/python -m bench.relay_bench [--rounds 5] [--streams 32] [--peer-rate 10gbit] [--out FILE]
(``--serve-relay`` is the relay node's own entry point, started by the benchmark.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any

from bench.lib import proc, runner
from bench.lib.blobs import BlobSpec, ensure_layout
from bench.lib.cgroup import Sampler
from bench.lib.servers import Server, Spegel

MiB = 1 << 20
PEER_HOST = "127.0.0.71"


class RelayNode(Server):
    """The relay under test: a registry with no content of its own and the mirror enabled.

    ``peer`` (and ``more_peers``) hold every blob; ``multi``: the mirror's
    ``multi_peer_fetch`` (bench/multi_bench.py compares both ways).
    """

    name = "spegel-py-relay"

    def __init__(
        self,
        label: str,
        host: str,
        *,
        peer: Server,
        pool: str,
        hash_threads: int,
        more_peers: tuple[Server, ...] = (),
        multi: bool = True,
        multi_range: int = 4 << 20,
        multi_buffers: int = 32,
    ) -> None:
        super().__init__(label, host)
        self.peer, self.pool, self.hash_threads = peer, pool, hash_threads
        self.more_peers, self.multi = more_peers, multi
        self.multi_range, self.multi_buffers = multi_range, multi_buffers

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.relay_bench",
            "--serve-relay",
            self.addr,
            ",".join(p.addr for p in (self.peer, *self.more_peers)),
            "--pool",
            self.pool,
            "--hash-threads",
            str(self.hash_threads),
            "--multi-peer-fetch",
            "on" if self.multi else "off",
            "--multi-peer-range-size",
            str(self.multi_range),
            "--multi-peer-buffers",
            str(self.multi_buffers),
        ]


# -- the relay node's process ---------------------------------------------------------------------


class _StaticRouter:
    """Every key is held by the given peers: the benchmark measures relaying, not routing."""

    def __init__(self, addrs: list[tuple[str, int]]) -> None:
        from spegel_py.routing.base import Peer

        self._peers = [Peer(f"bench-peer-{i}", host, port) for i, (host, port) in enumerate(addrs)]

    def ready(self) -> bool:
        return True

    async def advertise(self, keys: Iterable[str]) -> None:
        return None

    async def withdraw(self, keys: Iterable[str]) -> None:
        return None

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Any]:
        for peer in self._peers[:limit]:
            yield peer

    async def close(self) -> None:
        return None


async def _serve_relay(
    addr: str, peer_addrs: str, pool: str, hash_threads: int, multi: tuple[bool, int, int]
) -> None:
    """``multi``: the mirror's multi_peer_fetch, multi_peer_range_size and multi_peer_buffers."""
    from aiohttp import web

    from spegel_py.metrics import Metrics
    from spegel_py.relay.bufferpool import BufferPool
    from spegel_py.relay.mirror import Mirror
    from spegel_py.relay.settings import MirrorSettings
    from spegel_py.serving.pagecache import PageCacheCoordinator
    from spegel_py.serving.server import RegistryServer
    from spegel_py.store.memory import MemoryStore

    host, _, port = addr.rpartition(":")
    peers = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in peer_addrs.split(","))]
    count, _, size = pool.partition("x")
    mirror = Mirror(
        _StaticRouter(peers),
        pool=BufferPool(count=int(count), size=int(size)),
        settings=MirrorSettings(
            hash_threads=hash_threads,
            lookup_limit=len(peers),
            multi_peer_fetch=multi[0],
            multi_peer_range_size=multi[1],
            multi_peer_buffers=multi[2],
        ),
    )
    server = RegistryServer(
        MemoryStore(), metrics=Metrics(), coordinator=PageCacheCoordinator(), on_miss=mirror
    )
    runner_ = web.AppRunner(server.application(), access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner_.setup()
    await web.TCPSite(runner_, host, int(port)).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner_.cleanup()
    await mirror.close()


# -- the benchmark ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per scenario")
    ap.add_argument("--big-mib", type=int, default=512, help="single-stream blob size")
    ap.add_argument("--wide-mib", type=int, default=100, help="blob fetched by the concurrent streams")
    ap.add_argument("--streams", type=int, default=32, help="concurrent relayed streams")
    ap.add_argument(
        "--pool", default="64x786432", help="relay buffer pool COUNTxSIZE in bytes (default: the CLI's)"
    )
    ap.add_argument(
        "--hash-threads", type=int, default=1, help="relay hashing threads (0: on the loop)"
    )
    ap.add_argument(
        "--peer-rate",
        default="",
        help="limit the peer's outgoing bytes to this tc rate (e.g. 10gbit): the peer behind a NIC, "
        "relay -> client still on loopback (bench/lib/shaping.py); empty: unshaped loopback",
    )
    ap.add_argument(
        "--client",
        choices=sorted(runner.CLIENTS),
        default="py",
        help="py copies every byte out of the socket, like containerd writing a layer (py-discard does not)",
    )
    ap.add_argument("--cache-dir", default=os.path.join(runner.REPO_ROOT, ".work", "cache", "relay-bench"))
    ap.add_argument("--out", default=os.path.join(runner.REPO_ROOT, ".work", "bench", "relay_bench.json"))
    ap.add_argument("--spegel-bin", default=os.path.join(runner.REPO_ROOT, ".venv", "bin", "spegel-py"))
    ap.add_argument("--serve-relay", nargs=2, metavar=("ADDR", "PEER_ADDRS"), help=argparse.SUPPRESS)
    ap.add_argument("--multi-peer-fetch", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    ap.add_argument("--multi-peer-range-size", type=int, default=4 << 20, help=argparse.SUPPRESS)
    ap.add_argument("--multi-peer-buffers", type=int, default=32, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def rss_mib(server: Server) -> float:
    return sum(proc.memory_kib(pid).get("VmRSS", 0) for pid in server.pids()) / 1024


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["MiBps"] for r in runs]
    gib = sum(r["bytes"] for r in runs) / (1 << 30)
    return {
        "median_MiBps": statistics.median(rates),
        "min_MiBps": min(rates),
        "max_MiBps": max(rates),
        "server_cpu_s_per_GiB": sum(r["server_cpu_seconds"] for r in runs) / gib,
        "runs": [{k: v for k, v in r.items() if k != "rss_samples"} for r in runs],
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    specs = [BlobSpec("big", a.big_mib, "relay-big"), BlobSpec("wide", a.wide_mib, "relay-wide")]
    layout = ensure_layout(os.path.join(a.cache_dir, "layout"), specs)
    big, wide = layout.by_role("big")[0], layout.by_role("wide")[0]
    result: dict[str, Any] = {
        "machine": runner.machine(),
        "args": {k: v for k, v in vars(a).items() if k != "serve_relay"},
    }
    peer = Spegel("relay-peer", PEER_HOST, command=[a.spegel_bin], layout=layout.root, extra=[])
    relay = RelayNode(
        "relay", "127.0.0.72", peer=peer, pool=a.pool, hash_threads=a.hash_threads
    )
    servers = {"direct": peer, "relay": relay}
    try:
        peer.start()
        relay.start()
        result["relay_idle_rss_MiB"] = rss_mib(relay)
        # The cgroup's usage also counts kernel memory (socket buffers), which RSS does not.
        result["relay_idle_cgroup_MiB"] = relay.cgroup.read_int("memory.usage_in_bytes") / MiB
        for blob in (wide, big):  # correctness before speed
            got = runner.run_py_client(relay.addr, [blob.url_path()], concurrency=1, verify=True)
            if got["errors"] or got["streams"][0]["digest"] != blob.digest:
                raise RuntimeError(
                    f"relay served wrong content: {got['errors']} {got['streams'][0]['digest']}"
                )
        result["relay_rss_after_first_blobs_MiB"] = rss_mib(relay)
        scenarios = [("1 stream", big, 1), (f"{a.streams} streams", wide, a.streams)]
        hot: dict[str, Any] = {}
        peak_rss = 0.0
        for name, blob, streams in scenarios:
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "relay": []}
            for r in range(a.rounds):
                for label in ("direct", "relay") if r % 2 == 0 else ("relay", "direct"):
                    sampler = Sampler(None, relay.pids(), interval=0.005) if label == "relay" else None
                    if sampler is not None:
                        relay.cgroup.reset_peak()
                        sampler.start()
                    rec = runner.hot_run(
                        a.client, servers[label], blob.url_path(), blob.path, streams, sample_rss=False
                    )
                    if sampler is not None:
                        sampler.stop()
                        rec["relay_peak_rss_MiB"] = sampler.max_vmrss_kib / 1024
                        rec["relay_cgroup_peak_MiB"] = (
                            relay.cgroup.read_int("memory.max_usage_in_bytes") / MiB
                        )
                        peak_rss = max(peak_rss, rec["relay_peak_rss_MiB"])
                    runs[label].append(rec)
                    extra = f" relay peak RSS {rec['relay_peak_rss_MiB']:.1f} MiB" if sampler else ""
                    print(
                        f"  {name:>11} round {r + 1} {label:<7} {rec['MiBps']:8.0f} MiB/s{extra}", flush=True
                    )
            hot[name] = {lb: summarize(v) for lb, v in runs.items()}
            hot[name]["ratio_relay_vs_direct"] = (
                hot[name]["relay"]["median_MiBps"] / hot[name]["direct"]["median_MiBps"]
            )
            hot[name]["relay_peak_rss_MiB"] = max(r["relay_peak_rss_MiB"] for r in runs["relay"])
            hot[name]["relay_cgroup_peak_MiB"] = max(r["relay_cgroup_peak_MiB"] for r in runs["relay"])
        result["hot"] = hot
        result["relay_peak_rss_MiB"] = peak_rss
        result["relay_rss_growth_MiB"] = peak_rss - result["relay_idle_rss_MiB"]
        cgroup_peak = max(h["relay_cgroup_peak_MiB"] for h in hot.values())
        result["relay_cgroup_growth_MiB"] = cgroup_peak - result["relay_idle_cgroup_MiB"]
    finally:
        for server in (relay, peer):
            server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.serve_relay:
        multi = (a.multi_peer_fetch == "on", a.multi_peer_range_size, a.multi_peer_buffers)
        asyncio.run(_serve_relay(*a.serve_relay, a.pool, a.hash_threads, multi))
        return 0
    if a.peer_rate:
        from bench.lib.shaping import shaped_source

        with shaped_source(PEER_HOST, a.peer_rate):
            result = run(a)
    else:
        result = run(a)
    runner.write_result(a.out, result)
    print(
        f"\nrelay idle RSS {result['relay_idle_rss_MiB']:.1f} MiB, "
        f"peak {result['relay_peak_rss_MiB']:.1f} MiB, growth {result['relay_rss_growth_MiB']:.1f} MiB; "
        f"cgroup usage growth (incl. kernel pipe buffers) {result['relay_cgroup_growth_MiB']:.1f} MiB"
    )
    for name, h in result["hot"].items():
        direct, relay = h["direct"]["median_MiBps"], h["relay"]["median_MiBps"]
        print(
            f"{name:>11}: direct {direct:.0f} MiB/s, relay {relay:.0f} MiB/s, ratio "
            f"{h['ratio_relay_vs_direct']:.2f}, relay CPU {h['relay']['server_cpu_s_per_GiB']:.2f} s/GiB, "
            f"relay peak RSS {h['relay_peak_rss_MiB']:.1f} MiB"
        )
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

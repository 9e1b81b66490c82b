"""Issue-2 benchmark: spegel-py's blob serving next to nginx (sendfile), in one run.

Measures, on the same files and with the same client:
  1. GET throughput of a page-cached blob: 1 stream of the big blob, N concurrent streams of the
     wide blob; rounds interleaved between servers (the order flips every round); medians.
  2. Server CPU seconds per GiB served (utime + stime of the server's process tree).
  3. Peak page cache charged to each server's cgroup (v1 ``memory.stat``) while it serves
     >= 1 GiB of evicted blobs: nginx, spegel-py with eviction on and with it off.
  4. spegel-py's RSS idle and during the N-stream runs.
Prints a table, writes JSON. Run as root from the repository root:
    .venv/bin/python -m bench.serve_bench [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import signal
import statistics
import sys
import time
from typing import Any

from bench.lib import proc, runner
from bench.lib.blobs import BlobSpec, Layout, ensure_layout
from bench.lib.servers import AiohttpFileResponse, Nginx, Server, Spegel

GiB = 1 << 30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per hot scenario")
    ap.add_argument("--big-mib", type=int, default=512, help="single-stream blob size (>= 300)")
    ap.add_argument("--wide-mib", type=int, default=100, help="blob fetched by the concurrent streams")
    ap.add_argument("--streams", type=int, default=32, help="concurrent streams of the wide blob")
    ap.add_argument("--cold-mib", type=int, default=128, help="size of each cold blob")
    ap.add_argument("--cold-count", type=int, default=8, help="number of cold blobs (>= 1 GiB in total)")
    ap.add_argument(
        "--cold-concurrency", default="1,4", help="comma list: cold blobs fetched at once, one cold run each"
    )
    ap.add_argument(
        "--cold-client",
        choices=["py", "py-discard"],
        default="py-discard",
        help="cold-run client (see README)",
    )
    ap.add_argument(
        "--quiet",
        type=float,
        default=0.85,
        help="before each run wait until every CPU was this idle over 0.5 s; 0 = don't",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=-20,
        help="niceness of this process, inherited by the servers and clients it starts: on a shared "
        "machine the measured processes then get most of a contended core (CFS weight ~87x nice 0)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=10.0, help="longest wait for --quiet, seconds")
    ap.add_argument(
        "--quiesce",
        type=float,
        default=1.5,
        help="seconds to wait after a spegel-py run with eviction on: its second eviction pass runs 1 s "
        "after a stream ends and must not land in the next server's run",
    )
    ap.add_argument(
        "--client", choices=sorted(runner.CLIENTS), default="py-discard", help="hot-run client (see README)"
    )
    ap.add_argument("--cache-dir", default=os.path.join(runner.REPO_ROOT, ".work", "cache", "bench"))
    ap.add_argument("--out", default=os.path.join(runner.REPO_ROOT, ".work", "bench", "serve_bench.json"))
    ap.add_argument("--spegel-bin", default=os.path.join(runner.REPO_ROOT, ".venv", "bin", "spegel-py"))
    ap.add_argument("--spegel-args", default="", help="extra flags for the measured spegel-py")
    ap.add_argument(
        "--spegel-noevict-args",
        default="--page-cache-eviction=false",
        help="flags that turn page-cache eviction off (the cold-run comparison); '' skips that run",
    )
    ap.add_argument(
        "--spegel-patches",
        default="",
        help="also run spegel-py with these changes patched in (bench/experiments/spegel_patched.py)",
    )
    ap.add_argument("--nginx-auto", action="store_true", help="also run nginx with worker_processes auto")
    ap.add_argument("--aiohttp", action="store_true", help="also run a bare aiohttp FileResponse server")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument(
        "--pin",
        default="0:1",
        help="SERVER_CPUS:CLIENT_CPUS taskset lists (server and client each get a core); '' = no pinning",
    )
    a = ap.parse_args(argv)
    a.server_cpus, _, a.client_cpus = a.pin.partition(":")
    if a.big_mib < 300 or a.cold_mib * a.cold_count < 1024:
        ap.error("issue 2 asks for a >= 300 MiB single stream and >= 1 GiB of cold blobs")
    return a


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["MiBps"] for r in runs]
    gib = sum(r["bytes"] for r in runs) / GiB
    return {
        "median_MiBps": statistics.median(rates),
        "min_MiBps": min(rates),
        "max_MiBps": max(rates),
        "server_cpu_s_per_GiB": sum(r["server_cpu_seconds"] for r in runs) / gib,
        "client_cpu_s_per_GiB": sum(r["client_cpu_seconds"] for r in runs) / gib,
        "runs": runs,
    }


def start_servers(a: argparse.Namespace, layout: Layout) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    wanted: list[tuple[str, Server]] = [
        ("nginx", Nginx("nginx", "127.0.0.61", blobs_dir=layout.blobs_dir, workers="1", cpus=a.server_cpus)),
        (
            "spegel-py",
            Spegel(
                "spegel",
                "127.0.0.62",
                command=[a.spegel_bin],
                layout=layout.root,
                extra=shlex.split(a.spegel_args),
                cpus=a.server_cpus,
            ),
        ),
    ]
    if a.nginx_auto:
        wanted.append(
            ("nginx-auto", Nginx("nginx-auto", "127.0.0.63", blobs_dir=layout.blobs_dir, workers="auto"))
        )
    if a.aiohttp:
        wanted.append(
            (
                "aiohttp",
                AiohttpFileResponse(
                    "aiohttp",
                    "127.0.0.64",
                    python=sys.executable,
                    blobs_dir=layout.blobs_dir,
                    cpus=a.server_cpus,
                ),
            )
        )
    if a.spegel_patches:
        patched = [sys.executable, "-m", "bench.experiments.spegel_patched", "--patches", a.spegel_patches]
        wanted.append(
            (
                f"spegel-py+{a.spegel_patches}",
                Spegel(
                    "spegel-patched",
                    "127.0.0.66",
                    command=patched,
                    layout=layout.root,
                    extra=shlex.split(a.spegel_args),
                    cpus=a.server_cpus,
                ),
            )
        )
    if a.spegel_noevict_args:
        extra = shlex.split(a.spegel_args) + shlex.split(a.spegel_noevict_args)
        wanted.append(
            (
                "spegel-py-noevict",
                Spegel(
                    "spegel-noevict",
                    "127.0.0.65",
                    command=[a.spegel_bin],
                    layout=layout.root,
                    extra=extra,
                    cpus=a.server_cpus,
                ),
            )
        )
    try:
        for label, server in wanted:
            servers[label] = server
            server.start()
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: dict[str, Server]) -> None:
    for server in servers.values():
        server.stop()


def evicts(label: str) -> bool:
    """Whether this server runs spegel-py's page-cache eviction (and its delayed second pass)."""
    return label.startswith("spegel-py") and label != "spegel-py-noevict"


def rss_mib(server: Server) -> dict[str, float]:
    m = proc.memory_kib(server.pid)
    return {"VmRSS_MiB": m["VmRSS"] / 1024, "VmHWM_MiB": m["VmHWM"] / 1024}


def run(a: argparse.Namespace) -> dict[str, Any]:
    specs = [BlobSpec("big", a.big_mib, "big"), BlobSpec("wide", a.wide_mib, "wide")]
    specs += [BlobSpec("cold", a.cold_mib, f"cold-{i}") for i in range(a.cold_count)]
    layout = ensure_layout(os.path.join(a.cache_dir, "layout"), specs)
    big, wide, cold = layout.by_role("big")[0], layout.by_role("wide")[0], layout.by_role("cold")
    result: dict[str, Any] = {"machine": runner.machine(), "args": vars(a)}
    servers = start_servers(a, layout)
    try:
        spegel = servers["spegel-py"]
        result["spegel_idle_rss"] = rss_mib(spegel)  # after start-up and the readiness probe
        for label, server in servers.items():  # correctness before speed: same bytes from all
            got = runner.run_py_client(server.addr, [wide.url_path()], concurrency=1, verify=True)
            digest = got["streams"][0]["digest"]
            if got["errors"] or digest != wide.digest:
                raise RuntimeError(f"{label} served wrong content: {got['errors']} {digest}")
        result["spegel_rss_after_first_blob"] = rss_mib(spegel)
        hot_labels = list(servers)
        scenarios = [("1 stream", big, 1), (f"{a.streams} streams", wide, a.streams)]
        hot: dict[str, Any] = {}
        for name, blob, streams in scenarios:
            runs: dict[str, list[dict[str, Any]]] = {lb: [] for lb in hot_labels}
            for r in range(a.rounds):
                order = hot_labels if r % 2 == 0 else hot_labels[::-1]
                for label in order:
                    rec = runner.hot_run(
                        a.client,
                        servers[label],
                        blob.url_path(),
                        blob.path,
                        streams,
                        sample_rss=label == "spegel-py" and streams > 1,
                        cpus=a.client_cpus,
                        quiet=a.quiet,
                        quiet_timeout=a.quiet_timeout,
                    )
                    runs[label].append(rec)
                    if evicts(label):
                        time.sleep(a.quiesce)  # a fixed delay of the server under test, not a race
                    busy = " ".join(f"{c}={v['busy']:.2f}" for c, v in rec["cores"].items())
                    print(
                        f"  {name:>11} round {r + 1} {label:<18} {rec['MiBps']:8.0f} MiB/s"
                        f"  idle before {rec['idle_before']}  busy {busy}",
                        flush=True,
                    )
            hot[name] = {lb: summarize(v) for lb, v in runs.items()}
            for lb in hot_labels:
                if lb != "nginx":
                    hot[name][lb]["ratio_vs_nginx"] = (
                        hot[name][lb]["median_MiBps"] / hot[name]["nginx"]["median_MiBps"]
                    )
        result["hot"] = hot
        wide_runs = hot[f"{a.streams} streams"]["spegel-py"]["runs"]
        peak = max(r["max_vmrss_kib"] for r in wide_runs) / 1024
        result["spegel_rss_streams"] = {
            "peak_VmRSS_MiB_sampled": peak,
            "growth_MiB": peak - result["spegel_idle_rss"]["VmRSS_MiB"],
            **rss_mib(spegel),
        }
        if not a.skip_cold:
            cold_labels = [lb for lb in servers if lb not in ("nginx-auto", "aiohttp")]
            paths, files = [b.url_path() for b in cold], [b.path for b in cold]
            result["cold"] = {}
            for conc in [int(c) for c in a.cold_concurrency.split(",")]:
                for label in cold_labels:
                    rec = runner.cold_run(
                        servers[label],
                        paths,
                        files,
                        concurrency=conc,
                        discard=a.cold_client == "py-discard",
                        cpus=a.client_cpus,
                        quiet=a.quiet,
                        quiet_timeout=a.quiet_timeout,
                    )
                    result["cold"][f"{label} x{conc}"] = rec
                    print(
                        f"  cold x{conc} {label:<18} peak cache {rec['cache_peak'] / (1 << 20):7.1f} MiB"
                        f"  {rec['MiBps']:6.0f} MiB/s",
                        flush=True,
                    )
                    if evicts(label):
                        time.sleep(a.quiesce)
    finally:
        stop_servers(servers)
    result["machine"]["loadavg_end"] = os.getloadavg()
    return result


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def table(res: dict[str, Any]) -> str:
    """The markdown tables that docs/benchmarks.md quotes."""
    lines = [
        "| scenario | server | median MiB/s | min-max MiB/s | ratio vs nginx | server CPU s/GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, per in res["hot"].items():
        for label, s in per.items():
            ratio = f"{s['ratio_vs_nginx']:.2f}x" if "ratio_vs_nginx" in s else "1.00x"
            lines.append(
                f"| {name} | {label} | {s['median_MiBps']:.0f} | {s['min_MiBps']:.0f}-{s['max_MiBps']:.0f} "
                f"| {ratio} | {s['server_cpu_s_per_GiB']:.3f} |"
            )
    if "cold" in res:
        lines += [
            "",
            "| cold >= 1 GiB, server x streams | cache before MiB | peak cache MiB | cache after MiB "
            "| max_usage MiB | MiB/s | VmRSS peak MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, c in res["cold"].items():
            lines.append(
                f"| {label} | {mib(c['cache_before'])} | {mib(c['cache_peak'])} | {mib(c['cache_after'])} "
                f"| {mib(c['max_usage_in_bytes'])} | {c['MiBps']:.0f} | {c['vmrss_peak_kib'] / 1024:.1f} |"
            )
    idle, streams = res["spegel_idle_rss"], res["spegel_rss_streams"]
    lines += [
        "",
        f"spegel-py RSS: idle {idle['VmRSS_MiB']:.1f} MiB, after first blob "
        f"{res['spegel_rss_after_first_blob']['VmRSS_MiB']:.1f} MiB, peak during streams "
        f"{streams['peak_VmRSS_MiB_sampled']:.1f} MiB (growth {streams['growth_MiB']:.1f} MiB), "
        f"VmHWM {streams['VmHWM_MiB']:.1f} MiB",
        f"load average start {res['machine']['loadavg_start']}, end {res['machine']['loadavg_end']}",
    ]
    return "\n".join(lines)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("needs root (cgroup and page-cache control)", file=sys.stderr)
        return 2
    a = parse_args(argv)
    os.setpriority(os.PRIO_PROCESS, 0, a.nice)
    # SIGTERM (and SIGINT, which a shell's background job ignores) must unwind through the
    # finally blocks that stop the servers and remove their cgroups.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    os.makedirs(a.cache_dir, exist_ok=True)
    with open(os.path.join(a.cache_dir, "lock"), "w") as lock:
        # Runs share the blobs (and so their page cache): two at once would evict each other's.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another serve_bench run holds the blobs; waiting for it", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        res = run(a)
    out = table(res)
    print(out)
    runner.write_result(a.out, res)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

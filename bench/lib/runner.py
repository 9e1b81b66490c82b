"""Running the load client against a server and measuring the server around it."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

from bench.lib import pagecache, proc
from bench.lib.cgroup import Sampler
from bench.lib.servers import Server, pin

GiB = 1 << 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran: recorded in every result file."""

    def cmd(*argv: str) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip()
        except OSError as exc:
            return f"unavailable: {exc}"

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": cmd("nginx", "-v"),
        "git": cmd("git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"),
        "loadavg_start": os.getloadavg(),
    }


def write_result(path: str, result: dict[str, Any]) -> None:
    """The run's JSON (with the load average at its end) to ``path``, directories created."""
    result.setdefault("machine", machine())["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def run_py_client(
    addr: str,
    paths: list[str],
    *,
    concurrency: int,
    verify: bool = False,
    discard: bool = False,
    cpus: str = "",
) -> dict[str, Any]:
    argv = [
        *pin([], cpus),
        sys.executable,
        "-m",
        "bench.lib.client",
        "--addr",
        addr,
        "--concurrency",
        str(concurrency),
    ]
    if discard:
        argv.append("--discard")
    for p in paths:
        argv += ["--path", p]
    if verify:
        argv.append("--verify")
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if not out.stdout:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run_curl_client(
    addr: str, paths: list[str], *, concurrency: int, verify: bool = False, cpus: str = ""
) -> dict[str, Any]:
    """The same streams as ``curl -s -o /dev/null`` processes, all started at once."""
    if concurrency < len(paths) or verify:
        raise ValueError("the curl client runs every path at once and does not verify")
    fmt = "%{http_code} %{size_download} %{time_total}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*pin([], cpus), "curl", "-s", "-o", "/dev/null", "-w", fmt, f"http://{addr}{p}"],
            stdout=subprocess.PIPE,
        )
        for p in paths
    ]
    outs = [p.communicate(timeout=600)[0].decode().split() for p in procs]
    t1 = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    streams: list[dict[str, Any]] = [
        {
            "path": p,
            "status": int(o[0]),
            "bytes": int(o[1]),
            "seconds": float(o[2]),
            "digest": "",
            "error": "",
        }
        for p, o in zip(paths, outs, strict=True)
    ]
    total = sum(s["bytes"] for s in streams)
    return {
        "streams": streams,
        "bytes": total,
        "seconds": t1 - t0,
        "bytes_per_second": total / (t1 - t0),
        "client_cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "errors": [f"status {s['status']}" for s in streams if s["status"] != 200],
    }


def run_py_discard_client(
    addr: str, paths: list[str], *, concurrency: int, verify: bool = False, cpus: str = ""
) -> dict[str, Any]:
    return run_py_client(addr, paths, concurrency=concurrency, verify=verify, discard=True, cpus=cpus)


CLIENTS = {"py": run_py_client, "py-discard": run_py_discard_client, "curl": run_curl_client}


def hot_run(
    client: str,
    server: Server,
    path: str,
    blob_file: str,
    streams: int,
    *,
    sample_rss: bool,
    cpus: str = "",
    quiet: float = 0.0,
    quiet_timeout: float = 10.0,
) -> dict[str, Any]:
    """``streams`` concurrent GETs of one page-cached blob; server CPU and RSS around them.

    ``quiet``: first wait, at most ``quiet_timeout`` seconds, for every CPU to be at least this
    idle (0 = don't wait); past the timeout the run goes ahead and records how idle it was.
    """
    before = pagecache.resident_fraction([blob_file])
    if before < 1.0:
        pagecache.warm([blob_file])
    idle = proc.wait_quiet(idle=quiet, timeout=quiet_timeout) if quiet > 0 else None
    sampler = Sampler(None, server.pids(), interval=0.005) if sample_rss else None
    cpu0 = server.cpu_seconds()
    cores0 = proc.cpu_times()
    if sampler is not None:
        sampler.start()
    res = CLIENTS[client](server.addr, [path] * streams, concurrency=streams, cpus=cpus)
    cores1 = proc.cpu_times()
    cpu1 = server.cpu_seconds()
    if sampler is not None:
        sampler.stop()
    if res["errors"]:
        raise RuntimeError(f"{server.label}: {res['errors'][:3]}")
    return {
        "bytes": res["bytes"],
        "seconds": res["seconds"],
        "MiBps": res["bytes"] / res["seconds"] / (1 << 20),
        "stream_MiBps": sorted(s["bytes"] / s["seconds"] / (1 << 20) for s in res["streams"]),
        "server_cpu_seconds": cpu1 - cpu0,
        "client_cpu_seconds": res["client_cpu_seconds"],
        "resident_before": before,
        "resident_after": pagecache.resident_fraction([blob_file]),
        "cores": proc.busy_fractions(cores0, cores1),
        "idle_before": idle,
        "max_vmrss_kib": sampler.max_vmrss_kib if sampler is not None else None,
        "rss_samples": sampler.samples if sampler is not None else None,
    }


def cold_run(
    server: Server,
    paths: list[str],
    files: list[str],
    *,
    concurrency: int,
    discard: bool = True,
    cpus: str = "",
    quiet: float = 0.0,
    quiet_timeout: float = 10.0,
) -> dict[str, Any]:
    """Serve evicted blobs; sample the page cache charged to the server's cgroup throughout."""
    idle = proc.wait_quiet(idle=quiet, timeout=quiet_timeout) if quiet > 0 else None
    for _ in range(5):  # a page still referenced (e.g. by a socket being torn down) survives once
        pagecache.evict(files)
        resident0 = pagecache.resident_fraction(files)
        if resident0 == 0.0:
            break
    cg = server.cgroup
    cg.reset_peak()
    base = cg.stat()
    pids = server.pids()
    rss0 = sum(proc.memory_kib(p).get("VmRSS", 0) for p in pids)
    sampler = Sampler(cg, pids, interval=0.001)
    cpu0 = server.cpu_seconds()
    sampler.start()
    res = run_py_client(server.addr, paths, concurrency=concurrency, discard=discard, cpus=cpus)
    sampler.stop()
    cpu1 = server.cpu_seconds()
    after = cg.stat()
    if res["errors"]:
        raise RuntimeError(f"{server.label}: {res['errors'][:3]}")
    return {
        "bytes": res["bytes"],
        "seconds": res["seconds"],
        "MiBps": res["bytes"] / res["seconds"] / (1 << 20),
        "concurrency": concurrency,
        "server_cpu_seconds": cpu1 - cpu0,
        "resident_before": resident0,
        "resident_after": pagecache.resident_fraction(files),
        "cache_before": base["total_cache"],
        "cache_peak": sampler.max_cache,
        "cache_after": after["total_cache"],
        "cgroup_rss_peak": sampler.max_rss,
        "max_usage_in_bytes": cg.read_int("memory.max_usage_in_bytes"),
        "vmrss_before_kib": rss0,
        "vmrss_peak_kib": sampler.max_vmrss_kib,
        "samples": sampler.samples,
        "idle_before": idle,
        "series_MiB": _downsample(sampler.series, 50),
    }


def _downsample(series: list[tuple[float, int]], n: int) -> list[tuple[float, float]]:
    """About ``n`` (seconds, MiB) points of a sampled series, keeping each bucket's maximum."""
    if not series:
        return []
    size = max(1, len(series) // n)
    out = []
    for i in range(0, len(series), size):
        bucket = series[i : i + size]
        out.append((round(bucket[0][0], 3), round(max(c for _, c in bucket) / (1 << 20), 1)))
    return out

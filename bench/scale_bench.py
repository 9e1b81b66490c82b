"""Scale benchmark (issue 10 item 6, real processes): N ``spegel-py registry`` nodes on one machine.

    .venv/bin/python -m bench.scale_bench --sizes 10,50,100 [--keys 32] [--idle-seconds 30]
        [--askers 10] [--heads 64] [--profile-size 40 --profile-seconds 30] [--out FILE]

Every node is the product's own command line (``spegel-py registry``, defaults except the
addresses) serving an OCI image layout of its own (``--content-store oci-layout``): one image
``localhost/bench/n<i>:v1`` whose tag, manifest, config and small layers make ``--keys`` keys.
Node i listens on 127.0.1.<i+1> (the same three ports on every IP, as Spegel assumes one
registry port cluster-wide) and bootstraps statically to the first node. Processes are started
through the test harness's ``ProcessGroup`` (tests/harness/procs.py: ``PR_SET_PDEATHSIG``, a pid
registry) and stopped by pid when a size is done, on an exception and on Ctrl-C.

Per size, in this order:

1. **spawn**: all processes at once; seconds until every ``/readyz`` answers 200.
2. **findable**: from a sample of askers (``--find-askers``, spread over the nodes), a HEAD
   through the asker's own registry port (as containerd asks its mirror: ``?ns=localhost``) of
   every key of every other node (tag as ``manifests/v1``, digests as ``manifests`` or
   ``blobs``), ``--find-lanes`` HEADs in flight per asker, in passes; a key that answers 200 is
   done, a 404 is asked again at once (the lookup goes on and is cached 5 s), a key missed twice
   is asked in the next pass. Reported: seconds from the last spawn (and from all-ready) until
   every key answered 200 from every sampled asker, how the first pass ended, what is missing.
3. **idle**: ``--settle-seconds`` of nothing, then utime+stime (``/proc/<pid>/stat``) of every
   node over ``--idle-seconds`` with no requests at all: CPU ms per second per node; RSS
   (``VmRSS``) per node; established TCP connections on each node's router port, inbound and
   outbound (``/proc/net/tcp`` matched to the node's socket fds, bench/lib/sockets.py); the
   ``spegel_router_peers`` metric. The table's idle CPU leaves the findability askers out (their
   last lookups may still run).
4. **profile** (only at ``--profile-size``): ``py-spy record --format raw`` of one idle node
   (neither the bootstrap node nor an asker) for ``--profile-seconds``; top functions by own and
   inclusive samples, the event loops' waits left out (bench/lib/pyspy.py).
5. **cold**: ``--askers`` nodes in turn, each HEADs ``--heads`` blobs (layers and configs) of
   other nodes, sequentially, each (asker, key) once and more than the router's 5 s result cache
   after the findable phase asked it, so every answer needs a fresh lookup under the default
   20 ms ``--mirror-resolve-timeout``. Reported: HEAD latency p50/p99 (client side), the share
   answered 200 (a peer served it) vs 404 (containerd would go upstream), and the askers'
   ``spegel_resolve_duration_seconds`` histogram (time to the first provider) as bucket bounds.

The load average is recorded before and after each size: on a shared machine every wall-clock
figure (spawn, findable, HEAD latency) is pessimistic; CPU seconds are not inflated.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the harness package lives with the tests

from harness.cluster import common_free_port, parse_metrics  # noqa: E402
from harness.procs import ProcessGroup  # noqa: E402
from harness.spegel import spegel_binary  # noqa: E402

from bench.lib import proc, pyspy, runner, sockets  # noqa: E402

RESOLVE_TTL = 5.0  # the router's lookup-result cache (routing/libp2p/router.py cache_ttl)
NS = "localhost"  # --oci-layout-registry's default: the registry layout images are served as


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


# ------------------------------------------------------------------ content


@dataclass(frozen=True)
class Key:
    owner: int
    path: str  # /v2/... as asked through a mirror
    blob: bool  # a blob (layer or config): what the cold phase asks

    @property
    def kind(self) -> str:
        return "blob" if self.blob else "manifest" if "/manifests/sha256:" in self.path else "tag"


def _put(blobs: Path, data: bytes) -> dict[str, Any]:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}


def make_layout(root: Path, node: int, keys: int) -> list[Key]:
    """``root/bench/n<node>``: one image of ``keys`` keys (tag, manifest, config, keys-3 layers)."""
    repo = f"bench/n{node}"
    layout = root / repo
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    rnd = random.Random(f"scale-{node}")
    config = _put(blobs, json.dumps({"architecture": "amd64", "os": "linux", "node": node}).encode())
    layers = [_put(blobs, rnd.randbytes(1024)) for _ in range(max(0, keys - 3))]
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **x} for x in layers],
    }
    manifest = _put(blobs, json.dumps(manifest_doc).encode())
    tag = {"org.opencontainers.image.ref.name": "v1"}
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest_doc["mediaType"], **manifest, "annotations": tag}],
    }
    (layout / "index.json").write_text(json.dumps(index))
    v2 = f"/v2/{repo}"
    return [
        Key(node, f"{v2}/manifests/v1", False),
        Key(node, f"{v2}/manifests/{manifest['digest']}", False),
        *(Key(node, f"{v2}/blobs/{b['digest']}", True) for b in [config, *layers]),
    ]


# ------------------------------------------------------------------ HTTP


class Client:
    """One keep-alive HTTP connection to a node's registry (containerd keeps its own open)."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, path: str, method: str = "HEAD", timeout: float = 10.0) -> tuple[int, float, bytes]:
        """(status, seconds, body); status 0 when nothing answered."""
        t = time.perf_counter()
        for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.ip, self.port, timeout=timeout)
            try:
                self.conn.request(method, path)
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, time.perf_counter() - t, body
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    return 0, time.perf_counter() - t, b""
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _metrics(ip: str, port: int) -> dict[str, float]:
    c = Client(ip, port)
    try:
        status, _, body = c.request("/metrics", "GET")
    finally:
        c.close()
    return parse_metrics(body.decode()) if status == 200 else {}


# ------------------------------------------------------------------ the cluster


@dataclass
class Node:
    index: int
    ip: str
    pid: int
    keys: list[Key]


class Cluster:
    def __init__(self, size: int, keys: int, workdir: Path, base: str, group: ProcessGroup) -> None:
        self.size, self.workdir, self.group = size, workdir, group
        self.ips = [f"{base}.{i + 1}" for i in range(size)]
        self.port, self.router_port, self.metrics_port = (common_free_port(self.ips) for _ in range(3))
        self.nodes: list[Node] = []
        self.layout_keys = [make_layout(workdir / f"layout{i}", i, keys) for i in range(size)]

    def spawn(self) -> float:
        """Start every node; return time.time() of the last spawn."""
        bootstrap = f"/ip4/{self.ips[0]}/tcp/{self.router_port}"
        for i, ip in enumerate(self.ips):
            work = self.workdir
            argv = [str(spegel_binary()), "registry",
                    "--content-store", "oci-layout", "--oci-layout-path", str(work / f"layout{i}"),
                    "--registry-addr", f"{ip}:{self.port}", "--router-addr", f"{ip}:{self.router_port}",
                    "--metrics-addr", f"{ip}:{self.metrics_port}", "--data-dir", str(work / f"data{i}"),
                    "--bootstrap-kind", "static", "--static-bootstrap-peers", bootstrap,
                    "--shutdown-timeout", "3s"]  # fmt: skip
            popen = self.group.start(f"node{i}", argv, log_path=self.workdir / f"node{i}.log")
            self.nodes.append(Node(i, ip, popen.pid, self.layout_keys[i]))
        return time.time()

    def wait_ready(self, deadline: float) -> float:
        pending = set(range(self.size))
        clients = {i: Client(self.ips[i], self.port) for i in pending}
        try:
            while pending:
                if time.time() > deadline:
                    raise RuntimeError(f"{len(pending)} nodes not ready, e.g. node{min(pending)}")
                for i in sorted(pending):
                    self.group.check_running(f"node{i}")
                    if clients[i].request("/readyz", "GET", timeout=2.0)[0] == 200:
                        pending.discard(i)
                time.sleep(0.2)
        finally:
            for client in clients.values():
                client.close()
        return time.time()

    def stop(self) -> None:
        """SIGTERM to every node at once (they shut down in parallel), then wait/kill by pid."""
        for i in range(len(self.nodes)):
            name = f"node{i}"
            if name in self.group and self.group.get(name).running():
                self.group.get(name).popen.send_signal(signal.SIGTERM)
        self.group.stop_all()


def askers(size: int, n: int) -> list[int]:
    """``n`` node indices spread evenly over the cluster (the bootstrap node only if n == size)."""
    if n >= size:
        return list(range(size))
    step = size / n
    return [min(size - 1, int(step * j + step / 2)) for j in range(n)]


def findable(c: Cluster, sample: list[int], deadline: float, lanes: int) -> dict[str, Any]:
    """Passes of HEADs until every key of every other node answers 200 from every sampled asker.

    A miss is asked again at once: the lookup the first HEAD started goes on after the mirror's
    20 ms resolve timeout and its providers are cached for 5 s, so the second HEAD finds a
    record that exists but was slow to find; only a key missed twice waits for the next pass.
    Each asker sends ``lanes`` HEADs at a time (containerd also fetches layers in parallel).
    """
    first_pass: Counter[str] = Counter()  # how keys were found in each asker's first pass
    stop = threading.Event()  # set on an exception (Ctrl-C): every lane ends after its HEAD

    def going() -> bool:
        return time.time() < deadline and not stop.is_set()

    def lane(i: int, keys: list[Key]) -> tuple[list[Key], Counter[str]]:
        """``keys`` asked from node i, one at a time: those missed twice, and how each ended."""
        client, tally, missed = Client(c.ips[i], c.port), Counter[str](), []
        try:
            for k in keys:
                if not going():
                    missed.append(k)
                    continue
                for attempt in ("first_ask", "second_ask"):
                    if client.request(f"{k.path}?ns={NS}")[0] == 200:
                        tally[attempt] += 1
                        break
                else:
                    tally["missed"] += 1
                    missed.append(k)
        finally:
            client.close()
        return missed, tally

    def run(i: int) -> tuple[float | None, int, list[Key]]:
        missing = [k for j in range(c.size) if j != i for k in c.layout_keys[j]]
        random.Random(i).shuffle(missing)
        passes = 0
        with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
            while missing and going():
                passes += 1
                parts = list(pool.map(lane, [i] * lanes, [missing[j::lanes] for j in range(lanes)]))
                missing = [k for part, _ in parts for k in part]
                if passes == 1:
                    for _, tally in parts:
                        first_pass.update(tally)
                log(f"[{c.size}] asker {i} pass {passes}: {len(missing)} keys missing")
                if missing:
                    time.sleep(1.0)
        return (time.time() if not missing else None), passes, missing

    pool = concurrent.futures.ThreadPoolExecutor(len(sample))
    try:
        results = list(pool.map(run, sample))
    except BaseException:
        stop.set()  # the caller stops the nodes next; the lanes' last HEADs then fail fast
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    done = [r[0] for r in results]
    return {
        "askers": sample,
        "lanes": lanes,
        "at": max(d for d in done if d is not None) if all(done) else None,
        "passes": max(r[1] for r in results),
        "missing": sum(len(r[2]) for r in results),
        "missing_by_kind": dict(Counter(k.kind for r in results for k in r[2])),
        "missing_owners": len({k.owner for r in results for k in r[2]}),
        "first_pass": dict(first_pass),
    }


def idle(c: Cluster, seconds: float) -> dict[str, Any]:
    pids = [n.pid for n in c.nodes]
    load0 = os.getloadavg()
    cpu0, t0 = [proc.cpu_seconds(p) for p in pids], time.time()
    time.sleep(seconds)
    cpu1, t1 = [proc.cpu_seconds(p) for p in pids], time.time()
    rss = [proc.memory_kib(p).get("VmRSS", 0) / 1024 for p in pids]
    conns = sockets.connections(pids, c.router_port)
    peers = [_metrics(n.ip, c.metrics_port).get("spegel_router_peers", -1) for n in c.nodes]
    ms = [(b - a) * 1000 / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)]
    per = [conns[p] for p in pids]
    return {
        "seconds": t1 - t0,
        "loadavg": [load0, os.getloadavg()],
        "cpu_ms_per_s": ms,
        "rss_mib": rss,
        "router_conns": [x.total for x in per],
        "router_conns_in": [x.inbound for x in per],
        "router_conns_out": [x.outbound for x in per],
        "router_remote_ips": [x.remote_ips for x in per],
        "router_peers_metric": peers,
    }


def _resolve_buckets(m: dict[str, float]) -> dict[float, float]:
    out: dict[float, float] = {}
    for k, v in m.items():
        if k.startswith("spegel_resolve_duration_seconds_bucket{"):
            le = k.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = out.get(float(le), 0.0) + v
    return out


def _bucket_pct(counts: dict[float, float], p: float) -> float | None:
    """Upper bound (s) of the histogram bucket holding the p-quantile (inf: past the last)."""
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return next(le for le in sorted(counts) if counts[le] >= total * p)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def cold(c: Cluster, sample: list[int], heads: int, not_before: float, seed: int) -> dict[str, Any]:
    time.sleep(max(0.0, not_before - time.time()))
    lat: list[float] = []
    statuses: dict[str, int] = {}
    resolve: dict[float, float] = {}
    rnd = random.Random(seed)
    load0 = os.getloadavg()
    for i in sample:
        pool = [k for j in range(c.size) if j != i for k in c.layout_keys[j] if k.blob]
        keys = rnd.sample(pool, min(heads, len(pool)))
        before = _resolve_buckets(_metrics(c.ips[i], c.metrics_port))
        client = Client(c.ips[i], c.port)
        for k in keys:
            status, seconds, _ = client.request(f"{k.path}?ns={NS}")
            lat.append(seconds * 1000)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        client.close()
        after = _resolve_buckets(_metrics(c.ips[i], c.metrics_port))
        for le, v in after.items():
            resolve[le] = resolve.get(le, 0.0) + v - before.get(le, 0.0)
    n = len(lat)
    lookups = resolve.get(float("inf"), 0.0)
    return {
        "askers": sample,
        "heads": n,
        "loadavg": [load0, os.getloadavg()],
        "status": statuses,
        "found_share": statuses.get("200", 0) / n if n else None,
        "miss_share": statuses.get("404", 0) / n if n else None,
        "head_p50_ms": pct(lat, 0.5),
        "head_p99_ms": pct(lat, 0.99),
        "head_max_ms": max(lat) if lat else None,
        "resolve_lookups": resolve.get(float("inf"), 0.0),
        "resolve_p50_le_ms": _ms(_bucket_pct(resolve, 0.5)),
        "resolve_p99_le_ms": _ms(_bucket_pct(resolve, 0.99)),
        "resolve_within_20ms": (resolve.get(0.02, 0.0) / lookups) if lookups else None,
    }


def profile(c: Cluster, seconds: int, out: Path, busy: list[int]) -> dict[str, Any]:
    """py-spy of one idle node: not the bootstrap node, not one of the ``busy`` askers if possible."""
    quiet = [i for i in range(1, c.size) if i not in busy] or list(range(c.size))
    node = c.nodes[quiet[len(quiet) // 2]]
    if pyspy.binary() is None:
        return {"error": "py-spy not found: pip install py-spy", "node": node.index}
    cpu0 = proc.cpu_seconds(node.pid)
    r = pyspy.record(node.pid, seconds, out)
    cpu = proc.cpu_seconds(node.pid) - cpu0
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-2000:], "node": node.index}
    summary = pyspy.top(out.read_text(), 5)
    rate = cpu * 1000 / seconds
    file = os.path.relpath(out, REPO)
    return {"node": node.index, "pid": node.pid, "file": file, "cpu_ms_per_s": rate, **summary}


def run_size(args: argparse.Namespace, size: int, workdir: Path, res: dict[str, Any]) -> None:
    """Measure one cluster size into ``res`` (filled as it goes: a failure keeps what was measured)."""
    group = ProcessGroup(stop_timeout=15.0)
    c = Cluster(size, args.keys, workdir, args.base_ip, group)
    res.update(nodes=size, keys_per_node=args.keys, loadavg_start=os.getloadavg())
    t_spawn0 = time.time()
    try:
        t_spawn = c.spawn()
        res["pids"] = [n.pid for n in c.nodes]
        t_ready = c.wait_ready(t_spawn + args.ready_timeout)
        res.update(spawn_s=t_spawn - t_spawn0, ready_after_spawn_s=t_ready - t_spawn)
        log(f"[{size}] all ready {t_ready - t_spawn:.1f}s after the last spawn")
        if args.find_askers > 0:  # 0: skipped (a profile-only run)
            f = findable(c, askers(size, args.find_askers), t_spawn + args.find_timeout, args.find_lanes)
            t_found = f.pop("at")
            res["findable"] = {
                **f,
                "after_spawn_s": None if t_found is None else t_found - t_spawn,
                "after_ready_s": None if t_found is None else t_found - t_ready,
            }
            log(f"[{size}] findable {res['findable']}")
        end_find = time.time()
        time.sleep(args.settle_seconds)
        res["idle"] = idle(c, args.idle_seconds)
        log(f"[{size}] idle {summary(res)['idle']}")
        if size == args.profile_size and args.profile_seconds > 0:
            out = Path(args.out).with_name(f"{Path(args.out).stem}-profile-{size}.raw")
            res["profile"] = profile(c, args.profile_seconds, out, res.get("findable", {}).get("askers", []))
        if args.askers > 0:  # 0: skipped
            res["cold"] = cold(c, askers(size, args.askers), args.heads, end_find + RESOLVE_TTL + 1, size)
            log(f"[{size}] cold {summary(res)['cold']}")
    finally:
        t_stop = time.time()
        c.stop()
        res["stop_s"] = time.time() - t_stop
        res["loadavg_end"] = os.getloadavg()
        res["wall_s"] = time.time() - t_spawn0


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """The table's row of one size (min/median/max per node where a value is per node)."""

    def spread(xs: list[float]) -> list[float] | None:
        return [min(xs), statistics.median(xs), max(xs)] if xs else None

    out: dict[str, Any] = {}
    if "idle" in res:
        i = res["idle"]
        fields = ("cpu_ms_per_s", "rss_mib", "router_conns", "router_peers_metric")
        out["idle"] = {k: spread(i[k]) for k in fields}
        # The findability askers' lookups may still run in the idle window (at 100 nodes they
        # did): the table's idle CPU is that of the nodes that never answered a bench request.
        askers = set(res.get("findable", {}).get("askers", []))
        quiet = [x for j, x in enumerate(i["cpu_ms_per_s"]) if j not in askers]
        out["idle"]["cpu_ms_per_s"] = spread(quiet or i["cpu_ms_per_s"])
        out["idle"]["cpu_ms_per_s_askers"] = spread([i["cpu_ms_per_s"][j] for j in sorted(askers)])
    if "cold" in res:
        c = res["cold"]
        out["cold"] = {k: c[k] for k in ("heads", "found_share", "miss_share", "head_p50_ms", "head_p99_ms",
                                          "resolve_p50_le_ms", "resolve_p99_le_ms")}  # fmt: skip
    return out


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, list):
        return " / ".join(fmt(v, digits) for v in x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per size; per-node values as min / median / max."""
    rows = [
        "| nodes | findable after spawn / after ready (s) | cold HEADs found (200) / 404 "
        "| HEAD p50 / p99 (ms) | resolve p50 / p99 (bucket, ms) | idle CPU per node, non-askers (ms/s) "
        "| RSS per node (MiB) | router conns per node | load avg (1 min) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = summary(r)
        f, c = r.get("findable", {}), r.get("cold", {})
        share = (f"{100 * c['found_share']:.1f} % / {100 * c['miss_share']:.1f} %"
                 if c.get("found_share") is not None else "-")  # fmt: skip
        idle_s = s.get("idle", {})
        load = [r["loadavg_start"][0], r["loadavg_end"][0]]
        rows.append(
            f"| {r['nodes']} | {fmt(f.get('after_spawn_s'))} / {fmt(f.get('after_ready_s'))} | {share} "
            f"| {fmt(c.get('head_p50_ms'))} / {fmt(c.get('head_p99_ms'))} "
            f"| {fmt(c.get('resolve_p50_le_ms'))} / {fmt(c.get('resolve_p99_le_ms'))} "
            f"| {fmt(idle_s.get('cpu_ms_per_s'))} | {fmt(idle_s.get('rss_mib'), 0)} "
            f"| {fmt(idle_s.get('router_conns'), 0)} | {fmt(load)} | {fmt(r.get('wall_s'), 0)} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,50,100", help="comma-separated cluster sizes, run in order")
    ap.add_argument("--keys", type=int, default=32, help="keys per node (tag, manifest, config, layers)")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="the quiet CPU window")
    ap.add_argument("--settle-seconds", type=float, default=10.0, help="quiet time before the CPU window")
    ap.add_argument("--find-askers", type=int, default=5, help="nodes checking findability (0: skip)")
    ap.add_argument("--find-lanes", type=int, default=4, help="HEADs in flight per findability asker")
    ap.add_argument("--askers", type=int, default=10, help="nodes sending cold HEADs, in turn (0: skip)")
    ap.add_argument("--heads", type=int, default=64, help="cold HEADs per asker (distinct keys)")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--find-timeout", type=float, default=900.0, help="seconds after the last spawn")
    ap.add_argument("--profile-size", type=int, default=0, help="py-spy one idle node at this size")
    ap.add_argument("--profile-seconds", type=int, default=30)
    ap.add_argument("--base-ip", default="127.0.1", help="node i listens on <base-ip>.<i+1>")
    ap.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--out", help="JSON result file (default: <results-dir>/scale-<UTC time>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (layouts, node logs)")
    args = ap.parse_args(argv)
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x.strip()]
    if args.keys < 4 or any(n < 2 or n > 254 for n in args.sizes):
        ap.error("--keys >= 4 and sizes in 2..254")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through run_size's finally: nodes stopped


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job inherits it ignored
        signal.signal(sig, _interrupt)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out = args.out or os.path.join(args.results_dir, f"scale-{stamp}.json")
    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "machine": runner.machine(),
                              "sizes": []}  # fmt: skip
    for size in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"scale-{size}-"))
        log(f"[{size}] {size} nodes in {workdir}")
        res: dict[str, Any] = {}
        result["sizes"].append(res)
        try:
            run_size(args, size, workdir, res)
        finally:
            runner.write_result(out, result)  # what was measured so far survives a failure
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    result["table"] = table(result["sizes"])
    runner.write_result(out, result)
    print(result["table"])
    print(f"results: {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

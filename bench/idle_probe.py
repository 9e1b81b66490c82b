"""Idle cost of a cluster of real router processes: CPU, connections and RSS per node.

    .venv/bin/python -m bench.idle_probe --nodes 40 --settle 60 --window 30 [--profile out.svg]

Starts ``--nodes`` processes, each one :class:`Libp2pRouter` with the production defaults
(refresh, bootstrap and reprovide intervals), listening on 127.0.2.<i> and bootstrapping from
the first; each advertises ``--keys`` keys. After ``--settle`` seconds it measures, over
``--window`` seconds, the CPU time (utime + stime from /proc) of every process, its established
TCP connections on the router port (``ss``) and its RSS, and prints them as JSON. ``--profile``
runs ``py-spy record`` on node 1 during the window (py-spy must be installed). For where the idle
CPU of a node goes (docs/benchmarks.md, "Idle cost (issue 10 item 2)").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

CLK = os.sysconf("SC_CLK_TCK")


async def node_main(args: argparse.Namespace) -> None:
    from spegel_py.routing.libp2p.router import Libp2pRouter

    class Static:
        async def peers(self) -> list[str]:
            return list(args.bootstrap)

    router = Libp2pRouter(
        listen_addrs=[f"/ip4/{args.ip}/tcp/4001"],
        data_dir=args.data_dir,
        registry_port=5000,
        bootstrap=Static() if args.bootstrap else None,
        alone=not args.bootstrap,
    )
    await router.start()
    await router.advertise([f"sha256:{args.ip}-{j:060d}" for j in range(args.keys)])
    print(json.dumps({"addrs": router.listen_multiaddrs()}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        with_peers = router.peer_count()
        print(json.dumps({"peers": with_peers}), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            pass
    await router.close()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def conns(ip: str) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :4001 or dport = :4001 ) and src {ip}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="idle-probe-")
    procs: list[subprocess.Popen[str]] = []
    ips = [f"127.0.2.{i + 1}" for i in range(args.nodes)]
    try:
        boot: list[str] = []
        for ip in ips:
            cmd = [sys.executable, "-m", "bench.idle_probe", "node", "--ip", ip, "--keys", str(args.keys)]
            cmd += ["--data-dir", os.path.join(tmp, ip), "--bootstrap", *boot]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if not boot:
                assert p.stdout is not None
                boot = json.loads(p.stdout.readline())["addrs"]
        time.sleep(args.settle)
        before = {p.pid: cpu_s(p.pid) for p in procs}
        t0 = time.monotonic()
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(procs[1].pid), "-d", str(int(args.window)), "-o", args.profile]
                + (["--native"] if args.native else [])
                + (["-f", "raw"] if args.profile.endswith(".txt") else []),
            )
        time.sleep(args.window)
        dt = time.monotonic() - t0
        cpu = [(cpu_s(p.pid) - before[p.pid]) / dt * 1000 for p in procs]
        if spy is not None:
            spy.wait()
        n_conn = [conns(ip) for ip in ips]
        rss = [rss_mib(p.pid) for p in procs]
        return {
            "nodes": args.nodes,
            "keys": args.keys,
            "idle_cpu_ms_per_s": {"p50": pct(cpu, 0.5), "max": max(cpu), "mean": sum(cpu) / len(cpu)},
            "conns_per_node": {"p50": pct(n_conn, 0.5), "max": max(n_conn)},
            "rss_mib": {"p50": pct(rss, 0.5), "max": max(rss)},
            "load": os.getloadavg(),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--nodes", type=int, default=40)
    r.add_argument("--keys", type=int, default=32)
    r.add_argument("--settle", type=float, default=60)
    r.add_argument("--window", type=float, default=30)
    r.add_argument("--profile")
    r.add_argument("--native", action="store_true")
    n = sub.add_parser("node")
    n.add_argument("--ip", required=True)
    n.add_argument("--keys", type=int, default=32)
    n.add_argument("--data-dir", required=True)
    n.add_argument("--bootstrap", nargs="*", default=[])
    args = ap.parse_args()
    if args.cmd == "node":
        asyncio.run(node_main(args))
    else:
        print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()

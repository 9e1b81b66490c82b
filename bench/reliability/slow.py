"""Row "slowloris": connections that never finish their head and idle keep-alive connections,
while an honest client keeps asking.

Node 2 of two real nodes (containerd holding ``test/small``). A separate process (``attack.py``) holds
``attack_slowloris`` connections trickling a head one byte a second and ``attack_idle`` idle
keep-alive connections, reconnecting whenever the server closes or refuses one. Meanwhile the
honest client opens a fresh connection every 20 ms and GETs small's manifest by digest, as
containerd would. Run twice: with the server's defaults (``--max-connections 4096``,
``--header-timeout 10s``, ``--keepalive-timeout 30s``: the cap holds the attack), and with
``--max-connections 1024``, a quarter of the attack: there every newcomer takes the slot of an
attacker, which reconnects at once, so the table shows what that churn costs an honest client.

Held to: the honest client answered (>= 99 %) with p99 under 100 ms, with the defaults.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

from . import common
from .common import Row, Scale
from .lab import REPO_ROOT, lab

HONEST_EVERY = 0.02  # seconds between honest requests
RAMP = 3.0  # seconds for the attacker to open its connections before the honest client starts
OVER_CAP = "max-connections 1024"
CONFIGS = {"defaults": [], OVER_CAP: ["--max-connections", "1024"]}


def honest_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, float]:
    """(status, seconds) of one GET on a fresh connection; status 0 if refused, reset or silent."""
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return 0, time.perf_counter() - started
                data += chunk
            while sock.recv(65536):  # the whole answer, to the close
                pass
    except OSError:
        return 0, time.perf_counter() - started
    return int(data.split()[1]), time.perf_counter() - started


def _one_config(host: str, port: int, pid: int, path: str, scale: Scale) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.reliability.attack",
        "--addr",
        f"{host}:{port}",
        "--slowloris",
        str(scale.attack_slowloris),
        "--idle",
        str(scale.attack_idle),
        "--seconds",
        str(scale.attack_seconds),
    ]
    base_fds = common.open_fds(pid)
    attacker = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(RAMP)  # pacing: let the attack build up before measuring
        stop = time.monotonic() + scale.attack_seconds - RAMP - 1
        answered: list[float] = []
        failed = 0
        peak_fds = 0
        while time.monotonic() < stop:
            status, seconds = honest_get(host, port, path)
            if status == 200:
                answered.append(seconds)
            else:
                failed += 1
            peak_fds = max(peak_fds, common.open_fds(pid))
            time.sleep(HONEST_EVERY)  # pacing of the honest client
        out, _ = attacker.communicate(timeout=scale.attack_seconds + 60)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    total = len(answered) + failed
    return {
        "honest": total,
        "answered_pct": round(100 * len(answered) / max(1, total), 1),
        "p50_ms": round(common.percentile(answered, 0.5) * 1000, 1),
        "p99_ms": round(common.percentile(answered, 0.99) * 1000, 1),
        "failed": failed,
        "fds_before": base_fds,
        "fds_peak": peak_fds,
        "attack": json.loads(out or "{}"),
    }


def run(scale: Scale) -> Row:
    results: dict[str, dict[str, Any]] = {}
    with lab(size=2) as lab_:
        node = lab_.node(2)  # it bootstraps to node 1, so it is ready again soon after a restart
        small = lab_.images.small
        node.containerd.pull(lab_.ref(small))
        path = f"/v2/{small.repository()}/manifests/{small.digest}?ns={lab_.upstream.addr}"
        original = list(node.spegel.extra_args)
        for name, args in CONFIGS.items():
            node.spegel.stop()
            node.spegel.extra_args = [*original, *args]
            node.spegel.start()
            results[name] = _one_config(node.ip, node.spegel.port, node.spegel.pid, path, scale)
            results[name]["alive"] = node.spegel.running()
    d, r = results["defaults"], results[OVER_CAP]
    row = Row(
        "slowloris",
        f"{scale.attack_slowloris:,} slowloris + {scale.attack_idle:,} idle keep-alive connections for "
        f"{scale.attack_seconds:.0f} s (reconnecting); an honest GET every 20 ms on a fresh connection",
        f"defaults: {d['answered_pct']} % of {d['honest']} honest answered, p99 {d['p99_ms']} ms, "
        f"fds peak {d['fds_peak']}, {d['attack'].get('opened', 0):,} attack connections; --{OVER_CAP}: "
        f"{r['answered_pct']} % answered, p99 {r['p99_ms']} ms, fds peak {r['fds_peak']}, "
        f"{r['attack'].get('opened', 0):,} attack connections",
        ">= 99 % honest answered, p99 < 100 ms (defaults)",
        True,
        details=results,
    )
    for name, result in results.items():
        row.check(result["alive"], f"{name}: spegel-py exited")
    row.check(d["answered_pct"] >= 99, f"defaults: only {d['answered_pct']} % of honest requests answered")
    row.check(d["p99_ms"] < 100, f"defaults: honest p99 {d['p99_ms']} ms")
    return row

"""bench/scale_bench.py at 3 nodes: it runs end to end, reports every field, leaves no process.

The lead re-runs the scale benchmark after routing changes; this keeps it from rotting. Only
the shape of the output is checked (and that every key was found, which 3 nodes on one machine
always manage); timings are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.procs import pid_alive

REPO = Path(__file__).resolve().parents[2]
SIZE = 3
HEADS = 4


@pytest.mark.process
def test_scale_bench_reports_every_field(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = [sys.executable, "-m", "bench.scale_bench", "--sizes", str(SIZE), "--keys", "6",
            "--idle-seconds", "2", "--settle-seconds", "0", "--heads", str(HEADS),
            "--profile-size", str(SIZE), "--profile-seconds", "2",
            "--results-dir", str(tmp_path), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["machine"]["loadavg_start"] and result["machine"]["loadavg_end"]
    (size,) = result["sizes"]
    assert size["nodes"] == SIZE and size["keys_per_node"] == 6
    assert len(size["pids"]) == SIZE
    assert not [pid for pid in size["pids"] if pid_alive(pid)], "nodes left running"
    for field in ("spawn_s", "ready_after_spawn_s", "stop_s", "wall_s", "loadavg_start", "loadavg_end"):
        assert size[field] is not None, field
    found = size["findable"]
    assert found["askers"] == [0, 1, 2] and found["missing"] == 0
    assert found["after_spawn_s"] >= found["after_ready_s"] >= 0
    assert found["missing_by_kind"] == {} and found["missing_owners"] == 0
    assert sum(found["first_pass"].values()) == SIZE * (SIZE - 1) * 6  # every key asked once
    idle = size["idle"]
    for field in ("cpu_ms_per_s", "rss_mib", "router_conns", "router_conns_in", "router_conns_out",
                  "router_remote_ips", "router_peers_metric"):  # fmt: skip
        assert len(idle[field]) == SIZE, field
    assert all(x >= 0 for x in idle["cpu_ms_per_s"])
    assert all(x > 10 for x in idle["rss_mib"])
    assert all(x >= 1 for x in idle["router_conns"]), idle  # every node is connected to a peer
    assert idle["router_peers_metric"] == [SIZE - 1] * SIZE
    cold = size["cold"]
    assert cold["heads"] == SIZE * HEADS == sum(cold["status"].values())
    for field in ("found_share", "miss_share", "head_p50_ms", "head_p99_ms", "resolve_lookups"):
        assert cold[field] is not None, field
    assert "resolve_p99_le_ms" in cold and "resolve_within_20ms" in cold
    profile = size["profile"]
    wanted = {"samples", "busy_samples", "wait_share", "self", "inclusive", "busy_product", "cpu_ms_per_s"}
    assert "error" in profile or wanted <= profile.keys(), profile
    rows = result["table"].splitlines()
    assert len(rows) == 3 and rows[2].startswith(f"| {SIZE} |")
    assert rows[2].count("|") == rows[0].count("|")

"""bench/rollout at CI size: 2 nodes, the 5 MiB test image, every scenario, the ways this checkout
has. It runs end to end, every pull that must complete does, the byte counts add up, and no
namespace or process is left behind. Timings are never asserted (the machine is shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.netns import list_namespaces
from harness.procs import pid_alive
from harness.require import require_cluster, require_spegel

REPO = Path(__file__).resolve().parents[2]
SMALL_BYTES = 5_312_405  # the harness's "small" image, every blob


@pytest.mark.process
@pytest.mark.timeout(600)
def test_rollout_bench_runs_every_scenario_at_two_nodes(tmp_path: Path) -> None:
    require_cluster()
    require_spegel()
    out = tmp_path / "rollout.json"
    argv = [sys.executable, "-m", "bench.rollout", "--sizes", "2", "--image", "small",
            "--subnet", "10.234.0", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    pipe = subprocess.PIPE
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=540)
        finally:
            proc.kill()  # a no-op once it has exited; its daemons die with it (PR_SET_PDEATHSIG)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    result = json.loads(out.read_text())
    # its namespaces are named after its pid (tests/harness/netns.py); others' may come and go
    ours = f"spn{proc.pid % 100000}x"
    assert not [ns for ns in list_namespaces() if ns.startswith(ours)], "namespaces left behind"
    assert result["image"] == {"kind": "small", "bytes": SMALL_BYTES, "blobs": 5}
    ways = list(result["ways"])
    assert ways[0] == "none" and "shipped" in ways
    runs = {(r["scenario"], r["way"]): r for r in result["runs"]}
    assert set(runs) == {(s, w) for s in ("all", "batches", "kill") for w in ways}
    for (scenario, way), r in runs.items():
        where = f"{scenario}/{way}"
        assert r["nodes"] == 2 and len(r["per_node"]) == 2, where
        assert r["all_ok"], (where, [p["error"] for p in r["per_node"]])
        assert r["last_done_s"] > 0, where
        # every byte upstream logged went to one of the nodes (the access log names the client)
        assert sum(p["from_upstream_bytes"] for p in r["per_node"]) == r["upstream_bytes"], where
        if scenario != "kill":  # (a killed client's socket drops what the registry had written)
            assert r["upstream_wire_bytes"] >= r["upstream_bytes"], where  # headers ride on the wire
        if scenario == "kill":
            assert r["killed"] in {"node1", "node2"}, where
            assert [p["killed"] for p in r["per_node"]].count(True) == 1, where
        else:
            assert not any(p["killed"] for p in r["per_node"]), where
        if way == "none":  # without a mirror every surviving node fetched a whole copy itself
            assert all(p["metrics"] == {} for p in r["per_node"]), where
            done = [p for p in r["per_node"] if not p["killed"]]
            assert all(p["from_upstream_bytes"] == SMALL_BYTES for p in done), where
        else:
            survivor = next(p for p in r["per_node"] if not p["killed"])
            assert 'spegel_served_bytes_total{source="local"}' in survivor["metrics"], where
    # the batches scenario starts its second node one gap later
    starts = sorted(p["start_s"] for p in runs[("batches", "none")]["per_node"])
    assert starts[1] - starts[0] >= 2.0
    rows = result["table"].splitlines()
    assert len(rows) == 2 + len(runs)
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    assert result["pids"], "no process recorded"
    assert not [pid for pid in result["pids"] if pid_alive(pid)], "processes left running"

"""The rows of docs/reliability.md at CI size, run by the same runner as the table
(``python -m bench.reliability <row> --scale ci``, ``bench/reliability``), with the invariants
asserted again here from the row's measurements: 0 answers >= 500, descriptors and relay
buffers back, resident memory within 16 MiB, every pull complete with the right digests, no
crash, re-advertisement in time, 0 bytes from outside the content store.

Each row runs in a child process that starts its own real processes (docker-registry,
containerd, ``spegel-py registry``) and stops them by pid; it dies with the test (the harness's
``run_command``). Sizes are ``bench.reliability.common.CI``: a few minutes for all rows on two
cores; the full table is ``python -m bench.reliability all --write-doc``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness.images import repo_root
from harness.procs import run_command
from harness.require import require_cluster, require_spegel

pytestmark = [pytest.mark.process, pytest.mark.timeout(900)]

MIB_KIB = 1 << 10


def load(d: dict[str, Any]) -> None:
    assert d["load"]["server_errors"] == 0, d["load"]["statuses"]
    assert d["load"]["wrong_bodies"] == []
    assert d["load"]["unanswered"] == 0
    assert d["after"]["buffers_in_use"] == 0
    assert d["after"]["fds"] <= d["baseline"]["fds"] + 1  # one may be a scrape's own socket
    assert d["after"]["rss_kib"] - d["baseline"]["rss_kib"] <= 16 * MIB_KIB


def slowloris(d: dict[str, Any]) -> None:
    for config in d.values():
        assert config["alive"]
    assert d["defaults"]["answered_pct"] >= 99
    assert d["defaults"]["p99_ms"] < 100


def hostile(d: dict[str, Any]) -> None:
    for mode, result in d.items():
        assert result["alive"], mode
        for image in ("small", "multi"):
            if image in result:
                assert result[image]["problems"] == [], (mode, image, result[image])
                assert result[image]["wrong_blobs"] == [], (mode, image)
                assert result[image]["seconds"] <= 60, (mode, image)


def containerd_restart(d: dict[str, Any]) -> None:
    assert d["same_pid"] and d["readyz"] == 200
    assert d["findable_after_pull_s"] <= 5


def sigkill(d: dict[str, Any]) -> None:
    assert d["problems"] == [] and d["wrong_blobs"] == []
    assert d["relayed_before_kill_mib"] < d["image_mib"]
    assert d["advertised_after_restart_s"] <= 30


def fuzz(d: dict[str, Any]) -> None:
    http = d["http"]
    assert http["server_errors"] == [] and http["hangs"] == [] and http["leaks"] == []
    assert http["requests"] >= 500
    assert d["atime_recorded"] and d["canaries_read"] == [] and d["touched"] == []
    assert d["wire"]["other_errors"] == [] and d["wire"]["slow"] == []


INVARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "load": load,
    "slowloris": slowloris,
    "hostile": hostile,
    "containerd-restart": containerd_restart,
    "sigkill": sigkill,
    "fuzz": fuzz,
}


@pytest.mark.parametrize("name", list(INVARIANTS))
def test_row_holds_at_ci_size(name: str, tmp_path: Path) -> None:
    require_cluster()
    require_spegel()
    out = tmp_path / "row.json"
    root = str(repo_root())
    argv = [sys.executable, "-m", "bench.reliability", name, "--scale", "ci", "--out", str(out)]
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    result = run_command(argv, timeout=850, env={"PYTHONPATH": path})
    print(result.stdout[-3000:])
    assert out.exists(), result.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    INVARIANTS[name](row["details"])
    assert row["passed"], row["problems"]
    assert result.returncode == 0, result.stderr[-3000:]

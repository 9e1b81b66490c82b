"""bench/growing_bench.py runs end to end at a tiny size and prints a row per way (no timing is
asserted: the bench must not rot between the runs whose numbers go into docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.process
def test_growing_bench_prints_every_way(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.growing_bench", "--mib", "4", "--rounds", "1", "--rate", "100",
            "--dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert rows == {"complete", "growing", "paced"}, result.stdout
    assert list(tmp_path.iterdir()) == []  # its files are removed

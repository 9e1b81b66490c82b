"""What every row shares: the result record, the two sizes, and readings of a live process.

A :class:`Row` is one line of docs/reliability.md: what was done, the figure measured, the bound
it is held to and whether it held, plus the details behind the figure (printed by the runner,
kept in the JSON result). :class:`Scale` is the knob between the full table (``FULL``, the
numbers of the issue) and the CI-sized run of ``tests/reliability`` (``CI``).

Process readings come from ``/proc`` (resident memory, open descriptors) and from the node's
own ``/metrics`` (relay buffers in use), so they are facts about the process under test, not
about the client.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster import parse_metrics


@dataclass(frozen=True)
class Scale:
    """How big a run is. ``FULL`` is the issue's table; ``CI`` keeps each row to seconds."""

    name: str
    load_connections: int
    load_requests: int
    attack_slowloris: int
    attack_idle: int
    attack_seconds: float
    fuzz_http: int
    fuzz_wire: int
    big_layer_mib: int
    # flags for the load row's nodes: at CI size the store deadline is lifted so that a busy CI
    # machine (the deadline counts the wait for the event loop) cannot turn the invariants the
    # tests check (no 500s, no leaks, no wrong bytes) into a wall-clock bar
    load_args: tuple[str, ...] = ()


FULL = Scale("full", 500, 20_000, 2_000, 2_000, 45.0, 10_000, 10_000, 110)
CI = Scale("ci", 64, 1_500, 150, 150, 14.0, 600, 1_500, 24, ("--store-timeout", "30s"))


Check = tuple[bool, str]  # ok, and the problem to record when not


@dataclass
class Row:
    """One scenario's outcome: ``figure`` is what the table shows, ``bound`` what it must meet."""

    name: str
    scenario: str
    figure: str
    bound: str
    passed: bool
    command: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    measured: str = ""  # when the row finished (UTC) and the load average then

    def check(self, ok: bool, problem: str) -> None:
        """Record ``problem`` (and fail the row) unless ``ok``."""
        if not ok:
            self.passed = False
            self.problems.append(problem)

    @classmethod
    def judged(
        cls, name: str, scenario: str, figure: str, bound: str, details: dict[str, Any], *checks: Check
    ) -> Row:
        """A row that passes unless one of ``checks`` fails."""
        row = cls(name, scenario, figure, bound, True, details=details)
        for ok, problem in checks:
            row.check(ok, problem)
        return row


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode())


def buffers_in_use(metrics_url: str) -> float:
    return metrics(metrics_url).get("spegel_relay_buffers_in_use", -1.0)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def wrong_blobs(content_path: Path) -> list[str]:
    """Blobs in a containerd content store whose bytes do not hash to their name."""
    bad = []
    for path in sorted((content_path / "blobs" / "sha256").glob("*")):
        if sha256_file(path) != "sha256:" + path.name:
            bad.append(path.name)
    return bad

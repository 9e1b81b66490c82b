"""Page-cache state of the benchmark files, through vmtouch (mincore + fadvise under the hood).

Hot runs need the blob fully cached before every run (and a server that evicts behind its send
offset would otherwise leave the next server a cold file); cold runs need it fully evicted.
"""

from __future__ import annotations

import re
import subprocess

_RESIDENT = re.compile(r"Resident Pages:\s+(\d+)/(\d+)")


def _vmtouch(*args: str) -> str:
    return subprocess.run(["vmtouch", *args], check=True, capture_output=True, text=True).stdout


def resident_fraction(paths: list[str]) -> float:
    """Fraction (0..1) of the pages of ``paths`` that are in the page cache now."""
    m = _RESIDENT.search(_vmtouch(*paths))
    if m is None:
        raise RuntimeError("unexpected vmtouch output")
    return int(m.group(1)) / max(1, int(m.group(2)))


def warm(paths: list[str]) -> None:
    """Read every page into the cache (charged to the caller's cgroup, not a server's)."""
    _vmtouch("-t", "-q", *paths)


def evict(paths: list[str]) -> None:
    _vmtouch("-e", "-q", *paths)

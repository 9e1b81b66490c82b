"""The page cache charged to this process's memory cgroup, read from ``/proc`` and ``/sys/fs/cgroup``.

Served blobs are read through the page cache, and the kernel charges those pages to the cgroup
of whoever read them first: this is what ``spegel_cgroup_page_cache_bytes`` reports (see
``spegel_py/metrics.py``), so an operator can see what page-cache eviction saves.
"""

from __future__ import annotations

from pathlib import Path


def page_cache_bytes(root: Path = Path("/")) -> float | None:
    """Bytes of page cache in this process's memory cgroup (v2 ``file``, v1 ``total_cache``), or
    None where no memory cgroup can be read. ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    try:
        lines = (root / "proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # the v2 unified hierarchy
            candidates.append((root / "sys/fs/cgroup" / relative / "memory.stat", "file"))
        elif "memory" in controllers.split(","):  # v1's memory controller
            candidates.append((root / "sys/fs/cgroup/memory" / relative / "memory.stat", "total_cache"))
    for stat, key in candidates:
        try:
            with stat.open(encoding="ascii") as f:
                for row in f:
                    name, _, value = row.partition(" ")
                    if name == key:
                        return float(value)
        except OSError:
            continue
    return None

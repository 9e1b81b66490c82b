"""CPU time and resident memory of a process tree, read from /proc.

CPU is utime + stime of every process in the tree (threads are included in a process's
``stat``), so nginx's master + workers and spegel-py + its executor threads are charged alike.
"""

from __future__ import annotations

import os
import time

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # comm may contain spaces and parentheses: split after the last ')'
    return data[data.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime, in seconds, summed over the tree under ``root``."""
    total = 0
    for pid in tree(root):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # fields 14 and 15 of stat(5): utime, stime
    return total / _CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def tree_rss_kib(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            total += memory_kib(pid).get("VmRSS", 0)
        except OSError:
            continue
    return total


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies from /proc/stat: ``{"cpu0": [user, nice, system, idle, iowait, irq,
    softirq, steal, ...]}``. With the server and client pinned, the busy share of each core tells
    whether a side was saturated, including softirq time (loopback's TCP receive work), which the
    kernel may not charge to any process."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                out[name] = [int(v) for v in values]
    return out


def busy_fractions(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Share of each CPU's time between two :func:`cpu_times` readings spent busy, in softirq
    and stolen by the hypervisor."""
    out = {}
    for cpu, b in before.items():
        d = [x - y for x, y in zip(after[cpu], b, strict=False)]
        total = sum(d[:8]) or 1
        idle = d[3] + d[4]
        out[cpu] = {
            "busy": round((total - idle - d[7]) / total, 3),
            "softirq": round(d[6] / total, 3),
            "steal": round(d[7] / total, 3),
        }
    return out


def wait_quiet(*, idle: float, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until every CPU was at least ``idle`` idle (0..1) over one ``window``; return the
    lowest per-CPU idle share seen in the last window (lower than ``idle`` on timeout).

    Other work on a small shared machine comes in bursts; starting each run in a lull keeps
    most runs clean, and the value is recorded with the run so disturbed ones stay visible.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_times()
        time.sleep(window)  # the measurement window itself
        after = cpu_times()
        lowest = min(1 - f["busy"] - f["steal"] for f in busy_fractions(before, after).values())
        if lowest >= idle or time.monotonic() > deadline:
            return round(lowest, 3)

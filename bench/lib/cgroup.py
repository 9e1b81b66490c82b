"""cgroup v1 memory accounting for one server: a child of the caller's own memory cgroup.

Page cache is charged to the cgroup of the process that first faults a page in, so a server
started inside its own group is charged for exactly the pages its reads bring in (readahead
included); pages already cached by someone else are not charged again. :class:`Sampler` polls
``memory.stat`` at a high rate to catch the peak, and ``memory.max_usage_in_bytes`` backs it up
(it is the kernel's own high-water mark of cache + rss).
"""

from __future__ import annotations

import os
import threading
import time

from bench.lib import proc

V1_ROOT = "/sys/fs/cgroup/memory"


def own_memory_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return V1_ROOT + path
    raise RuntimeError("no cgroup v1 memory controller (this benchmark needs /sys/fs/cgroup/memory)")


class MemoryCgroup:
    """A child memory cgroup: created on construction, removed by :meth:`remove`."""

    def __init__(self, name: str) -> None:
        self.path = os.path.join(own_memory_cgroup(), name)
        os.makedirs(self.path, exist_ok=True)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this cgroup from its first instruction (children follow)."""
        procs = os.path.join(self.path, "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def stat(self) -> dict[str, int]:
        out = {}
        with open(os.path.join(self.path, "memory.stat")) as f:
            for line in f:
                key, value = line.split()
                out[key] = int(value)
        return out

    def read_int(self, name: str) -> int:
        with open(os.path.join(self.path, name)) as f:
            return int(f.read())

    def reset_peak(self) -> None:
        with open(os.path.join(self.path, "memory.max_usage_in_bytes"), "w") as f:
            f.write("0")

    def remove(self) -> None:
        """Remove the (empty) group; the kernel moves its remaining charges to the parent."""
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY right after the last task exits
                time.sleep(0.05)


class Sampler(threading.Thread):
    """Polls a cgroup's cache/rss and a process tree's VmRSS; keeps maxima and the sample count."""

    def __init__(self, cgroup: MemoryCgroup | None, pids: list[int], *, interval: float) -> None:
        """``pids``: the processes whose VmRSS is summed (listed once: scanning /proc per sample
        would cost more CPU than the sampling is worth)."""
        super().__init__(name="bench-sampler", daemon=True)
        self._cg, self._pids, self._interval = cgroup, pids, interval
        self._halt = threading.Event()
        self.max_cache = 0
        self.max_rss = 0
        self.max_vmrss_kib = 0
        self.samples = 0
        self.series: list[tuple[float, int]] = []  # (seconds since start, cache bytes)
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            if self._cg is not None:
                st = self._cg.stat()
                self.max_cache = max(self.max_cache, st["total_cache"])
                self.series.append((time.perf_counter() - self._t0, st["total_cache"]))
                self.max_rss = max(self.max_rss, st["total_rss"])
            if self._pids:
                rss = 0
                for pid in self._pids:
                    try:
                        rss += proc.memory_kib(pid).get("VmRSS", 0)
                    except OSError:
                        pass
                self.max_vmrss_kib = max(self.max_vmrss_kib, rss)
            self.samples += 1
            self._halt.wait(self._interval)

    def stop(self) -> Sampler:
        self._halt.set()
        self.join(timeout=5)
        return self

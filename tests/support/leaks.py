"""What a test must not leave behind: asyncio tasks, threads and file descriptors.

``tests/conftest.py`` applies these checks to every test (an autouse fixture and a teardown
hook), so a server, a watchdog, a hash thread or a socket that a test (or the code under it)
forgets to stop fails that test instead of slowing or breaking a later one.

- Tasks: for an asyncio test, the tasks still pending on its loop once its other fixtures are
  torn down (the loop is still open then: pytest-asyncio would cancel them silently).
- Threads and fds: checked once the test's teardown is over (its loop closed, which joins the
  loop's default executor and closes its selector), against a baseline taken once the session-
  and module-scoped fixtures of the test are up, so only what the test itself started counts.
  Fds 0-2 are left out: pytest's output capture redirects them between phases.

Every check polls for :data:`GRACE` seconds before it fails: a thread that was told to stop may
need a moment to return, a cancelled task one more turn of the loop, and a closed object caught
in a reference cycle keeps its fds until the garbage collector runs (the thread and fd check
runs it once, only when it finds something). A passing test does not wait at all.

No tolerance is given for fds: they are compared by number and target, and any fd opened during
the test and still open after it is a leak.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import time
from dataclasses import dataclass

GRACE = 2.0  # seconds a check waits for stragglers to finish before it fails

# Threads that outlive a test by design: name pattern -> why they are not a leak. Empty today:
# grpc.aio's poller thread ends once its channel is collected (the check collects garbage), and
# session fixtures start their threads before a test's baseline is taken.
ALLOWED_THREADS: dict[str, str] = {}


@dataclass(frozen=True)
class Baseline:
    """What was running and open when the test began."""

    threads: frozenset[threading.Thread]
    fds: dict[int, str]


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points at (``/proc/self/fd``)."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, already closed
            continue
    return fds


def baseline() -> Baseline:
    return Baseline(frozenset(threading.enumerate()), open_fds())


def _allowed(thread: threading.Thread) -> bool:
    return any(re.fullmatch(pattern, thread.name) for pattern in ALLOWED_THREADS)


def leaked_threads(before: Baseline) -> list[threading.Thread]:
    """Threads alive now that were not alive at ``before``, less the allowed ones."""
    return [
        t for t in threading.enumerate() if t not in before.threads and t.is_alive() and not _allowed(t)
    ]


STDIO = frozenset({0, 1, 2})  # pytest's capture points these at files of its own, phase by phase


def leaked_fds(before: Baseline) -> dict[int, str]:
    """Fds open now that were not open (to the same target) at ``before``; stdio aside."""
    return {
        fd: target
        for fd, target in open_fds().items()
        if fd not in STDIO and before.fds.get(fd) != target
    }


def _describe(threads: list[threading.Thread], fds: dict[int, str]) -> str:
    parts = []
    if threads:
        parts.append("threads " + ", ".join(f"{t.name!r} (daemon={t.daemon})" for t in threads))
    if fds:
        parts.append("fds " + ", ".join(f"{fd} -> {target}" for fd, target in sorted(fds.items())))
    return "; ".join(parts)


def check_threads_and_fds(before: Baseline, *, grace: float | None = None) -> str | None:
    """``None`` once nothing new is running or open (waiting up to ``grace`` s, default
    :data:`GRACE`), else what leaked."""
    deadline = time.monotonic() + (GRACE if grace is None else grace)
    collected = False
    while True:
        threads, fds = leaked_threads(before), leaked_fds(before)
        if not threads and not fds:
            return None
        if not collected:
            # Closed objects in reference cycles (a grpc.aio channel) hold their fds and threads
            # until the collector runs; collecting only here keeps passing tests fast.
            gc.collect()
            collected = True
            continue
        if time.monotonic() >= deadline:
            return f"left behind {_describe(threads, fds)}"
        time.sleep(0.01)  # pacing the poll; the deadline bounds it


def pending_tasks(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """Tasks of the running loop that are pending, were not there at ``before`` and are not this one."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()]


async def check_tasks(before: set[asyncio.Task[object]], *, grace: float | None = None) -> str | None:
    """``None`` once no task started since ``before`` is pending (waiting up to ``grace`` s,
    default :data:`GRACE`)."""
    deadline = time.monotonic() + (GRACE if grace is None else grace)
    while True:
        tasks = pending_tasks(before)
        if not tasks:
            return None
        if time.monotonic() >= deadline:
            return "left behind pending tasks " + ", ".join(repr(t) for t in tasks)
        await asyncio.sleep(0.01)  # lets cancelled tasks finish; the deadline bounds it

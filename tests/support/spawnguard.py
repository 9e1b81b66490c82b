"""Keeps the fast lane honest: a test that starts an OS process must carry a mark saying so.

``make test-fast`` deselects tests marked ``process`` or ``integration`` (pyproject.toml's
``markers``). A test that spawns spegel-py, containerd, a registry, node or helm without one of
those marks would slip into the fast lane and make it slow or dependent on installed tools, so
``tests/conftest.py`` runs the setup and the call of every unmarked test under :func:`refuse_spawns`:
the ways a process starts (``subprocess.Popen``, which ``asyncio.create_subprocess_exec`` and
``os.popen`` use, ``os.fork``, ``os.posix_spawn``, ``os.system``, and the fork-exec that
``multiprocessing`` calls) fail the test instead. Teardown is not guarded: a session fixture's
finaliser may run after any test, and a function fixture that spawns does so in its setup.

Patching attributes costs microseconds per test, so the guard stays on for every run.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

SPAWN_MARKS = ("process", "integration")

# (owner, attribute, what a reader calls it). subprocess.Popen._execute_child is where every
# Popen (subprocess.run, asyncio's subprocess transports, os.popen) forks.
_SPAWNERS: tuple[tuple[Any, str, str], ...] = (
    (subprocess.Popen, "_execute_child", "subprocess.Popen"),
    (os, "fork", "os.fork"),
    (os, "forkpty", "os.forkpty"),
    (os, "posix_spawn", "os.posix_spawn"),
    (os, "posix_spawnp", "os.posix_spawnp"),
    (os, "system", "os.system"),
    (_posixsubprocess, "fork_exec", "_posixsubprocess.fork_exec (multiprocessing)"),
)


def spawn_marked(item: pytest.Item) -> bool:
    """Whether ``item`` declares that it may start processes."""
    return any(item.get_closest_marker(name) is not None for name in SPAWN_MARKS)


def _refuser(name: str, nodeid: str, seen: list[str]) -> Callable[..., Any]:
    def refuse(*args: object, **kwargs: object) -> Any:
        seen.append(name)
        # pytest.fail raises a BaseException: code under test that catches Exception lets it pass.
        pytest.fail(
            f"{nodeid} started a process ({name}) but is not marked "
            f"{' or '.join(SPAWN_MARKS)}: add @pytest.mark.process (or a module-level "
            "`pytestmark = pytest.mark.process`) so `make test-fast` leaves it out",
            pytrace=True,
        )

    return refuse


@contextmanager
def refuse_spawns(nodeid: str) -> Iterator[list[str]]:
    """Within the block, starting a process fails the test; yields the spawners that were called.

    The list lets the caller fail the test even when the code under test swallowed the failure
    (a spawn in a thread, or an ``except BaseException``).
    """
    seen: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for owner, attribute, name in _SPAWNERS:
            if hasattr(owner, attribute):
                patch.setattr(owner, attribute, _refuser(name, nodeid, seen))
        yield seen


@contextmanager
def guard(item: pytest.Item) -> Iterator[None]:
    """Guard one phase of ``item`` unless it is marked; fail it if a refused spawn was swallowed."""
    if spawn_marked(item):
        yield
        return
    with refuse_spawns(item.nodeid) as seen:
        yield
    if seen:
        pytest.fail(f"{item.nodeid} tried to start a process ({', '.join(seen)}) and is not marked process")

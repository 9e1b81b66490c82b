"""Fixtures for relay tests: a :class:`relaysupport.Cluster` per test, leak checks, blob bytes."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from relaysupport import Cluster


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue
    return fds


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fails a test that leaves tasks or sockets behind (checked after its other fixtures)."""
    before_fds = {fd for fd in _open_fds() if "socket:" in fd}
    current = asyncio.current_task()
    before_tasks = {t for t in asyncio.all_tasks() if t is not current}
    before_threads = set(threading.enumerate())
    yield
    current = asyncio.current_task()  # teardown runs in a task of its own
    deadline = asyncio.get_running_loop().time() + 2.0
    while True:
        tasks = {
            t for t in asyncio.all_tasks() if t is not current and t not in before_tasks and not t.done()
        }
        fds = {fd for fd in _open_fds() if "socket:" in fd} - before_fds
        # asyncio's default executor (getaddrinfo) belongs to the loop, not to the test.
        threads = {t for t in set(threading.enumerate()) - before_threads if "asyncio" not in t.name}
        if not tasks and not fds and not threads:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"leaked tasks {tasks} / sockets {fds} / threads {threads}")
        await asyncio.sleep(0.01)  # polling for teardown to finish, bounded by the deadline


@pytest.fixture
async def cluster(no_leaks: None) -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def blob() -> Callable[[int], bytes]:
    def make(size: int, seed: int = 1) -> bytes:
        return (bytes(range(256)) * (size // 256 + 1))[:size] if seed == 0 else os.urandom(size)

    return make

"""Fixtures for mirror tests: fake peers on 127.0.0.x, a mirror behind a front server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest
from mirrorsupport import Cluster


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

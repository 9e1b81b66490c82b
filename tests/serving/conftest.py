"""Fixtures for registry tests: each store kind with the same content, served by a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from regsupport import SECRET, Content, FileStore, RawClient, make_content, start_server

from spegel_py.store.base import ContentStore
from spegel_py.store.memory import MemoryStore


@pytest.fixture(params=["memory", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ContentStore, Content]:
    """Each store kind with the same content: memory (streaming path) and files (sendfile path)."""
    if request.param == "memory":
        mem = MemoryStore()
        return mem, make_content(lambda b: mem.add_blob(b).digest, lambda n, d: mem.tag(n, d) and None)
    root = tmp_path / "store"
    files = FileStore(root)
    (tmp_path / "store" / "secret").write_bytes(SECRET)  # next to the blobs dir
    (tmp_path / "secret").write_bytes(SECRET)
    return files, make_content(files.add_blob, files.tag)


@pytest.fixture
async def served(
    backend: tuple[ContentStore, Content],
) -> AsyncIterator[tuple[RawClient, Content, ContentStore]]:
    store, content = backend
    runner, client = await start_server(store)
    try:
        yield client, content, store
    finally:
        await runner.cleanup()


"""A peer asks for a blob this node is still writing: it gets it as it grows, or a cut body.

Parametrized over a memory store (the streaming path) and a store of real files that grow on
disk (the ``sendfile`` path), through a real server and a real HTTP client that reads while the
test writes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from ingestsupport import FileIngestStore, IngestStore, Writer, start
from regsupport import start_server
from support.poll import eventually

from spegel_py.httpx.headers import MIRRORED_HEADER
from spegel_py.metrics import Metrics
from spegel_py.oci.digest import Digest
from spegel_py.serving.growing import FollowBounds
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.residency import GRANULE, resident_granules
from spegel_py.store.memory import MemoryStore

PEER = {MIRRORED_HEADER: "true"}
DATA = random.Random(12).randbytes(3 * 1024 * 1024 + 17)
DIGEST = Digest.of(DATA)
PATH = f"/v2/test/small/blobs/{DIGEST}"


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> IngestStore:
    return MemoryStore() if request.param == "memory" else FileIngestStore(tmp_path / "store")


@dataclass
class Node:
    url: str
    metrics: Metrics
    session: aiohttp.ClientSession

    def serves(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        return self.metrics.registry.get_sample_value("spegel_in_progress_serves_total", labels) or 0.0


@pytest.fixture
async def node(store: IngestStore) -> AsyncIterator[Node]:
    metrics = Metrics()
    follow = FollowBounds(stall_timeout=0.5)
    runner, client = await start_server(store, metrics=metrics, ingests=store, follow=follow)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Node(f"http://{client.host}:{client.port}", metrics, session)
    finally:
        await runner.cleanup()


@dataclass
class Reader:
    """Reads a response body in the background so the test can write between reads."""

    response: aiohttp.ClientResponse
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while chunk := await self.response.content.read(64 * 1024):
            self.body += chunk

    async def has(self, count: int) -> None:
        await eventually(lambda: len(self.body) >= count, what=f"{count} bytes received")

    async def finish(self) -> None:
        assert self.task is not None
        await self.task


async def get(node: Node, headers: dict[str, str] | None = None) -> Reader:
    response = await node.session.get(node.url + PATH, headers={**PEER, **(headers or {})})
    return Reader(response).start()


async def test_a_peer_receives_the_blob_as_it_is_written(node: Node, store: IngestStore) -> None:
    writer = start(store, DIGEST, len(DATA))
    writer.write(DATA[: 1 << 20])
    reader = await get(node)
    assert reader.response.status == 200
    assert reader.response.headers["Content-Length"] == str(len(DATA))
    assert reader.response.headers["Docker-Content-Digest"] == str(DIGEST)
    await reader.has(1 << 20)
    writer.write(DATA[1 << 20 :])
    await reader.has(len(DATA) - 1)
    # Everything is written, but the last byte waits for the commit (the store checks the digest).
    assert len(reader.body) == len(DATA) - 1 and not reader.task.done()  # type: ignore[union-attr]
    writer.commit()
    await reader.finish()
    assert bytes(reader.body) == DATA
    assert node.serves("complete") == 1
    assert node.metrics.registry.get_sample_value("spegel_in_progress_served_bytes_total") == len(DATA)


async def test_a_range_waits_for_its_bytes(node: Node, store: IngestStore) -> None:
    writer = start(store, DIGEST, len(DATA))
    writer.write(DATA[:10])
    reader = await get(node, {"Range": "bytes=2000000-2099999"})
    assert reader.response.status == 206
    assert reader.response.headers["Content-Range"] == f"bytes 2000000-2099999/{len(DATA)}"
    writer.write(DATA[10:])  # never committed: a range short of the end needs no commit
    await reader.finish()
    assert bytes(reader.body) == DATA[2000000:2100000]


@pytest.mark.parametrize("ending", ["aborted", "stalled", "mismatch"])
async def test_the_body_is_cut_when_the_ingest_does_not_end_as_the_blob(
    node: Node, store: IngestStore, ending: str
) -> None:
    writer: Writer = start(store, DIGEST, len(DATA))
    half = len(DATA) // 2
    writer.write(DATA[:half])
    reader = await get(node)
    await reader.has(half)
    if ending == "aborted":
        writer.abort()
    elif ending == "mismatch":
        writer.write(bytes(len(DATA) - half))  # the right size, the wrong bytes
        writer.commit()
    # stalled: nothing more is written; the bound (0.5 s here) cuts the body
    with pytest.raises(aiohttp.ClientPayloadError):
        await reader.finish()
    assert len(reader.body) < len(DATA)
    await eventually(lambda: node.serves(ending) == 1, what=f"one serve counted as {ending}")
    assert node.serves("complete") == 0


async def test_head_promises_the_expected_size(node: Node, store: IngestStore) -> None:
    start(store, DIGEST, len(DATA)).write(DATA[:100])
    response = await node.session.head(node.url + PATH, headers=PEER)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(DATA))


async def test_only_peers_are_served_from_an_ingest(node: Node, store: IngestStore) -> None:
    """This node's own containerd is the writer: it gets the usual 404 (no relay is wired here)."""
    start(store, DIGEST, len(DATA)).write(DATA)
    response = await node.session.get(node.url + PATH)
    assert response.status == 404


async def test_without_ingests_a_peer_gets_404(store: IngestStore) -> None:
    """``--serve-in-progress=false``: the server is given no ingest source."""
    start(store, DIGEST, len(DATA)).write(DATA)
    runner, client = await start_server(store)
    try:
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"http://{client.host}:{client.port}{PATH}", headers=PEER)
            assert response.status == 404
    finally:
        await runner.cleanup()


async def test_a_write_that_stopped_growing_is_not_offered(node: Node, store: IngestStore) -> None:
    """Its writer died (the stall bound here is 0.5 s): a peer gets a 404 at once, not a body
    that would stall."""
    start(store, DIGEST, len(DATA)).write(DATA[:100])

    async def status() -> int:
        async with node.session.head(node.url + PATH, headers=PEER) as response:
            return response.status

    assert await status() == 200
    await eventually(lambda: _is(404, status()), what="a 404 once the write stalled")


async def _is(expected: int, status: Awaitable[int]) -> bool:
    return await status == expected


async def test_pages_read_for_a_peer_are_dropped_and_the_writers_pages_stay(tmp_path: Path) -> None:
    """As for complete blobs, pages this node read in to serve are advised out afterwards; pages
    the writer (containerd) put in the cache after the response started are left to it: they
    were charged to the writer, and it reads them again to unpack the layer."""
    store = FileIngestStore(tmp_path / "store")
    data = random.Random(13).randbytes(16 << 20)
    digest, half = Digest.of(data), 8 << 20
    writer = store.start_ingest(digest, len(data))
    writer.write(data[:half])
    fd = os.open(writer.data, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the first half went cold meanwhile
        if any(resident_granules(fd, half) or b"\x01"):
            pytest.skip("this filesystem keeps the pages (tmpfs?): nothing to measure")
        metrics = Metrics()
        runner, client = await start_server(
            store, metrics=metrics, ingests=store, coordinator=PageCacheCoordinator(settle=0)
        )
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                url = f"http://{client.host}:{client.port}/v2/test/small/blobs/{digest}"
                reader = Reader(await session.get(url, headers=PEER)).start()
                await reader.has(half)
                writer.write(data[half:])  # the writer's pages: resident, and not ours to drop
                writer.commit()
                await reader.finish()
        finally:
            await runner.cleanup()
        assert bytes(reader.body) == data
        granules = resident_granules(fd, len(data))
        assert granules is not None
        first, second = granules[: half // GRANULE], granules[half // GRANULE :]
        assert sum(first) == 0, f"pages read for the peer still cached: {list(first)}"
        assert all(second), f"the writer's pages were dropped: {list(second)}"
    finally:
        os.close(fd)


async def test_a_range_ahead_of_the_writer_waits_while_the_writer_moves(store: IngestStore) -> None:
    """The stall bound is about the writer: a range that starts beyond what is written waits as
    long as the write keeps growing, even longer in all than the bound."""
    writer = start(store, DIGEST, len(DATA))
    writer.write(DATA[:10])
    runner, client = await start_server(store, ingests=store, follow=FollowBounds(stall_timeout=1.0))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://{client.host}:{client.port}{PATH}"
            ranged = {**PEER, "Range": "bytes=3000000-3000099"}
            reader = Reader(await session.get(url, headers=ranged)).start()
            loop = asyncio.get_running_loop()
            began, offset = loop.time(), 10
            while loop.time() - began < 2.0:  # twice the bound, in steps well inside it
                writer.write(DATA[offset : offset + 64 * 1024])
                offset += 64 * 1024
                await asyncio.sleep(0.1)  # the writer's pace, not synchronisation
            writer.write(DATA[offset:])
            await reader.finish()
            assert bytes(reader.body) == DATA[3000000:3000100]
    finally:
        await runner.cleanup()


async def test_a_peer_that_left_between_steps_gets_no_bytes_sent_into_a_reused_descriptor(
    tmp_path: Path,
) -> None:
    """A growing blob goes out in many sendfile steps. When the peer leaves between two, the
    transport closes its descriptor and the kernel hands that number to the next socket the
    process opens: no later step may send the blob's bytes into it (they would land in another
    connection's stream)."""
    store = FileIngestStore(tmp_path / "store")
    runner, client = await start_server(store, ingests=store, follow=FollowBounds(stall_timeout=30))
    taken: list[socket.socket] = []
    try:
        writer = start(store, DIGEST, len(DATA))
        writer.write(DATA[: 1 << 20])
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            response = await session.get(f"http://{client.host}:{client.port}{PATH}", headers=PEER)
            await response.content.readexactly(1 << 20)
            response.close()  # the peer leaves; the server is waiting for the writer
        server = runner.server
        assert server is not None
        await eventually(
            lambda: all(h.transport is None for h in server.connections), what="the server saw the peer leave"
        )
        for _ in range(16):  # the freed number goes to one of these
            taken.extend(socket.socketpair())
        writer.write(DATA[1 << 20 :])
        writer.commit()
        await asyncio.sleep(0)  # a step the server would make now; checked below for a while
        for _ in range(20):
            for s in taken:
                s.setblocking(False)
                try:
                    leaked = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                raise AssertionError(f"{len(leaked)} bytes of the blob went into another socket")
            await asyncio.sleep(0.05)
    finally:
        for s in taken:
            s.close()
        await runner.cleanup()

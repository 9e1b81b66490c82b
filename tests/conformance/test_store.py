"""One ContentStore conformance suite, run against memory, OCI layout and real containerd.

Every case uses only the Protocol; adapters (``store_adapters.py``) put the same deterministic
images into each backend. The multi-arch image is "pulled for one platform" (its arm64 half is
absent) in every backend alike, so the walker's present-only contract is checked everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import pytest
from conformance.store_adapters import (
    ContainerdAdapter,
    IngestWriter,
    MemoryAdapter,
    OciLayoutAdapter,
    StoreAdapter,
)
from conformance.store_images import OCI_INDEX, OCI_MANIFEST, StoreImage, multi_arch_image, small_image
from support.poll import eventually

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Event, EventKind, IngestSource, IngestState
from spegel_py.store.walk import image_content

EVENT_TIMEOUT = 10.0  # seconds; containerd and the layout poller answer in well under a second


@pytest.fixture(
    params=[
        "memory",
        "ocilayout",
        pytest.param("containerd", marks=pytest.mark.integration),
    ]
)
async def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    made: StoreAdapter
    if request.param == "memory":
        made = MemoryAdapter()
    elif request.param == "ocilayout":
        made = OciLayoutAdapter(tmp_path / "layouts")
    else:
        node = request.getfixturevalue("containerd_node")(1)
        made = ContainerdAdapter(node, tmp_path)
    try:
        yield made
    finally:
        for writer in getattr(made, "ingests", ()):  # containerd's ctr writers, stopped by pid
            writer.close()
        await made.store.close()


@pytest.fixture
def small() -> StoreImage:
    return small_image()


@pytest.fixture
def multi() -> StoreImage:
    return multi_arch_image()


async def next_event(events: AsyncGenerator[Event, None], wanted: Callable[[Event], bool]) -> Event:
    """The first event matching ``wanted`` (others, e.g. content events, are passed over)."""
    async with asyncio.timeout(EVENT_TIMEOUT):
        async for event in events:
            if wanted(event):
                return event
    raise AssertionError("subscription ended before the expected event")


async def test_list_images(adapter: StoreAdapter, small: StoreImage, multi: StoreImage) -> None:
    assert await adapter.store.list_images() == []
    await adapter.add(small)
    await adapter.add(multi)
    images = {image.name: image for image in await adapter.store.list_images()}
    assert set(images) == {small.name, multi.name}
    for image in (small, multi):
        assert images[image.name].digest == image.root
        assert images[image.name].reference == image.reference


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com/test/small:v1", "small"),
        ("example.com/test/multi:v1", "multi"),
        ("example.com/test/small:v2", None),  # unknown tag of a known repository
        ("example.com/test/other:v1", None),  # unknown repository
        ("other.example/test/small:v1", None),  # same repository on another registry
    ],
)
async def test_resolve(
    adapter: StoreAdapter, small: StoreImage, multi: StoreImage, name: str, expected: str | None
) -> None:
    await adapter.add(small)
    await adapter.add(multi)
    if expected is None:
        with pytest.raises(ImageNotFoundError):
            await adapter.store.resolve(Reference.parse(name))
    else:
        want = {"small": small, "multi": multi}[expected].root
        assert await adapter.store.resolve(Reference.parse(name)) == want


async def test_stat_present_and_absent(adapter: StoreAdapter, multi: StoreImage) -> None:
    await adapter.add(multi)
    for digest in multi.present:
        desc = await adapter.store.stat(digest)
        assert (desc.digest, desc.size) == (digest, len(multi.blobs[digest]))
    absent = [*(set(multi.blobs) - multi.present), Digest.of(b"never stored")]
    assert len(absent) == 5
    for digest in absent:
        with pytest.raises(ContentNotFoundError):
            await adapter.store.stat(digest)
        with pytest.raises(ContentNotFoundError):
            await adapter.store.open(digest)


async def test_open_reads_the_digested_bytes(adapter: StoreAdapter, small: StoreImage) -> None:
    await adapter.add(small)
    for digest in small.present:
        async with await adapter.store.open(digest) as blob:
            assert blob.size == len(small.blobs[digest])
            assert (blob.fileno() is not None) == adapter.file_backed
            hasher = hashlib.sha256()
            async for chunk in blob.chunks():
                hasher.update(chunk)
            assert hasher.hexdigest() == digest.hex
            tail = b"".join([c async for c in blob.chunks(offset=blob.size - 10, length=5)])
            assert tail == small.blobs[digest][-10:-5]


async def test_open_blob_stays_readable_after_delete(adapter: StoreAdapter, small: StoreImage) -> None:
    await adapter.add(small)
    layer = max(small.layers, key=lambda d: len(small.blobs[d]))
    async with await adapter.store.open(layer) as blob:
        await adapter.delete(small)
        with pytest.raises(ContentNotFoundError):  # gone for every new request...
            await adapter.store.stat(layer)
        data = b"".join([chunk async for chunk in blob.chunks()])  # ...but not for this one
    assert Digest.of(data) == layer


async def test_subscribe_resync_first_then_changes(
    adapter: StoreAdapter, small: StoreImage, multi: StoreImage
) -> None:
    await adapter.add(multi)
    async with aclosing(adapter.store.subscribe()) as events:
        async with asyncio.timeout(EVENT_TIMEOUT):
            first = await anext(events)
        assert first.kind is EventKind.RESYNC
        await adapter.add(small)
        # Other events may interleave: content events, and on containerd CRI's own updates of
        # images it has just seen (labels, id aliases). The first event *about* an image counts.
        created = await next_event(events, lambda e: e.key == small.name)
        assert created == Event(EventKind.IMAGE_CREATE, small.name)
        await adapter.retag(multi, "example.com/test/multi:v2")
        tagged = await next_event(events, lambda e: e.key == "example.com/test/multi:v2")
        assert tagged == Event(EventKind.IMAGE_CREATE, "example.com/test/multi:v2")
        await adapter.delete(small)
        deleted = await next_event(events, lambda e: e.kind is EventKind.IMAGE_DELETE)
        assert deleted.key == small.name


async def test_close_ends_subscriptions(adapter: StoreAdapter) -> None:
    async def consume() -> list[Event]:
        async with aclosing(adapter.store.subscribe()) as events:
            return [event async for event in events]

    first = asyncio.create_task(consume(), name="subscriber-1")
    second = asyncio.create_task(consume(), name="subscriber-2")
    async with aclosing(adapter.store.subscribe()) as events:  # wait until one is live
        async with asyncio.timeout(EVENT_TIMEOUT):
            assert (await anext(events)).kind is EventKind.RESYNC
        await adapter.store.close()
        async with asyncio.timeout(EVENT_TIMEOUT):
            assert [e async for e in events] == []
    async with asyncio.timeout(EVENT_TIMEOUT):
        results = await asyncio.gather(first, second)
    for received in results:
        assert received in ([], [Event(EventKind.RESYNC)])


@pytest.mark.parametrize("which", ["small", "multi"])
async def test_walker_returns_exactly_present_content(
    adapter: StoreAdapter, small: StoreImage, multi: StoreImage, which: str
) -> None:
    image = {"small": small, "multi": multi}[which]
    await adapter.add(image)
    found = await image_content(adapter.store, image.root)
    assert found[0].digest == image.root
    assert found[0].media_type == (OCI_INDEX if which == "multi" else OCI_MANIFEST)
    assert {d.digest for d in found} == image.present
    assert len(found) == len(image.present)
    for desc in found:
        assert desc.size == len(image.blobs[desc.digest])
        assert desc.media_type == image.media_types[desc.digest]


async def test_walker_on_an_absent_root(adapter: StoreAdapter) -> None:
    assert await image_content(adapter.store, Digest.of(b"absent")) == []


# -- writes in progress (issue 12): listed, followed as they grow, ended by commit or abort ------
INGEST_DATA = hashlib.sha256(b"ingest").digest() * (3 * 1024 * 1024 // 32)  # 3 MiB
INGEST_DIGEST = Digest.of(INGEST_DATA)
PIECE = 1 << 20  # containerd's ctr forwards stdin in 1 MiB pieces: offsets move in those steps


async def listed(store: IngestSource, digest: Digest) -> int | None:
    """The offset of the write of ``digest`` the store lists, or None if it lists none."""
    return next((i.offset for i in await store.ingests() if i.digest == digest), None)


async def test_an_unknown_digest_has_no_write_in_progress(adapter: StoreAdapter) -> None:
    store = adapter.store
    assert isinstance(store, IngestSource)
    assert await listed(store, INGEST_DIGEST) is None
    with pytest.raises(ContentNotFoundError):
        await store.open_ingest(INGEST_DIGEST)


async def half_written(adapter: StoreAdapter) -> tuple[IngestSource, IngestWriter, int]:
    """The store, a write of 2 of its 3 MiB, and the offset the store lists for it (> 0)."""
    store = adapter.store
    assert isinstance(store, IngestSource)
    writer = adapter.start_ingest(INGEST_DIGEST, len(INGEST_DATA))
    if writer is None:
        pytest.skip("this backend has no writes in progress (its empty listing is checked above)")
    await writer.write(INGEST_DATA[: 2 * PIECE])
    offset = await eventually(lambda: listed(store, INGEST_DIGEST), what="the write listed with bytes")
    return store, writer, offset


async def test_a_write_is_followed_until_its_commit(adapter: StoreAdapter) -> None:
    store, writer, offset = await half_written(adapter)
    ingest = next(i for i in await store.ingests() if i.digest == INGEST_DIGEST)
    assert ingest.total == len(INGEST_DATA) and 0 < offset <= 2 * PIECE
    async with await store.open_ingest(INGEST_DIGEST) as blob:
        assert blob.size == len(INGEST_DATA) and blob.digest == INGEST_DIGEST
        progress = blob.progress()
        assert progress.state is IngestState.WRITING and progress.available >= PIECE
        got = b"".join([c async for c in blob.chunks(0, progress.available)])
        assert got == INGEST_DATA[: progress.available]
        await writer.write(INGEST_DATA[2 * PIECE :])
        await writer.commit()
        await eventually(lambda: blob.progress().state is IngestState.COMMITTED, what="committed")
        assert blob.progress().available == len(INGEST_DATA)
        assert b"".join([c async for c in blob.chunks(0, len(INGEST_DATA))]) == INGEST_DATA
    assert await listed(store, INGEST_DIGEST) is None
    assert (await store.stat(INGEST_DIGEST)).size == len(INGEST_DATA)


async def test_an_aborted_write_ends_as_aborted(adapter: StoreAdapter) -> None:
    store, writer, _ = await half_written(adapter)
    async with await store.open_ingest(INGEST_DIGEST) as blob:
        await writer.abort()
        await eventually(lambda: blob.progress().state is IngestState.ABORTED, what="aborted")
    assert await listed(store, INGEST_DIGEST) is None
    with pytest.raises(ContentNotFoundError):
        await store.open_ingest(INGEST_DIGEST)
    with pytest.raises(ContentNotFoundError):
        await store.stat(INGEST_DIGEST)

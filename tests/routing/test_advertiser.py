"""The advertiser keeps a router announcing exactly what a store can serve (MemoryStore + MemoryRouter).

What another node sees is checked through a second router's ``lookup``; the advertiser's own
``advertised()`` is checked against the exact expected key set (nothing extra, nothing missing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from conformance.store_images import StoreImage, multi_arch_image, small_image
from support import poll

from spegel_py.errors import RoutingError
from spegel_py.oci.filters import RegistryFilter
from spegel_py.routing.advertiser import AdvertisedCounts, Advertiser
from spegel_py.routing.base import Router, RouterView
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter
from spegel_py.store.base import ContentStore
from spegel_py.store.memory import MemoryStore

WITHIN = 5.0  # seconds: every condition below is met in milliseconds; this only bounds a failure


eventually = partial(poll.eventually, within=WITHIN, interval=0.005)  # this module's bound and pace


def add(store: MemoryStore, image: StoreImage, name: str | None = None) -> None:
    """Store an image's present blobs and tag it, as a pull would (content first, then the image)."""
    for digest in image.present:
        store.add_blob(image.blobs[digest], image.media_types[digest])
    store.tag(name or image.name, image.root)


def keys_of(image: StoreImage, name: str | None = None) -> set[str]:
    ref = StoreImage(name or image.name, image.root, image.root_media_type).reference
    tag = {f"{ref.name}:{ref.tag}"} if ref.tag else set()
    return {str(d) for d in image.present} | tag


@dataclass
class Node:
    store: ContentStore
    advertiser: Advertiser
    router: Router
    observer: Router  # another node of the same network, to look keys up from outside
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.advertiser.run(), name="advertiser")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def providers(self, key: str) -> list[str]:
        return [peer.peer_id async for peer in self.observer.lookup(key)]

    async def advertised_by_me(self, key: str) -> bool:
        return "advertiser" in await self.providers(key)


@contextlib.asynccontextmanager
async def running(store: ContentStore, **options: object) -> AsyncIterator[Node]:
    network = MemoryNetwork()
    router = MemoryRouter(network, peer_id="advertiser", host="10.0.0.1")
    observer = MemoryRouter(network, peer_id="observer", host="10.0.0.2")
    node = Node(store, Advertiser(store, router, **options), router, observer)  # type: ignore[arg-type]
    node.start()
    try:
        yield node
    finally:
        await node.stop()
        await router.close()
        await observer.close()


async def test_initial_sync_advertises_every_present_blob_and_tag() -> None:
    store = MemoryStore()
    small, multi = small_image(), multi_arch_image()
    add(store, small)
    add(store, multi)
    async with running(store) as node:
        expected = keys_of(small) | keys_of(multi)
        await eventually(lambda: node.advertiser.advertised() == expected)
        # The arm64 half of the index was never pulled: none of it is announced.
        absent = set(multi.blobs) - multi.present
        assert absent and not {str(d) for d in absent} & node.advertiser.advertised()
        for key in ("example.com/test/small:v1", str(small.root), str(next(iter(multi.present)))):
            assert await node.advertised_by_me(key), key


async def test_pull_after_start_is_advertised() -> None:
    """A pull's content events wait for a long debounce; its image event cuts that short."""
    store = MemoryStore()
    async with running(store, content_debounce=60.0) as node:
        await eventually(lambda: node.advertiser.batches >= 1)
        assert node.advertiser.advertised() == frozenset()
        small = small_image()
        add(store, small)
        await eventually(lambda: node.advertiser.advertised() == keys_of(small))
        assert await node.advertised_by_me("example.com/test/small:v1")


async def test_image_delete_withdraws_its_keys_but_not_shared_ones() -> None:
    store = MemoryStore()
    small = small_image()
    add(store, small)
    add(store, small, "example.com/other/copy:v2")  # same content under a second name
    multi = multi_arch_image()
    add(store, multi)
    async with running(store) as node:
        both = keys_of(small) | keys_of(small, "example.com/other/copy:v2") | keys_of(multi)
        await eventually(lambda: node.advertiser.advertised() == both)
        store.delete_image(multi.name)
        remaining = keys_of(small) | keys_of(small, "example.com/other/copy:v2")
        await eventually(lambda: node.advertiser.advertised() == remaining)
        assert await node.providers(multi.name.rpartition(":")[0] + ":v1") == []
        store.delete_image(small.name)
        await eventually(lambda: node.advertiser.advertised() == keys_of(small, "example.com/other/copy:v2"))
        assert "example.com/test/small:v1" not in node.advertiser.advertised()


async def test_moved_tag_keeps_the_tag_key_and_moves_the_digests() -> None:
    store = MemoryStore()
    old, new = small_image(seed=1), small_image(seed=2)
    add(store, old)
    async with running(store) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(old))
        for digest in new.present:
            store.add_blob(new.blobs[digest], new.media_types[digest])
        store.tag(old.name, new.root)  # the tag moves; the old content is now unreferenced
        await eventually(lambda: node.advertiser.advertised() == keys_of(new))
        assert "example.com/test/small:v1" in node.advertiser.advertised()
        assert not {str(d) for d in old.present} & node.advertiser.advertised()


async def test_blobs_collected_without_events_are_withdrawn_on_recheck() -> None:
    """containerd's GC deletes blobs after an image delete without content-delete events."""
    store = MemoryStore()
    small, multi = small_image(), multi_arch_image()
    add(store, small)
    add(store, multi)
    async with running(store, recheck_after=(0.05, 0.2)) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(small) | keys_of(multi))
        layer = small.layers[0]
        # Simulate containerd GC: the blob vanishes with no event (MemoryStore has no API for that).
        store._blobs.pop(layer)
        store.delete_image(multi.name)  # the event that schedules re-checks
        expected = keys_of(small) - {str(layer)}
        await eventually(lambda: node.advertiser.advertised() == expected)


async def test_content_delete_event_withdraws_the_blob() -> None:
    store = MemoryStore()
    small = small_image()
    add(store, small)
    async with running(store) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(small))
        layer = small.layers[0]
        store.delete_blob(layer)
        await eventually(lambda: node.advertiser.advertised() == keys_of(small) - {str(layer)})
        # the root manifest goes too: neither the tag nor the image's blobs are reachable any more
        store.delete_blob(small.root)
        await eventually(lambda: node.advertiser.advertised() == frozenset())


async def test_second_platform_pulled_later_is_advertised() -> None:
    """Pulling another platform of an index re-creates the same image record (an update event,
    same root): the new manifest and layers become servable and are announced."""
    store = MemoryStore()
    multi = multi_arch_image()
    add(store, multi)
    async with running(store, recheck_after=()) as node:  # no re-checks: the event alone must do it
        await eventually(lambda: node.advertiser.advertised() == keys_of(multi))
        for digest in set(multi.blobs) - multi.present:
            store.add_blob(multi.blobs[digest], multi.media_types[digest])
        store.tag(multi.name, multi.root)
        everything = {str(d) for d in multi.blobs} | {multi.name}
        await eventually(lambda: node.advertiser.advertised() == everything)


async def test_content_without_an_image_event_is_found_by_the_periodic_resync() -> None:
    store = MemoryStore()
    multi = multi_arch_image()
    add(store, multi)
    async with running(store, resync_interval=0.3) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(multi))
        for digest in set(multi.blobs) - multi.present:  # e.g. `ctr content fetch`: no image event
            store.add_blob(multi.blobs[digest], multi.media_types[digest])
        everything = {str(d) for d in multi.blobs} | {multi.name}
        await eventually(lambda: node.advertiser.advertised() == everything)


async def test_tag_without_its_root_is_not_advertised() -> None:
    store = MemoryStore()
    small = small_image()
    store.tag(small.name, small.root)  # an image record whose content never arrived
    async with running(store) as node:
        await eventually(lambda: node.advertiser.batches >= 1)
        assert node.advertiser.advertised() == frozenset()
        for digest in small.present:  # content arrives later: now it can be served
            store.add_blob(small.blobs[digest], small.media_types[digest])
        await eventually(lambda: node.advertiser.advertised() == keys_of(small))


async def test_digest_only_image_advertises_content_without_a_tag() -> None:
    store = MemoryStore()
    small = small_image()
    name = f"example.com/test/small@{small.root}"
    add(store, small, name)
    async with running(store) as node:
        await eventually(lambda: node.advertiser.advertised() == {str(d) for d in small.present})
        assert node.advertiser.counts() == {
            "example.com": AdvertisedCounts(images=1, image_tags=0, image_digests=1, content_digests=4)
        }


@pytest.mark.parametrize(
    ("mirrored", "filters", "shared"),
    [
        ([], [], {"a", "b", "c"}),
        (["https://example.com"], [], {"a", "b"}),
        ([], [":latest$"], {"a", "c"}),
        ([], ["^example\\.com/"], {"c"}),
        (["https://example.com", "http://127.0.0.1:5000"], ["team"], {"a", "b"}),
        (["https://nowhere.example"], [], set()),
    ],
)
async def test_registry_filters(mirrored: list[str], filters: list[str], shared: set[str]) -> None:
    images = {
        "a": small_image("example.com/test/small:v1", seed=1),
        "b": small_image("example.com/test/app:latest", seed=2),
        "c": small_image("127.0.0.1:5000/team/tool:1.0", seed=3),
    }
    store = MemoryStore()
    for image in images.values():
        add(store, image)
    rf = RegistryFilter.from_flags(mirrored_registries=mirrored, registry_filters=filters)
    async with running(store, registry_filter=rf) as node:
        expected: set[str] = set()
        for label in shared:
            expected |= keys_of(images[label])
        await eventually(lambda: node.advertiser.batches >= 1)
        assert node.advertiser.advertised() == expected


async def test_filtered_image_sharing_a_root_with_a_shared_one() -> None:
    """Filtering a name withdraws its tag, never content another (shared) image still needs."""
    store = MemoryStore()
    small = small_image()
    add(store, small)
    add(store, small, "example.com/test/small:latest")
    rf = RegistryFilter.from_flags(registry_filters=[":latest$"])
    async with running(store, registry_filter=rf) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(small))


async def test_counts_per_registry() -> None:
    store = MemoryStore()
    a, b = small_image("example.com/x/a:1", seed=1), small_image("example.com/x/b:1", seed=2)
    c = multi_arch_image("127.0.0.1:5000/y/c:1")
    for image in (a, b, c):
        add(store, image)
    add(store, a, "example.com/x/a:2")  # same content, second tag: digests counted once
    async with running(store) as node:
        await eventually(
            lambda: (
                node.advertiser.advertised()
                == keys_of(a) | keys_of(b) | keys_of(c) | keys_of(a, "example.com/x/a:2")
            )
        )
        assert node.advertiser.counts() == {
            "example.com": AdvertisedCounts(images=3, image_tags=3, image_digests=0, content_digests=8),
            "127.0.0.1:5000": AdvertisedCounts(
                images=1, image_tags=1, image_digests=0, content_digests=len(c.present)
            ),
        }


async def test_a_burst_of_events_is_one_batch() -> None:
    store = MemoryStore()
    async with running(store, debounce=0.2) as node:
        await eventually(lambda: node.advertiser.batches == 1)
        images = [small_image(f"example.com/burst/i{i}:v1", seed=100 + i) for i in range(20)]
        for image in images:
            add(store, image)  # ~100 events in one go
        expected: set[str] = set()
        for image in images:
            expected |= keys_of(image)
        await eventually(lambda: node.advertiser.advertised() == expected)
        assert node.advertiser.batches == 2


class FailsFirstAdvertise(RouterView):
    """A router whose first ``advertise`` fails (an outage), then delegates."""

    def __init__(self, router: Router) -> None:
        super().__init__(router)
        self.failed = False

    def ready(self) -> bool:
        return True

    async def advertise(self, keys: Iterable[str]) -> None:
        if not self.failed:
            self.failed = True
            raise RoutingError("router unavailable")
        await super().advertise(keys)


async def test_applied_batches_report_their_duration_and_images() -> None:
    """``on_batch`` once per applied batch (not for the failed one); ``images()`` lists what is shared."""
    store = MemoryStore()
    small = small_image()
    add(store, small)
    add(store, small, "example.com/test/small:latest")  # filtered out below
    router = MemoryRouter(MemoryNetwork(), peer_id="advertiser", host="10.0.0.1")
    durations: list[float] = []
    advertiser = Advertiser(
        store,
        FailsFirstAdvertise(router),
        registry_filter=RegistryFilter.from_flags(registry_filters=[":latest$"]),
        retry_interval=0.01,
        on_batch=durations.append,
    )
    task = asyncio.create_task(advertiser.run(), name="advertiser")
    try:
        await eventually(lambda: advertiser.advertised() == keys_of(small))
        assert advertiser.failures == 1
        assert len(durations) == advertiser.batches == 1
        assert 0 <= durations[0] < WITHIN
        assert advertiser.images() == [(small.name, small.root)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await router.close()


async def test_resync_after_events_were_lost() -> None:
    """A RESYNC (the store reconnected) reconciles both ways: stale keys go, missed ones come."""
    store = MemoryStore()
    small, multi = small_image(), multi_arch_image()
    add(store, small)
    async with running(store) as node:
        await eventually(lambda: node.advertiser.advertised() == keys_of(small))
        await node.stop()
        # While nothing listened: one image went, another came.
        store.delete_image(small.name)
        add(store, multi)
        node.start()  # a new subscription starts with RESYNC
        await eventually(lambda: node.advertiser.advertised() == keys_of(multi))
        assert await node.providers(small.name) == []
        assert await node.advertised_by_me(multi.name)


@pytest.mark.integration
async def test_follows_a_real_containerd(containerd_node: Callable[..., object], tmp_path: Path) -> None:
    """Imports, a second tag and deletes on a real containerd 1.6 (ctr), seen through its events."""
    from conformance.store_adapters import ContainerdAdapter

    ctrd = ContainerdAdapter(containerd_node(1), tmp_path)
    small, multi = small_image(), multi_arch_image()
    await ctrd.add(small)  # present before the advertiser starts: found by the initial sync
    try:
        async with running(ctrd.store, recheck_after=(0.5, 2.0)) as node:
            await eventually(lambda: node.advertiser.advertised() == keys_of(small), within=20)
            await ctrd.add(multi)  # a pull while running: content events, then the image event
            both = keys_of(small) | keys_of(multi)
            await eventually(lambda: node.advertiser.advertised() == both, within=20)
            await ctrd.retag(small, "example.com/test/small:v2")
            await eventually(lambda: "example.com/test/small:v2" in node.advertiser.advertised(), within=20)
            await ctrd.delete(multi)  # removes the image, then GC removes its blobs (no content events)
            expected = keys_of(small) | {"example.com/test/small:v2"}
            await eventually(lambda: node.advertiser.advertised() == expected, within=20)
            assert await node.providers(multi.name) == []
            assert await node.advertised_by_me(str(small.layers[0]))
            assert node.advertiser.counts() == {
                "example.com": AdvertisedCounts(
                    images=2, image_tags=2, image_digests=0, content_digests=len(small.present)
                )
            }
    finally:
        await ctrd.store.close()


@pytest.mark.integration
async def test_recovers_when_containerd_restarts(
    containerd_node: Callable[..., object], tmp_path: Path
) -> None:
    """While containerd is down batches fail and are retried; once it is back the subscription
    yields RESYNC and what changed meanwhile is advertised."""
    from conformance.store_adapters import ContainerdAdapter

    ctrd = ContainerdAdapter(containerd_node(1), tmp_path)
    small, multi = small_image(), multi_arch_image()
    await ctrd.add(small)
    try:
        async with running(ctrd.store, retry_interval=0.2, resync_interval=0.3) as node:
            await eventually(lambda: node.advertiser.advertised() == keys_of(small), within=20)
            await asyncio.to_thread(ctrd.node.stop)
            await eventually(lambda: node.advertiser.failures > 0, within=20)  # a resync hit the outage
            assert node.advertiser.advertised() == keys_of(small)  # a failure withdraws nothing
            await asyncio.to_thread(ctrd.node.start)
            await ctrd.add(multi)
            both = keys_of(small) | keys_of(multi)
            await eventually(lambda: node.advertiser.advertised() == both, within=30)
            assert node.task is not None and not node.task.done()
    finally:
        await ctrd.store.close()

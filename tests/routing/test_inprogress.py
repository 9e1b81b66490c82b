"""In-progress records: advertised while a blob is pulled, kept after its commit until the blob
is advertised normally, withdrawn on abort; and the relay's lookup that finds them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from support.poll import eventually

from spegel_py.errors import RoutingError
from spegel_py.oci.digest import Digest
from spegel_py.routing.base import Peer, in_progress_key
from spegel_py.routing.inprogress import InProgressAdvertiser
from spegel_py.routing.inprogresslookup import InProgressLookup
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter
from spegel_py.store.memory import MemoryStore

DATA = b"layer bytes " * 1000
DIGEST = Digest.of(DATA)
KEY = in_progress_key(str(DIGEST))


@dataclass
class Node:
    store: MemoryStore
    advertiser: InProgressAdvertiser
    observer: MemoryRouter
    settled: set[str]
    counts: list[int]

    async def providers(self, key: str) -> list[str]:
        return [peer.peer_id async for peer in self.observer.lookup(key)]

    async def settle(self) -> None:
        """Wait for two more rounds: everything noted before this call has been applied."""
        target = self.advertiser.rounds + 2
        await eventually(lambda: self.advertiser.rounds >= target)


@contextlib.asynccontextmanager
async def running(*, linger: float = 600.0, stall: float = 600.0) -> AsyncIterator[Node]:
    network = MemoryNetwork()
    router = MemoryRouter(network, peer_id="puller")
    observer = MemoryRouter(network, peer_id="observer")
    store = MemoryStore()
    settled: set[str] = set()
    counts: list[int] = []
    advertiser = InProgressAdvertiser(
        store, store, router, settled=lambda: settled, interval=0.01, linger=linger, stall=stall,
        on_count=counts.append,
    )
    task = asyncio.create_task(advertiser.run(), name="in-progress-advertiser")
    try:
        yield Node(store, advertiser, observer, settled, counts)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await router.close()
        await observer.close()


async def test_a_pull_is_advertised_under_its_own_key_never_the_digest() -> None:
    async with running() as node:
        node.store.start_ingest(DIGEST, len(DATA))
        await eventually(lambda: node.advertiser.advertised() == {KEY})
        assert await node.providers(KEY) == ["puller"]
        assert await node.providers(str(DIGEST)) == []
        assert node.counts[-1] == 1


async def test_an_aborted_pull_is_withdrawn() -> None:
    async with running() as node:
        node.store.start_ingest(DIGEST, len(DATA)).abort()  # may end before the first round
        ingest = node.store.start_ingest(DIGEST, len(DATA))
        await eventually(lambda: node.advertiser.advertised() == {KEY})
        ingest.abort()
        await eventually(lambda: node.advertiser.advertised() == frozenset())
        assert await node.providers(KEY) == []
        assert node.counts[-1] == 0


async def test_a_committed_blob_keeps_its_record_until_it_is_advertised_normally() -> None:
    async with running() as node:
        ingest = node.store.start_ingest(DIGEST, len(DATA))
        await eventually(lambda: node.advertiser.advertised() == {KEY})
        ingest.write(DATA)
        ingest.commit()
        await node.settle()
        assert node.advertiser.advertised() == {KEY}  # a peer waiting on this node still finds it
        node.settled.add(str(DIGEST))  # the image arrived: the Advertiser has the digest now
        await eventually(lambda: node.advertiser.advertised() == frozenset())


async def test_a_committed_blob_lingers_at_most_its_bound() -> None:
    async with running(linger=0.05) as node:
        ingest = node.store.start_ingest(DIGEST, len(DATA))
        await eventually(lambda: node.advertiser.advertised() == {KEY})
        ingest.write(DATA)
        ingest.commit()
        await eventually(lambda: node.advertiser.advertised() == frozenset())


async def test_a_pull_that_stopped_growing_is_withdrawn_until_it_grows_again() -> None:
    async with running(stall=0.2) as node:
        ingest = node.store.start_ingest(DIGEST, len(DATA))
        ingest.write(DATA[:100])
        await eventually(lambda: node.advertiser.advertised() == {KEY})
        await eventually(lambda: node.advertiser.advertised() == frozenset(), what="withdrawn once stalled")
        ingest.write(DATA[100:200])  # containerd resumed the write
        await eventually(lambda: node.advertiser.advertised() == {KEY}, what="advertised again")


# -- the lookup -------------------------------------------------------------------------------
@pytest.fixture
async def network() -> AsyncIterator[tuple[MemoryNetwork, InProgressLookup]]:
    network = MemoryNetwork()
    asking = MemoryRouter(network, peer_id="asking")
    try:
        yield network, InProgressLookup(asking)
    finally:
        await asking.close()


def provider(network: MemoryNetwork, name: str, *keys: str) -> Peer:
    router = MemoryRouter(network, peer_id=name, host=f"10.0.0.{len(name)}")
    for key in keys:
        network.add(key, name)
    return router.peer


async def found(lookup: InProgressLookup, key: str, limit: int = 3) -> list[str]:
    return [peer.peer_id async for peer in lookup.lookup(key, limit=limit)]


async def test_pullers_are_not_asked_for_when_holders_are_found(
    network: tuple[MemoryNetwork, InProgressLookup],
) -> None:
    net, lookup = network
    provider(net, "pulling", KEY)
    provider(net, "holding", str(DIGEST))
    provider(net, "both", str(DIGEST), KEY)  # a committed blob whose in-progress record lingers
    assert await found(lookup, str(DIGEST)) == ["holding", "both"]
    assert await found(lookup, str(DIGEST), limit=1) == ["holding"]


class SlowRouter(MemoryRouter):
    """A router whose lookups of ``slow`` keys answer only after ``delay`` seconds (a DHT query
    that has to ask other nodes)."""

    def __init__(self, network: MemoryNetwork, slow: str, delay: float) -> None:
        super().__init__(network, peer_id="asking")
        self.slow, self.delay = slow, delay

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        if key == self.slow:
            await asyncio.sleep(self.delay)  # the remote query's latency, not synchronisation
        async for peer in super().lookup(key, limit=limit):
            yield peer


async def test_pullers_are_asked_for_when_no_holder_is_found_within_the_grace() -> None:
    net = MemoryNetwork()
    provider(net, "pulling", KEY)
    provider(net, "holding", str(DIGEST))  # found only after 0.3 s: later than the grace
    router = SlowRouter(net, str(DIGEST), 0.3)
    try:
        assert await found(InProgressLookup(router, grace=0.01), str(DIGEST)) == ["pulling", "holding"]
    finally:
        await router.close()


async def test_a_puller_is_found_when_nobody_holds_the_blob(
    network: tuple[MemoryNetwork, InProgressLookup],
) -> None:
    net, lookup = network
    provider(net, "pulling", KEY)
    assert await found(lookup, str(DIGEST)) == ["pulling"]


async def test_tags_are_looked_up_as_they_are(network: tuple[MemoryNetwork, InProgressLookup]) -> None:
    net, lookup = network
    provider(net, "tagged", "example.com/app:v1", in_progress_key("example.com/app:v1"))
    assert await found(lookup, "example.com/app:v1") == ["tagged"]


class FailingRouter(MemoryRouter):
    def __init__(self, network: MemoryNetwork, failing: set[str]) -> None:
        super().__init__(network, peer_id="asking")
        self.failing = failing

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        if key in self.failing:
            raise RoutingError(f"lookup of {key} failed")
        async for peer in super().lookup(key, limit=limit):
            yield peer


async def test_one_failed_lookup_is_an_empty_one_both_failed_is_an_error() -> None:
    net = MemoryNetwork()
    provider(net, "pulling", KEY)
    router = FailingRouter(net, {str(DIGEST)})
    try:
        assert await found(InProgressLookup(router), str(DIGEST)) == ["pulling"]
        router.failing.add(KEY)
        with pytest.raises(RoutingError):
            await found(InProgressLookup(router), str(DIGEST))
    finally:
        await router.close()


async def test_an_expected_pull_is_advertised_without_waiting_for_the_poll() -> None:
    network = MemoryNetwork()
    router = MemoryRouter(network, peer_id="puller")
    store = MemoryStore()
    advertiser = InProgressAdvertiser(store, store, router, interval=3600.0)  # one look, then none
    task = asyncio.create_task(advertiser.run(), name="in-progress-advertiser")
    try:
        await eventually(lambda: advertiser.rounds == 1)
        store.start_ingest(DIGEST, len(DATA))
        advertiser.expect_ingest()
        await eventually(lambda: advertiser.advertised() == {KEY}, within=5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await router.close()

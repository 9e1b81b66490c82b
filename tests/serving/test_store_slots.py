"""Many requests at once against a store that answers only a few calls at a time.

The reliability suite's load row (500 busy connections on a loaded machine) got 503s from a
store that was answering: every request's store deadline started at once and ran while the
calls queued (for the event loop, for containerd). RegistryServer lets ``store_concurrency``
calls run at once and starts the deadline when a call gets its turn, so mere load never turns
into a 5xx; a store that really does not answer still gives a 503 (test_resilience.py).
"""

from __future__ import annotations

import asyncio

from regsupport import start_server

from spegel_py.oci.digest import Digest
from spegel_py.store.memory import MemoryBlob, MemoryStore

CAPACITY = 4  # calls the store answers at once
CALL = 0.02  # seconds per call: 400 requests through 4 at a time take 2 s, over the 1 s deadline
REQUESTS = 400


class CongestedStore(MemoryStore):
    """A MemoryStore whose ``open`` answers at most CAPACITY calls at a time, CALL seconds each;
    the rest wait inside the call, as behind a busy containerd."""

    def __init__(self) -> None:
        super().__init__()
        self._turns = asyncio.Semaphore(CAPACITY)
        self.inside = 0
        self.most_inside = 0

    async def open(self, digest: Digest) -> MemoryBlob:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            async with self._turns:
                await asyncio.sleep(CALL)  # the store's own service time, not synchronisation
                return await super().open(digest)
        finally:
            self.inside -= 1


async def test_load_beyond_the_store_capacity_is_served_without_a_5xx() -> None:
    store = CongestedStore()
    blob = store.add_blob(b"layer" * 100)
    runner, client = await start_server(store, store_timeout=1.0, store_concurrency=CAPACITY)
    try:
        answers = await asyncio.gather(
            *(client.request("GET", f"/v2/x/blobs/{blob.digest}", within=120) for _ in range(REQUESTS))
        )
    finally:
        await runner.cleanup()
    statuses = sorted({answer.status for answer in answers})
    assert statuses == [200], statuses
    assert store.most_inside <= CAPACITY  # the rest waited for their turn off the deadline

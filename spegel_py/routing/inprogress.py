"""Advertise the blobs this node is still pulling, under their in-progress key (issue 12, item 1).

A node that is fetching a blob from upstream can already serve it to its peers as it grows
(``spegel_py/serving/growing.py``). So that peers find it, each active ingest of the store is
advertised under :func:`~spegel_py.routing.base.in_progress_key` of its expected digest, never
under the digest itself: the digest's key promises a complete blob, which Go Spegel nodes relay
without resuming (the reason is written next to ``in_progress_key`` in ``routing/base.py``).
The keys are disjoint from the :class:`~spegel_py.routing.advertiser.Advertiser`'s, so the two
never withdraw each other's records.

Ingests have no events (containerd publishes none for writes), so the store's listing is polled
every ``interval``, and every 20 ms for a while when a pull is expected here
(:meth:`InProgressAdvertiser.expect_ingest`). When an ingest ends, the blob is asked of the store
once: committed, it keeps its in-progress record (peers still waiting on this node find it, and
are served the complete blob by the normal path) until the image it belongs to is advertised
normally (its digest is in ``settled()``: the record has turned into a normal one) or ``linger``
passed; aborted, the record is withdrawn at once. An ingest that has not grown for ``stall`` (its
writer died; containerd keeps the partial file for the next pull to resume) is withdrawn too, and
advertised again if it grows. Remote records cannot be deleted, only left to expire; a peer that
asks this node for a blob it no longer has gets a 404 and moves on (lookups are hints).

The listing carries no image name, so ``--registry-filters`` cannot be applied here: the digest
of a blob being pulled for an excluded image is advertised too (its bytes are not served for the
excluded image: the registry's filters still apply to every request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection

from spegel_py.errors import NotFoundError, RoutingError, StoreUnavailableError
from spegel_py.oci.digest import Digest
from spegel_py.routing.base import Router, in_progress_key
from spegel_py.store.base import ContentStore, IngestSource

log = logging.getLogger(__name__)

# Most ingests advertised at once: a node pulls a few layers at a time (containerd's CRI default
# is 3 per image), so this bounds the records a misbehaving store could make us publish.
MAX_ADVERTISED = 256
# Seconds between looks at the ingests while a pull is expected (:meth:`expect_ingest`).
FAST_INTERVAL = 0.02


class InProgressAdvertiser:
    """Keeps ``router`` advertising the in-progress key of every blob ``ingests`` is writing.

    ``store`` tells whether an ended ingest was committed. ``settled()``: the keys advertised
    normally (the :class:`~spegel_py.routing.advertiser.Advertiser`'s). Options (seconds):
    ``interval`` between looks at the store's ingests; ``linger`` how long a committed blob keeps
    its in-progress record at most; ``stall`` how long an ingest may go without growing before
    its record is withdrawn (the serving side cuts a response after the same time).
    ``on_count(n)`` is called with the number of in-progress keys advertised after each round
    (the ``spegel_in_progress_advertised`` gauge).
    """

    def __init__(
        self,
        ingests: IngestSource,
        store: ContentStore,
        router: Router,
        *,
        settled: Callable[[], Collection[str]] = frozenset,
        interval: float = 0.25,
        linger: float = 600.0,
        stall: float = 10.0,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        self._ingests = ingests
        self._store = store
        self._router = router
        self._settled = settled
        self._interval = interval
        self._linger = linger
        self._stall = stall
        self._growth: dict[str, tuple[int, float]] = {}  # active digest -> (offset, when it last moved)
        self._on_count = on_count
        self._active: frozenset[str] = frozenset()  # expected digests of the ingests last listed
        self._lingering: dict[str, float] = {}  # committed digest -> loop time its record ends
        self._advertised: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._fast_until = 0.0  # loop time until which the ingests are looked at every FAST_INTERVAL
        self.rounds = 0  # rounds applied (tests wait on it instead of sleeping)
        self.failures = 0  # rounds that failed (store or router unavailable)

    def advertised(self) -> frozenset[str]:
        """The in-progress keys announced now."""
        return self._advertised

    async def run(self) -> None:
        """Follow the store's ingests until cancelled; a failed round is retried at the next one.

        Nothing is withdrawn on the way out: the router stops reproviding when it closes, and
        the records expire at the peers (as every record of a node that stops does)."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                await self.step()
            except (StoreUnavailableError, RoutingError, TimeoutError) as exc:
                self.failures += 1
                log.warning("advertising in-progress blobs failed: %s", exc)
            fast = loop.time() < self._fast_until
            with contextlib.suppress(TimeoutError):  # a poll (ingests have no events), or woken
                await asyncio.wait_for(self._wake.wait(), FAST_INTERVAL if fast else self._interval)

    def expect_ingest(self, seconds: float = 2.0) -> None:
        """A pull is about to start on this node (e.g. its mirror just sent containerd upstream):
        look at the ingests now and every :data:`FAST_INTERVAL` for ``seconds``, so that peers
        waiting for it find its in-progress record within tens of milliseconds."""
        self._fast_until = max(self._fast_until, asyncio.get_running_loop().time() + seconds)
        self._wake.set()

    async def step(self) -> None:
        """One round: list the ingests, then advertise and withdraw the difference."""
        now = asyncio.get_running_loop().time()
        listed = {str(ingest.digest): ingest.offset for ingest in await self._ingests.ingests()}
        active = frozenset(listed)
        growth = {}
        for digest, offset in listed.items():
            previous = self._growth.get(digest)
            growth[digest] = previous if previous is not None and previous[0] == offset else (offset, now)
        self._growth = growth
        growing = {digest for digest, (_, moved) in growth.items() if now - moved < self._stall}
        for digest in self._active - active:
            if await self._committed(digest):
                self._lingering[digest] = now + self._linger
        self._active = active
        settled = self._settled()
        for digest, until in list(self._lingering.items()):
            if digest in active or digest in settled or until <= now:
                del self._lingering[digest]
        digests = sorted(growing | self._lingering.keys())[:MAX_ADVERTISED]
        desired = frozenset(in_progress_key(digest) for digest in digests)
        added = desired - self._advertised
        removed = self._advertised - desired
        if added:
            await self._router.advertise(sorted(added))
            self._advertised |= added
        if removed:
            await self._router.withdraw(sorted(removed))
        self._advertised = desired
        self.rounds += 1
        if self._on_count is not None:
            self._on_count(len(desired))

    async def _committed(self, digest: str) -> bool:
        try:
            await self._store.stat(Digest.parse(digest))
        except NotFoundError:
            return False  # aborted (or collected already)
        return True

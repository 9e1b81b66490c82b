"""Keep the router's advertisements equal to what this node's content store can serve.

Keys are Spegel's: every present blob digest of every image (index, manifests, config, the
layers actually pulled) and every tag reference ``registry/repository:tag``. The advertiser
holds the set it has announced and, after each change, announces the additions and withdraws
the removals (a set difference), so a moved tag keeps its tag key while its digests change.

Why it re-lists instead of trusting events: containerd's garbage collector deletes blobs
without content-delete events, a pull emits a burst of content events before its image event,
and a reconnect may lose events (the store then yields ``RESYNC``). So events only say *that*
something changed; every batch re-lists the images (one cheap call), re-walks the images that
are new, named in an image event, moved to another root or lost a blob, and bursts are
debounced into one batch. After an image delete or update the whole node is re-checked a few
times (containerd's GC runs after the event), and periodically anyway, so nothing stays
advertised that the node can no longer serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from spegel_py.errors import RoutingError, StoreUnavailableError
from spegel_py.oci.digest import Digest
from spegel_py.oci.filters import RegistryFilter
from spegel_py.routing.base import Router
from spegel_py.store.base import ContentStore, Descriptor, Event, EventKind, Image
from spegel_py.store.walk import image_content

log = logging.getLogger(__name__)

Walk = Callable[[ContentStore, Digest], Awaitable[list[Descriptor]]]

_MAX_RECHECKS = 16  # pending re-check times; deletes in a storm coalesce into these
_WALK_CONCURRENCY = 8  # images walked at once: containerd answers stats in parallel


@dataclass(frozen=True, slots=True)
class AdvertisedCounts:
    """What one registry contributes to the advertisement (the ``spegel_advertised_*`` gauges).

    ``images`` = ``image_tags`` (tagged images) + ``image_digests`` (images named by digest only);
    ``content_digests`` counts distinct blob digests of that registry's images.
    """

    images: int = 0
    image_tags: int = 0
    image_digests: int = 0
    content_digests: int = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    """One image as last walked: its root, and the keys it contributes (none when filtered)."""

    root: Digest
    registry: str
    shared: bool  # passes the registry filter
    tag_key: str | None
    digests: frozenset[str]

    @property
    def keys(self) -> frozenset[str]:
        return (self.digests | {self.tag_key}) if self.tag_key is not None else self.digests


@dataclass(slots=True)
class _Pending:
    """Changes noted since the last batch."""

    full: bool = False  # re-walk every image
    images: set[str] = field(default_factory=set)  # names in image events: re-walk these
    content_created: set[str] = field(default_factory=set)
    content_deleted: set[str] = field(default_factory=set)

    def any(self) -> bool:
        return self.full or bool(self.images or self.content_created or self.content_deleted)

    def urgent(self) -> bool:
        """Anything but created content alone (a pull in progress, whose image event will follow)."""
        return self.full or bool(self.images or self.content_deleted)

    def merge(self, other: _Pending) -> None:
        self.full |= other.full
        self.images |= other.images
        self.content_created |= other.content_created
        self.content_deleted |= other.content_deleted


class Advertiser:
    """Follows a :class:`ContentStore` and keeps a :class:`Router` advertising exactly its content.

    Options (keyword-only, seconds): ``debounce`` how long a batch collects events after the
    first one (bounds the delay too); ``content_debounce`` the same for batches of created content
    alone (a pull in progress: its image event follows and cuts the wait to ``debounce``);
    ``recheck_after`` delays after an image delete/update at which everything is re-walked, to
    catch blobs collected without events; ``resync_interval`` how often everything is re-walked
    regardless; ``retry_interval`` the wait after the store or router failed.
    ``registry_filter`` selects the images that are shared; ``walk`` lists an image's present blobs.
    ``on_batch(seconds)`` is called after each batch applied (images listed, changed ones walked,
    keys advertised and withdrawn) with the seconds it took; failed batches are counted in
    :attr:`failures` instead.
    """

    def __init__(
        self,
        store: ContentStore,
        router: Router,
        *,
        registry_filter: RegistryFilter | None = None,
        debounce: float = 0.1,
        content_debounce: float = 1.0,
        recheck_after: Sequence[float] = (2.0, 10.0, 30.0, 120.0),
        resync_interval: float = 600.0,
        retry_interval: float = 5.0,
        walk: Walk = image_content,
        on_batch: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._router = router
        self._filter = registry_filter or RegistryFilter()
        self._debounce = debounce
        self._content_debounce = content_debounce
        self._recheck_after = tuple(recheck_after)
        self._resync_interval = resync_interval
        self._retry_interval = retry_interval
        self._walk = walk
        self._on_batch = on_batch
        self._entries: dict[str, _Entry] = {}
        self._advertised: frozenset[str] = frozenset()
        self._pending = _Pending()
        self._rechecks: list[float] = []  # heap of loop times
        self._wake = asyncio.Event()
        self._ended = False
        self._batches = 0
        self._failures = 0

    # -- observation ----------------------------------------------------------------------------
    def advertised(self) -> frozenset[str]:
        """Every key currently announced through the router."""
        return self._advertised

    @property
    def batches(self) -> int:
        """How many batches were applied successfully (tests wait on it rather than sleeping)."""
        return self._batches

    @property
    def failures(self) -> int:
        """How many batches failed (store or router unavailable) and were retried."""
        return self._failures

    def images(self) -> list[tuple[str, Digest]]:
        """Name and root digest of every image whose content is advertised, sorted by name."""
        return sorted((name, entry.root) for name, entry in self._entries.items() if entry.digests)

    def counts(self) -> dict[str, AdvertisedCounts]:
        """Per-registry counts of what is advertised, for the ``spegel_advertised_*`` gauges."""
        tags: dict[str, int] = {}
        by_digest: dict[str, int] = {}
        digests: dict[str, set[str]] = {}
        for entry in self._entries.values():
            if not entry.digests:
                continue
            bucket = tags if entry.tag_key is not None else by_digest
            bucket[entry.registry] = bucket.get(entry.registry, 0) + 1
            digests.setdefault(entry.registry, set()).update(entry.digests)
        return {
            registry: AdvertisedCounts(
                images=tags.get(registry, 0) + by_digest.get(registry, 0),
                image_tags=tags.get(registry, 0),
                image_digests=by_digest.get(registry, 0),
                content_digests=len(blobs),
            )
            for registry, blobs in digests.items()
        }

    # -- running --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the store until its subscription ends (store closed) or this task is cancelled."""
        self._ended = False  # run() may be called again after a cancel: a fresh subscription
        self._wake.clear()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(), name="advertiser-events")
            group.create_task(self._loop(), name="advertiser-apply")

    async def _follow(self) -> None:
        events = self._store.subscribe()
        try:
            async for event in events:
                self._note(event)
        finally:
            self._ended = True
            self._wake.set()
            # A cancelled run() ends the subscription (its stream) now, not at garbage collection.
            # The Protocol types subscribe() as an AsyncIterator, so aclose() is looked up.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _note(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.RESYNC:
            self._pending.full = True
        elif kind is EventKind.CONTENT_CREATE:
            self._pending.content_created.add(event.key)
        elif kind is EventKind.CONTENT_DELETE:
            self._pending.content_deleted.add(event.key)
        else:
            self._pending.images.add(event.key)
            if kind in (EventKind.IMAGE_DELETE, EventKind.IMAGE_UPDATE):
                self._schedule_rechecks()
        self._wake.set()

    def _schedule_rechecks(self) -> None:
        now = asyncio.get_running_loop().time()
        for delay in self._recheck_after:
            due = now + delay
            # Coalesce: a re-check already due within the debounce window covers this one.
            if any(abs(t - due) <= max(self._debounce, 0.5) for t in self._rechecks):
                continue
            if len(self._rechecks) >= _MAX_RECHECKS:
                break
            heapq.heappush(self._rechecks, due)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self._resync_interval
        while True:
            now = loop.time()
            due = min(next_resync, self._rechecks[0]) if self._rechecks else next_resync
            if not self._pending.any() and not self._ended:
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, due - now))
                except TimeoutError:
                    pass
            if self._ended:
                return
            self._wake.clear()
            now = loop.time()
            while self._rechecks and self._rechecks[0] <= now:
                heapq.heappop(self._rechecks)
                self._pending.full = True
            if now >= next_resync:
                self._pending.full = True
                next_resync = now + self._resync_interval
            if not self._pending.any():
                continue
            await self._gather_burst()
            batch, self._pending = self._pending, _Pending()
            started = loop.time()
            try:
                await self._apply(batch)
            except (StoreUnavailableError, RoutingError) as exc:
                self._failures += 1
                log.warning("advertising failed, retrying in %.1fs: %s", self._retry_interval, exc)
                self._pending.merge(batch)
                await self._pause(self._retry_interval)
                continue
            if self._on_batch is not None:
                self._on_batch(loop.time() - started)

    async def _gather_burst(self) -> None:
        """Let a burst (a pull's content events, then its image event) gather into one batch.

        Content-only batches wait ``content_debounce``; an image event cuts that to ``debounce``.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        content_only = not self._pending.urgent()
        deadline = start + (self._content_debounce if content_only else self._debounce)
        while (remaining := deadline - loop.time()) > 0 and not self._ended:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return
            if content_only and self._pending.urgent():
                content_only = False
                deadline = min(deadline, start + self._debounce)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (events keep accumulating meanwhile), or less if the store closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._ended and loop.time() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())

    # -- one batch ------------------------------------------------------------------------------
    async def _apply(self, batch: _Pending) -> None:
        images = {image.name: image for image in await self._store.list_images()}
        todo: list[Image] = []
        for name, image in images.items():
            old = self._entries.get(name)
            if (
                batch.full
                or name in batch.images  # an update may mean new content under the same root
                or old is None
                or old.root != image.digest
                or not old.digests.isdisjoint(batch.content_deleted)
                # created content can complete an image whose root was missing; other images that
                # gain blobs without an image event are caught by re-checks and periodic resyncs
                or (batch.content_created and old.shared and not old.digests)
            ):
                todo.append(image)
        walked = await self._walk_all(todo)
        entries = {name: self._entries[name] for name in images if name in self._entries}
        entries.update(walked)
        desired: set[str] = set()
        for entry in entries.values():
            desired |= entry.keys
        added = desired - self._advertised
        removed = self._advertised - desired
        if added:
            await self._router.advertise(sorted(added))
        # Advertised but not yet withdrawn counts as advertised if withdraw fails: retry covers it.
        self._advertised = self._advertised | added
        if removed:
            await self._router.withdraw(sorted(removed))
        self._advertised = frozenset(desired)
        self._entries = entries
        self._batches += 1
        if added or removed:
            log.info("advertising %d keys (+%d -%d)", len(desired), len(added), len(removed))

    async def _walk_all(self, images: list[Image]) -> dict[str, _Entry]:
        def shared(image: Image) -> bool:
            ref = image.reference
            return self._filter.allows(ref.registry, ref.repository, ref.tag)

        roots = list({image.digest for image in images if shared(image)})  # a shared root walks once
        limit = asyncio.Semaphore(_WALK_CONCURRENCY)

        async def walk(root: Digest) -> frozenset[str]:
            async with limit:
                return frozenset(str(d.digest) for d in await self._walk(self._store, root))

        # return_exceptions: every walk finishes before a failure is raised, so none is left behind.
        results = await asyncio.gather(*(walk(root) for root in roots), return_exceptions=True)
        content: dict[Digest, frozenset[str]] = {}
        for root, result in zip(roots, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            content[root] = result
        out: dict[str, _Entry] = {}
        for image in images:
            ref = image.reference
            digests = content[image.digest] if shared(image) else frozenset()
            # A tag is servable only if its root manifest or index is present.
            tag_key = f"{ref.name}:{ref.tag}" if ref.tag is not None and digests else None
            out[image.name] = _Entry(image.digest, ref.registry, shared(image), tag_key, digests)
        return out

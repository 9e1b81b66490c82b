"""``InProgressLookup``: a :class:`~spegel_py.routing.base.Router` whose lookup of a digest also
finds the nodes that are still pulling it (issue 12, item 1).

A node advertises a blob it is fetching under the blob's in-progress key
(:func:`~spegel_py.routing.base.in_progress_key`, ``spegel_py/routing/inprogress.py``), never
under the digest's own key, which Go Spegel nodes read as "complete here". So a spegel-py relay
that asks for a digest nobody holds looks up its in-progress key too: a node still pulling it
is the fallback when no node has it.

The in-progress key is looked up only when the digest's lookup has not found a holder within
a short grace (5 ms) or ended without one, so a blob the cluster holds costs one lookup as
before (in a settled cluster the node's own records answer at once). It is not left until the
digest's lookup ends: the relay answers 404 when a lookup yields nothing within
``--mirror-resolve-timeout`` (20 ms by default, so that containerd goes upstream without
delay), and a lookup that misses runs until the DHT query ends, so a lookup started only then
would mostly come too late. Once both run, holders found are handed out before pullers. Tag
keys are passed through unchanged.

Wrapping keeps the relay unchanged (``app.py`` wraps the router it hands to the relay when
``--serve-in-progress`` is on); each of the two lookups still goes through the wrapped router.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer, Router, RouterView, in_progress_key

_DONE = 2  # rank of a lookup's end marker: after every provider already queued
# Seconds the digest's lookup has to find a holder before the in-progress key is looked up too.
# A holder is found in well under this from the node's own records when the cluster has one.
GRACE = 0.005


class InProgressLookup(RouterView):
    """Delegates to ``router``; a digest's lookup also yields the providers of its in-progress key."""

    def __init__(self, router: Router, *, grace: float = GRACE) -> None:
        super().__init__(router)
        self._grace = grace

    def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        if not key.startswith(("sha256:", "sha512:")):
            return self._router.lookup(key, limit=limit)
        return self._either(key, limit)

    async def _either(self, digest: str, limit: int) -> AsyncIterator[Peer]:
        """Providers of ``digest``, and of its in-progress key when the digest's lookup has found
        no holder within ``grace`` (or ended without one); each peer once, at most ``limit``.

        A failed lookup counts as an empty one unless both fail (then the first error is
        raised, as the wrapped router would have raised it).
        """
        queue: asyncio.PriorityQueue[tuple[int, int, Peer | None]] = asyncio.PriorityQueue()
        order = itertools.count()
        errors: list[BaseException] = []

        async def feed(rank: int, key: str) -> None:
            peers = self._router.lookup(key, limit=limit)
            try:
                async for peer in peers:
                    queue.put_nowait((rank, next(order), peer))
            except (RoutingError, OSError) as exc:
                errors.append(exc)
            finally:
                queue.put_nowait((_DONE, next(order), None))
                close = getattr(peers, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

        tasks = [asyncio.create_task(feed(0, digest), name=f"lookup {digest}")]

        def fall_back() -> None:
            key = in_progress_key(digest)
            tasks.append(asyncio.create_task(feed(1, key), name=f"lookup {key}"))

        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + self._grace
        yielded: set[Peer] = set()
        ended = 0
        try:
            while ended < len(tasks) and len(yielded) < limit:
                waiting = len(tasks) == 1 and not yielded  # no holder yet, pullers not asked yet
                if waiting and queue.empty() and loop.time() >= grace_ends:
                    fall_back()
                    continue
                timeout = grace_ends - loop.time() if waiting else None
                try:
                    _, _, peer = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    continue  # the grace is over: the next turn falls back
                if peer is None:
                    ended += 1
                    if waiting:  # the digest's lookup ended with no holder
                        fall_back()
                elif peer not in yielded:
                    yielded.add(peer)
                    yield peer
            if not yielded and len(errors) == len(tasks):
                raise errors[0]
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


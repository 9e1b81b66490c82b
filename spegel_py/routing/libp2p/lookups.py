"""Lookups shared between callers: one network query per key at a time, results kept briefly.

The mirror asks for the same digest many times in a burst (every layer request of every pull),
so, as Spegel does, a lookup in flight is joined rather than repeated (single flight) and its
result is reused for ``cache_ttl`` seconds. Callers see peers as the query finds them. Empty
results are not cached: a key advertised a moment later must be findable at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from spegel_py.routing.base import Peer


class Flight:
    """One query's providers, appended by the query and read by any number of callers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.peers: list[Peer] = []
        self.done = False
        self.finished_at = 0.0
        self._changed = asyncio.Event()

    def add(self, peer: Peer) -> None:
        if not self.done:
            self.peers.append(peer)
            self._wake()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.finished_at = time.monotonic()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, limit: int) -> AsyncIterator[Peer]:
        i = 0
        while i < limit:
            if i < len(self.peers):
                yield self.peers[i]
                i += 1
            elif self.done:
                return
            else:
                await self._changed.wait()


class LookupCache:
    """Single flight + short cache; ``start(key, limit)`` launches a query feeding a :class:`Flight`."""

    def __init__(
        self, start: Callable[[str, Flight], None], *, ttl: float, max_entries: int = 10_000
    ) -> None:
        self._start = start
        self._ttl = ttl
        self._max = max_entries
        self._flights: dict[str, Flight] = {}

    def get(self, key: str, limit: int) -> Flight:
        flight = self._flights.get(key)
        if flight is not None and self._usable(flight, limit):
            return flight
        if len(self._flights) >= self._max:
            self._prune()
        flight = Flight(limit)
        self._flights[key] = flight  # joined by concurrent callers; dropped by _prune when stale
        self._start(key, flight)
        return flight

    def peek(self, key: str, limit: int) -> Flight | None:
        """A running or fresh flight that can serve ``limit`` peers, or None."""
        flight = self._flights.get(key)
        return flight if flight is not None and self._usable(flight, limit) else None

    def put(self, key: str, peers: list[Peer]) -> None:
        """Cache a result found without a query (the node's own records)."""
        if self._ttl <= 0:
            return
        if len(self._flights) >= self._max:
            self._prune()
        flight = Flight(len(peers))
        flight.peers = list(peers)
        flight.finish()
        self._flights[key] = flight

    def _usable(self, flight: Flight, limit: int) -> bool:
        if not flight.done:
            return flight.limit >= limit
        fresh = time.monotonic() - flight.finished_at < self._ttl
        # a query that stopped at its own limit may have more to give a caller asking for more
        return (
            fresh and bool(flight.peers) and (len(flight.peers) >= limit or len(flight.peers) < flight.limit)
        )

    def _prune(self) -> None:
        now = time.monotonic()
        for key, flight in list(self._flights.items()):
            if flight.done and now - flight.finished_at >= self._ttl:
                del self._flights[key]
        while len(self._flights) >= self._max:  # still full of live entries: drop the oldest
            del self._flights[next(iter(self._flights))]

    def clear(self) -> None:
        self._flights.clear()

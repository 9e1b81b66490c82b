"""Lookup sharing in the libp2p router: single flight, a short cache, peers as they are found."""

from __future__ import annotations

import asyncio

from spegel_py.routing.base import Peer
from spegel_py.routing.libp2p.lookups import Flight, LookupCache

A, B, C = (Peer(peer_id=p, host=f"10.0.0.{i}", port=5000) for i, p in enumerate("abc", start=1))


class Queries:
    """A fake network side: records every query started and lets the test feed it."""

    def __init__(self) -> None:
        self.started: list[tuple[str, Flight]] = []

    def __call__(self, key: str, flight: Flight) -> None:
        self.started.append((key, flight))


async def collect(flight: Flight, limit: int) -> list[Peer]:
    return [p async for p in flight.follow(limit)]


async def test_concurrent_lookups_of_a_key_share_one_query() -> None:
    queries = Queries()
    cache = LookupCache(queries, ttl=5.0)
    first = asyncio.create_task(collect(cache.get("k", 3), 3))
    second = asyncio.create_task(collect(cache.get("k", 2), 2))
    assert len(queries.started) == 1
    _, flight = queries.started[0]
    flight.add(A)
    flight.add(B)
    flight.finish()
    assert await first == [A, B]
    assert await second == [A, B]


async def test_peers_are_yielded_as_the_query_finds_them() -> None:
    queries = Queries()
    cache = LookupCache(queries, ttl=5.0)
    it = cache.get("k", 3).follow(3)
    _, flight = queries.started[0]
    flight.add(A)
    assert await asyncio.wait_for(anext(it), 1) == A  # before the query has finished
    flight.add(B)
    assert await asyncio.wait_for(anext(it), 1) == B
    flight.finish()
    assert [p async for p in it] == []


async def test_results_are_reused_briefly_but_empty_results_are_not() -> None:
    queries = Queries()
    cache = LookupCache(queries, ttl=60.0)
    cache.get("found", 1)
    cache.get("missing", 1)
    (_, found), (_, missing) = queries.started
    found.add(C)
    found.finish()
    missing.finish()
    assert await collect(cache.get("found", 1), 1) == [C]  # cached: no new query
    cache.get("missing", 1)  # a key advertised a moment later must be findable: new query
    assert [k for k, _ in queries.started] == ["found", "missing", "missing"]


async def test_a_bigger_limit_than_the_cached_query_had_starts_a_new_one() -> None:
    queries = Queries()
    cache = LookupCache(queries, ttl=60.0)
    cache.get("k", 1)
    _, flight = queries.started[0]
    flight.add(A)  # stopped at its limit of 1: there may be more providers
    flight.finish()
    cache.get("k", 3)
    assert len(queries.started) == 2


async def test_zero_ttl_disables_the_cache() -> None:
    queries = Queries()
    cache = LookupCache(queries, ttl=0.0)
    cache.get("k", 1)
    _, flight = queries.started[0]
    flight.add(A)
    flight.finish()
    cache.get("k", 1)
    assert len(queries.started) == 2

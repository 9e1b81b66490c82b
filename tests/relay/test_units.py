"""Buffer pool, peer health and range parsing on their own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from relaysupport import Cluster, digest_of

from spegel_py.errors import BufferPoolExhaustedError
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.peerhealth import PeerHealth
from spegel_py.routing.base import Peer


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (bounded: a few hundred loop iterations)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("condition never held")


async def test_pool_exhaustion_waits_then_recovers() -> None:
    pool = BufferPool(count=2, size=4096)
    first = await pool.acquire(max_wait=1)
    second = await pool.acquire(max_wait=1)
    assert (pool.in_use, pool.allocated) == (2, 2)
    waiter = asyncio.create_task(pool.acquire(max_wait=5))
    await until(lambda: pool.waits_total == 1)  # the waiter is queued
    assert not waiter.done()
    pool.release(first)
    third = await asyncio.wait_for(waiter, 1)
    assert third is first  # the same buffer, reused, no new allocation
    assert (pool.in_use, pool.allocated) == (2, 2)
    pool.release(second)
    pool.release(third)
    assert pool.in_use == 0


async def test_pool_exhaustion_times_out_and_loses_nothing() -> None:
    pool = BufferPool(count=1, size=4096)
    held = await pool.acquire()
    with pytest.raises(BufferPoolExhaustedError):
        await pool.acquire(max_wait=0.01)
    cancelled = asyncio.create_task(pool.acquire(max_wait=5))
    await until(lambda: pool.waits_total == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pool.release(held)
    assert pool.timeouts_total == 1 and pool.in_use == 0
    async with pool.buffer(max_wait=0.01) as buf:
        assert len(buf) == 4096 and pool.in_use == 1
    assert pool.in_use == 0 and pool.allocated == 1


async def test_spare_buffers_leave_some_free_and_never_pass_a_waiter() -> None:
    pool = BufferPool(count=8, size=4096)
    first = await pool.acquire()
    spare = pool.take_spare(10, keep_free=2)
    assert len(spare) == 5 and pool.free == 2 and pool.allocated == 6
    assert pool.take_spare(1, keep_free=2) == []
    rest = [await pool.acquire(), await pool.acquire()]
    waiter = asyncio.create_task(pool.acquire(max_wait=5))
    await until(lambda: pool.waits_total == 1)
    assert pool.take_spare(1, keep_free=0) == []  # none free while a stream waits
    for buf in spare:
        pool.release(buf)  # the first goes to the waiter
    again = pool.take_spare(8, keep_free=0)
    assert len(again) == 4 and pool.free == 0
    for buf in [first, *rest, await waiter, *again]:
        pool.release(buf)
    assert pool.in_use == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_peer_health_forgets_misses_and_avoidance_in_time() -> None:
    clock = Clock()
    health = PeerHealth(miss_ttl=5, avoid_ttl=60, clock=clock)
    a, b = Peer("a", "127.0.0.2", 5000), Peer("b", "127.0.0.3", 5000)
    health.record_miss(a, "k1")
    assert not health.usable(a, "k1") and health.usable(a, "k2") and health.usable(b, "k1")
    clock.now += 5.01
    assert health.usable(a, "k1")
    health.record_corruption(b)
    assert not health.usable(b, "k1") and not health.usable(b, "k2") and health.avoided(b)
    clock.now += 60.01
    assert health.usable(b, "k1") and not health.avoided(b)
    health.record_miss(a, "k3")
    health.record_success(a, "k3")
    assert health.usable(a, "k3")


def test_peer_health_skips_a_down_peer_for_every_key_until_it_expires_or_serves() -> None:
    clock = Clock()
    health = PeerHealth(down_ttl=10, clock=clock)
    a, b = Peer("a", "127.0.0.2", 5000), Peer("b", "127.0.0.3", 5000)
    health.record_down(a)
    assert health.down(a) and not health.usable(a, "k1") and not health.usable(a, "k2")
    assert health.usable(b, "k1") and not health.down(b)
    clock.now += 10.01
    assert health.usable(a, "k1") and not health.down(a)
    health.record_down(a)
    health.record_success(a, "k1")  # it answered after all: back at once
    assert health.usable(a, "k2")
    assert health.downs_total == 2


def test_peer_health_is_bounded() -> None:
    health = PeerHealth(max_entries=3, clock=Clock())
    peer = Peer("a", "127.0.0.2", 5000)
    for key in ("k1", "k2", "k3", "k4"):
        health.record_miss(peer, key)
    assert health.usable(peer, "k1")  # the oldest miss was forgotten
    assert not health.usable(peer, "k4")


async def test_peer_client_evicts_an_idle_connection_when_at_its_bound(cluster: Cluster) -> None:
    from spegel_py.relay.peerclient import PeerClient

    a = await cluster.peer({digest_of(b"x"): b"x"})
    b = await cluster.peer({digest_of(b"x"): b"x"})
    client = PeerClient(max_connections=1)
    try:
        for peer in (a.peer, b.peer, a.peer):
            resp = await client.request(
                peer, "GET", f"/v2/r/blobs/{digest_of(b'x')}", {}, dial_timeout=1, first_byte_timeout=1
            )
            assert resp.status == 200
            assert await resp.read_all(limit=10, stall_timeout=1) == b"x"
            resp.release()
            assert client.open_connections == 1
        assert client.dials_total == 3
    finally:
        await client.close()
    assert client.open_connections == 0

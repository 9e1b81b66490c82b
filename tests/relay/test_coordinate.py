"""Pull coordination in the mirror's miss path: won (404 at once), waited (relayed from the winner),
timed out (404 after the bound), a gone winner handed over, an unreachable rendezvous."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from relaysupport import Cluster, FakeRouter, Front, digest_of
from support.poll import eventually

from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.coordinate import CoordinationSettings, Outcome, PullCoordinator, WinnerFirst
from spegel_py.relay.mirror import Mirror
from spegel_py.relay.peerclient import PeerClient
from spegel_py.routing.base import Peer
from spegel_py.routing.memoryclaims import ClaimNetwork, MemoryRendezvous

BIG = 1024 * 1024 + 7  # streamed through the pool (64 KiB buffers in tests), not buffered whole


async def coordinated_mirror(
    cluster: Cluster, rendezvous: MemoryRendezvous, outcomes: list[Outcome], **bounds: float
) -> Front:
    """A mirror with no providers (every lookup misses) whose misses are coordinated."""
    client = PeerClient()
    settings = CoordinationSettings(**{"wait": 5.0, "poll_interval": 0.02, **bounds})
    coordinator = PullCoordinator(rendezvous, client, settings, on_outcome=outcomes.append)
    pool = BufferPool(count=8, size=64 * 1024)
    mirror = Mirror(FakeRouter(), client=client, pool=pool, coordinator=coordinator)
    front = Front(mirror)
    await front.start()
    cluster.mirrors.append(mirror)
    cluster.fronts.append(front)
    cluster.pools.append(pool)
    return front


async def status_of(cluster: Cluster, front: Front, digest: str) -> tuple[int, bytes]:
    async with cluster.session().get(f"{front.url}/v2/library/app/blobs/{digest}?ns=docker.io") as resp:
        return resp.status, await resp.read()


async def test_the_winner_answers_404_and_a_waiter_streams_from_it(
    cluster: Cluster, blob: Callable[[int], bytes]
) -> None:
    data = blob(BIG)
    digest = digest_of(data)
    winner = await cluster.peer({digest: data}, missing=True)  # its containerd has not started yet
    net = ClaimNetwork()
    outcomes: list[Outcome] = []
    first = await coordinated_mirror(cluster, net.join(winner.peer), outcomes)
    second = await coordinated_mirror(cluster, net.join(Peer("waiter", "127.0.0.1", 1)), outcomes)

    assert (await status_of(cluster, first, digest))[0] == 404  # told to go upstream
    waiting = asyncio.create_task(status_of(cluster, second, digest))
    await eventually(lambda: any(m == "HEAD" for m, *_ in winner.requests), what="the waiter probes")
    assert not waiting.done()
    winner.knobs.missing = False  # the winner's ingest appears
    status, body = await waiting
    assert (status, body == data) == (200, True)
    assert outcomes == ["won", "waited"]


@pytest.mark.parametrize(
    ("lease", "wait", "outcome"),
    [(10.0, 0.3, "timed_out"), (0.3, 30.0, "won")],
    ids=["the-wait-ends-first: 404", "the-lease-ends-first: claimed again, won"],
)
async def test_a_winner_that_never_serves(cluster: Cluster, lease: float, wait: float, outcome: str) -> None:
    """A winner that is alive and never serves costs a waiter its bound, or less: when the
    winner's lease ends first, the waiter claims again and wins (404 now, upstream)."""
    digest = digest_of(b"never served")
    winner = await cluster.peer({}, missing=True)
    net = ClaimNetwork(lease=lease)
    fetcher, waiter = net.join(winner.peer), net.join(Peer("waiter", "127.0.0.1", 1))
    await fetcher.claim(digest)
    outcomes: list[Outcome] = []
    front = await coordinated_mirror(cluster, waiter, outcomes, wait=wait)
    assert (await status_of(cluster, front, digest))[0] == 404
    assert outcomes == [outcome]
    assert sum(m == "HEAD" for m, *_ in winner.requests) >= 2  # it kept probing meanwhile
    claims = [claimant for claimant, _ in net.asked]
    assert claims == [winner.peer.peer_id, "waiter"] + (["waiter"] if outcome == "won" else [])


async def test_a_winner_found_dead_hands_the_claim_to_the_waiter(cluster: Cluster) -> None:
    digest = digest_of(b"never fetched")
    dead = cluster.dead_peer()
    net = ClaimNetwork()
    members = (dead, Peer("waiter", "127.0.0.1", 1), Peer("late", "127.0.0.1", 2))
    fetcher, waiter, late = (net.join(p) for p in members)
    await fetcher.claim(digest)
    outcomes: list[Outcome] = []
    front = await coordinated_mirror(cluster, waiter, outcomes)
    assert (await status_of(cluster, front, digest))[0] == 404
    assert outcomes == ["won"]  # it fetches upstream itself, at once, instead of waiting out the bound
    assert [claimant for claimant, _ in net.asked] == ["dead-" + dead.host, "waiter", "waiter"]
    assert (await late.claim(digest)).winner == waiter.peer  # the waiter holds it now


@pytest.mark.parametrize("rendezvous_down", [True, False])
async def test_manifests_are_never_coordinated_and_a_silent_rendezvous_means_upstream(
    cluster: Cluster, rendezvous_down: bool
) -> None:
    digest = digest_of(b"x")
    net = ClaimNetwork()
    me = net.join(Peer("me", "127.0.0.1", 1))
    if rendezvous_down:
        net.down.add("me")
    outcomes: list[Outcome] = []
    front = await coordinated_mirror(cluster, me, outcomes)
    url = f"{front.url}/v2/library/app/manifests/{digest}?ns=docker.io"
    async with cluster.session().get(url) as resp:
        assert resp.status == 404
    assert outcomes == [] and net.asked == []
    assert (await status_of(cluster, front, digest))[0] == 404
    assert outcomes == ["won"]  # with no verdict, this node goes upstream on its own


async def test_winner_first_offers_the_winner_then_the_other_providers_once() -> None:
    winner, other = Peer("w", "127.0.0.9", 1), Peer("o", "127.0.0.8", 1)
    view = WinnerFirst(FakeRouter([other, winner]), winner)
    assert [p async for p in view.lookup("k", limit=3)] == [winner, other]
    assert [p async for p in view.lookup("k", limit=1)] == [winner]

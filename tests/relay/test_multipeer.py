"""One large blob from several providers at once (relay/multistream.py), over real loopback
sockets: bytes in order, a provider that dies, stalls or lies, and every buffer back in the pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from relaysupport import Cluster, FakePeer, digest_of

from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror

KiB = 1024
BIG = 3 * 1024 * 1024 + 123  # 48 relay buffers of 64 KiB and a bit: not a multiple of anything
# Small pieces so a few MiB make many of them: 4 buffers of 64 KiB per piece.
MULTI: dict[str, Any] = {
    "multi_peer_min_size": 1 << 20,
    "multi_peer_range_size": 256 * KiB,
    "multi_peer_buffers": 24,
    "hedge_delay": 1.0,  # the first provider listed wins the race: the tests know who starts
}
MODES: dict[str, dict[str, Any]] = {"hash-on-loop": {"hash_threads": 0}, "hash-thread": {"hash_threads": 1}}


def pool() -> BufferPool:
    return BufferPool(count=64, size=64 * KiB)


async def fetch(cluster: Cluster, url: str) -> tuple[int, bytes]:
    async with cluster.session().get(url) as resp:
        return resp.status, await resp.read()


async def fetch_cut(cluster: Cluster, url: str) -> bytes:
    """The body of a response that must be cut before its end; what arrived of it."""
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with cluster.session().get(url) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    return received


def ranges_asked(peer: FakePeer) -> list[str]:
    return [r for (_, _, r, _) in peer.requests if r is not None]


async def setup(
    cluster: Cluster, data: bytes, knobs: list[dict[str, Any]], **settings: Any
) -> tuple[list[FakePeer], str, Mirror]:
    digest = digest_of(data)
    peers = [await cluster.peer({digest: data}, **k) for k in knobs]
    front, mirror = await cluster.mirror([p.peer for p in peers], pool=pool(), **{**MULTI, **settings})
    return peers, f"{front.url}/v2/a/blobs/{digest}", mirror


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
async def test_bytes_arrive_in_order_from_every_provider(
    cluster: Cluster, blob: Callable[[int], bytes], mode: str
) -> None:
    data = blob(BIG)
    peers, url, mirror = await setup(cluster, data, [{}] * 4, lookup_limit=4, **MODES[mode])
    status, body = await fetch(cluster, url)
    assert status == 200
    assert body == data
    assert mirror.stats.multi_fetches == {"complete": 1, "failed": 0}
    assert mirror.stats.multi_ranges["retried"] == 0
    # Every provider was asked for pieces (each a bounded range), not only the winner.
    assert all(ranges_asked(p) for p in peers[1:]), [p.requests for p in peers]
    assert all(r.startswith("bytes=") and not r.endswith("-") for p in peers for r in ranges_asked(p))
    assert sum(p.body_bytes_sent for p in peers) >= len(data)
    assert mirror.stats.bytes_relayed == len(data)


async def test_one_provider_is_the_single_stream(cluster: Cluster, blob: Callable[[int], bytes]) -> None:
    data = blob(BIG)
    (peer,), url, mirror = await setup(cluster, data, [{}])
    status, body = await fetch(cluster, url)
    assert (status, body == data) == (200, True)
    assert mirror.stats.multi_fetches == {"complete": 0, "failed": 0}
    assert ranges_asked(peer) == []


async def test_off_by_setting(cluster: Cluster, blob: Callable[[int], bytes]) -> None:
    data = blob(BIG)
    peers, url, mirror = await setup(cluster, data, [{}] * 3, multi_peer_fetch=False)
    status, body = await fetch(cluster, url)
    assert (status, body == data) == (200, True)
    assert mirror.stats.multi_fetches["complete"] == 0
    assert [len(p.requests) for p in peers] == [1, 0, 0]


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
@pytest.mark.parametrize("cut", [1, 64 * KiB, 100 * KiB, 256 * KiB - 1])
@pytest.mark.parametrize("who", ["winner", "other"])
async def test_a_killed_provider_hands_its_pieces_on(
    cluster: Cluster, blob: Callable[[int], bytes], mode: str, cut: int, who: str
) -> None:
    data = blob(BIG)
    dying = {"die_after": cut}
    knobs = [dying, {}, {}] if who == "winner" else [{}, dying, {}]
    peers, url, mirror = await setup(cluster, data, knobs, **MODES[mode])
    status, body = await fetch(cluster, url)
    assert status == 200
    assert body == data
    assert mirror.stats.multi_fetches == {"complete": 1, "failed": 0}
    assert mirror.stats.multi_ranges["retried"] >= 1
    dead = peers[0] if who == "winner" else peers[1]
    assert len(dead.requests) == 1  # it failed once and left the fetch


async def test_a_stalled_provider_hands_its_piece_on(cluster: Cluster, blob: Callable[[int], bytes]) -> None:
    data = blob(BIG)
    _, url, mirror = await setup(cluster, data, [{}, {"stall_after": 70 * KiB}, {}], stall_timeout=0.3)
    status, body = await fetch(cluster, url)
    assert (status, body == data) == (200, True)
    assert mirror.stats.multi_ranges["retried"] >= 1


async def test_a_slow_provider_loses_the_head_piece(cluster: Cluster, blob: Callable[[int], bytes]) -> None:
    # Each of its answers starts 1 s late: the others finish pieces meanwhile and take its piece over.
    data = blob(BIG)
    peers, url, mirror = await setup(cluster, data, [{}, {}, {}])
    peers[1].knobs.first_byte_delay = 1.0
    status, body = await fetch(cluster, url)
    assert (status, body == data) == (200, True)
    assert mirror.stats.multi_ranges["retried"] >= 1


async def test_when_every_provider_dies_the_client_is_cut(
    cluster: Cluster, blob: Callable[[int], bytes]
) -> None:
    data = blob(BIG)
    _, url, mirror = await setup(cluster, data, [{"die_after": 100 * KiB}] * 2, resume_deadline=0.3)
    received = await fetch_cut(cluster, url)
    assert len(received) < len(data)
    assert mirror.stats.multi_fetches == {"complete": 0, "failed": 1}
    assert mirror.stats.aborted == 1


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
@pytest.mark.parametrize("size", [BIG, BIG - 123 - 1000, 2 * 1024 * 1024])
async def test_a_corrupt_provider_is_detected_and_never_completes_a_body(
    cluster: Cluster, blob: Callable[[int], bytes], mode: str, size: int
) -> None:
    data = blob(size)
    liar = {"corrupt_ranges": True, "corrupt": True}  # every body it sends is wrong
    (bad, good), url, mirror = await setup(cluster, data, [liar, {}], **MODES[mode])
    received = await fetch_cut(cluster, url)
    assert len(received) < len(data)
    assert mirror.stats.corrupt == 1
    assert mirror.stats.multi_fetches == {"complete": 0, "failed": 1}
    # The digest cannot tell who lied: nobody is blamed (unless the liar sent every byte, which
    # a loaded machine may make happen), and the blob goes one provider at a time.
    assert not mirror.health.avoided(good.peer)
    if not mirror.health.avoided(bad.peer):
        received = await fetch_cut(cluster, url)  # the liar wins the race again, alone this time
        assert len(received) < len(data)
        assert mirror.stats.multi_fetches["failed"] == 1 and mirror.stats.corrupt == 2
    assert mirror.health.avoided(bad.peer) and not mirror.health.avoided(good.peer)
    status, body = await fetch(cluster, url)
    assert (status, body == data) == (200, True)


async def test_a_corrupt_sole_sender_is_avoided(cluster: Cluster, blob: Callable[[int], bytes]) -> None:
    # The other provider dies at once: every byte came from the liar, which is then named.
    data = blob(BIG)
    (bad, dying), url, mirror = await setup(cluster, data, [{"corrupt_ranges": True}, {"die_after": 0}])
    await fetch_cut(cluster, url)
    assert mirror.health.avoided(bad.peer) and not mirror.health.avoided(dying.peer)

"""``/spegel-py/claim/1.0.0`` between real libp2p routers: one winner per key, wherever asked.

Every node computes the rendezvous of a key itself (the peer closest to it, this node included);
with complete routing tables (a small cluster) they all pick the same one, and with partial ones
(k = 2 over five nodes) the iterative FIND_NODE lookup finds it. Claims sent at the same moment
from every node yield exactly one winner per key, and the others learn the winner's peer id and
the IP its connection vouched for (where its registry is).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID
from routingsupport import ScriptedBootstrap
from support.poll import eventually

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer
from spegel_py.routing.claims import Verdict
from spegel_py.routing.libp2p.claim import PROTOCOL, Libp2pRendezvous
from spegel_py.routing.libp2p.dht import DhtNode
from spegel_py.routing.libp2p.keys import kad_id, multihash
from spegel_py.routing.libp2p.router import Libp2pRouter

KEYS = [f"sha256:{i:064x}" for i in range(12)]


@asynccontextmanager
async def nodes(
    tmp_path: Path, count: int, *, k: int = 20, silent: int | None = None
) -> AsyncIterator[list[tuple[Libp2pRouter, Libp2pRendezvous, str]]]:
    """``count`` routers with the claim protocol; node ``silent`` does not serve it (as Go Spegel)."""
    async with AsyncExitStack() as stack:
        out: list[tuple[Libp2pRouter, Libp2pRendezvous, str]] = []
        for i in range(count):
            ip = f"127.0.0.{191 + i}"
            seed = out[0][0].listen_multiaddrs() if out else []
            boot = ScriptedBootstrap(lambda _call, seed=seed: seed) if seed else None
            router = Libp2pRouter(
                listen_addrs=[f"/ip4/{ip}/tcp/0"], data_dir=tmp_path / str(i), registry_port=5000,
                bootstrap=boot, k=k, bootstrap_interval=0.2, refresh_interval=0.5,
            )
            stack.push_async_callback(router.close)
            await router.start()
            rendezvous = Libp2pRendezvous(router, registry_port=5000, lease=30.0, timeout=5.0)
            if i != silent:
                await rendezvous.start()
            out.append((router, rendezvous, ip))
        want = min(count - 1, k)
        await eventually(lambda: all(r.peer_count() >= want for r, _, _ in out), within=30, interval=0.05,
                         what="routing tables filled")
        yield out


def one_winner(verdicts: list[Verdict], peers: list[Peer]) -> Peer:
    winners = [p for p, v in zip(peers, verdicts, strict=True) if v.won]
    assert len(winners) == 1, verdicts
    assert all(v.winner == winners[0] for v in verdicts), verdicts
    return winners[0]


@pytest.mark.parametrize(("count", "k"), [(3, 20), (5, 2)], ids=["complete-tables", "partial-tables"])
async def test_simultaneous_claims_have_one_winner_known_to_all(tmp_path: Path, count: int, k: int) -> None:
    async with nodes(tmp_path, count, k=k) as cluster:
        peers = [Peer(r.peer_id, ip, 5000) for r, _, ip in cluster]
        for key in KEYS:
            verdicts = await asyncio.gather(*(rv.claim(key) for _, rv, _ in cluster))
            one_winner(list(verdicts), peers)


async def test_a_named_failed_winner_passes_the_claim_on(tmp_path: Path) -> None:
    async with nodes(tmp_path, 3) as cluster:
        key = KEYS[0]
        first = await cluster[0][1].claim(key)
        assert first.won
        second = await cluster[1][1].claim(key)
        assert not second.won and second.winner is not None
        assert second.winner.peer_id == cluster[0][0].peer_id
        taken = await cluster[1][1].claim(key, failed=cluster[0][0].peer_id)
        assert taken.won
        third = await cluster[2][1].claim(key)
        assert third.winner is not None and third.winner.peer_id == cluster[1][0].peer_id


async def test_a_rendezvous_that_is_gone_means_upstream(tmp_path: Path) -> None:
    """Claims for keys whose rendezvous stopped either fail (RoutingError: the mirror goes
    upstream) or, once the table dropped it, are decided by the next closest node: never a hang."""
    async with nodes(tmp_path, 3) as cluster:
        gone = cluster[2][0]
        ids = [r.peer_id for r, _, _ in cluster]
        keys = [key for key in KEYS if closest(key, ids) == gone.peer_id]
        assert keys, "some key has the third node as its rendezvous"
        await gone.close()
        for key in keys:
            try:
                verdict = await cluster[0][1].claim(key)
            except RoutingError:
                continue
            assert verdict.won


async def test_a_peer_that_does_not_speak_the_protocol_is_passed_over(tmp_path: Path) -> None:
    """A Go Spegel node closest to a key: the first claim sent to it fails (that mirror goes
    upstream), then every spegel-py node agrees on the next closest, and there is one winner."""
    async with nodes(tmp_path, 4, silent=3) as cluster:
        go_node = cluster[3][0]
        speakers = cluster[:3]
        ids = [r.peer_id for r, _, _ in cluster]
        candidates = (f"sha256:{i:064x}" for i in range(1000))
        keys = [key for key in candidates if closest(key, ids) == go_node.peer_id][:3]
        peers = [Peer(r.peer_id, ip, 5000) for r, _, ip in speakers]
        for _, rendezvous, _ in speakers:  # each node learns it once, for every key
            with pytest.raises(RoutingError):
                await rendezvous.claim(keys[0])
        for key in keys:
            verdicts = await asyncio.gather(*(rv.claim(key) for _, rv, _ in speakers))
            one_winner(list(verdicts), peers)


def closest(key: str, peer_ids: list[str]) -> str:
    """The rendezvous of ``key``: the peer id XOR-closest to it (sha256 of each, as the DHT)."""
    target = kad_id(multihash(key))
    return min(peer_ids, key=lambda pid: kad_id(ID.from_base58(pid).to_bytes()) ^ target)


@pytest.mark.parametrize(
    "garbage",
    [b"\x05hello", b"\xff\xff\xff\xff\x0f" + b"x" * 64, b'\x0a{"key": 1}', b"\x02[]", b""],
    ids=["not-json", "oversized-frame", "wrong-types", "not-an-object", "nothing"],
)
async def test_a_malformed_claim_changes_nothing(tmp_path: Path, garbage: bytes) -> None:
    """A peer that sends junk on the claim protocol gets its stream reset; the rendezvous still
    answers honest claims, and no claim was recorded."""
    async with nodes(tmp_path, 2) as cluster:
        (sender, _, _), (target, rendezvous, _) = cluster
        target_id = ID.from_base58(target.peer_id)

        async def send_junk(node: DhtNode) -> None:
            stream = await node.side().host.new_stream(target_id, [PROTOCOL])
            await stream.write(garbage)
            await stream.close()
            with trio.move_on_after(5):
                assert await stream.read(1024) in (b"", None)

        try:
            await sender.in_node(send_junk)
        except Exception as exc:  # a reset stream: py-libp2p's own error types
            assert not isinstance(exc, AssertionError), exc
        key = next(k for k in KEYS if closest(k, [sender.peer_id, target.peer_id]) == target.peer_id)
        assert (await rendezvous.claim(key)).won  # nobody held it: the junk claimed nothing

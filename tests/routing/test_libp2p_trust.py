"""Address trust, senders and streams against real libp2p hosts (issue 10, item 3; the rules in
docs/operations.md "Router address trust"; the whole bar against a process in
test_libp2p_hostile_process.py).

A hostile :class:`rawpeer.RawPeer` answers the node's GET_PROVIDERS with addresses of its
choosing; an honest router is what it lies about.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from rawpeer import RawPeer, answering, ping
from support.poll import eventually

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import tcp_addr
from spegel_py.routing.libp2p.host import split_p2p
from spegel_py.routing.libp2p.limits import Limits, SendLimits
from spegel_py.routing.libp2p.muxer import MAX_INBOUND_STREAMS
from spegel_py.routing.libp2p.router import Libp2pRouter

KEY = "sha256:" + "ef" * 32
POISON = "127.0.0.169"


class Static:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


async def router(tmp_path: Path, name: str, ip: str, **kw: object) -> Libp2pRouter:
    r = Libp2pRouter(
        listen_addrs=[f"/ip4/{ip}/tcp/0"],
        data_dir=tmp_path / name,
        registry_port=5000,
        refresh_interval=600,
        cache_ttl=0,
        **kw,  # type: ignore[arg-type]  # the test's overrides of the keyword options
    )
    await r.start()
    return r


@pytest.fixture
async def node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Libp2pRouter]:
    """The router under test, alone on 127.0.0.161; its limits are the defaults or the param."""
    r = await router(tmp_path, "node", "127.0.0.161", alone=True, limits=getattr(request, "param", None))
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[Libp2pRouter]:
    """An honest router on 127.0.0.162 that provides KEY and knows nobody."""
    r = await router(tmp_path, "provider", "127.0.0.162", alone=True)
    try:
        await r.advertise([KEY])
        yield r
    finally:
        await r.close()


def liar(names: Callable[[], list[wire.PeerInfo]]) -> Callable[[wire.Message], bytes]:
    """A reply naming ``names()`` as the providers of whatever key is asked."""

    def reply(msg: wire.Message) -> bytes:
        providers = names() if msg.type == wire.GET_PROVIDERS else []
        return wire.frame(wire.encode(wire.Message(msg.type, key=msg.key, providers=providers)))

    return reply


async def lying_peer(node: Libp2pRouter, ip: str, names: Callable[[], list[wire.PeerInfo]]) -> RawPeer:
    peer = RawPeer(ip, handler=answering(liar(names)))
    await peer.start()
    assert await peer.call(ping, node.listen_multiaddrs()[0]) == wire.Message(wire.PING)
    await eventually(lambda: node.peer_count() >= 1)
    return peer


async def ping_or_none(host: IHost, addr: str) -> wire.Message | None:
    try:
        return await ping(host, addr)
    except Exception:  # reset: the connection still holds its limit of streams
        return None


def info(r: Libp2pRouter, addrs: tuple[bytes, ...] | None = None) -> wire.PeerInfo:
    maddr, pid = split_p2p(r.listen_multiaddrs()[0])
    assert pid is not None
    return wire.PeerInfo(pid.to_bytes(), addrs if addrs is not None else (bytes(maddr.to_bytes()),))


async def test_a_provider_named_by_a_third_party_is_dialled_before_the_mirror_gets_it(
    node: Libp2pRouter, provider: Libp2pRouter
) -> None:
    """And the cost of that dial on a cold lookup, against the same lookup once connected."""
    liar_peer = await lying_peer(node, "127.0.0.163", lambda: [info(provider)])
    try:
        started = time.perf_counter()
        cold, _ = await node.lookup_stats(KEY)
        cold_ms = (time.perf_counter() - started) * 1000
        assert [(p.peer_id, p.host) for p in cold] == [(provider.peer_id, "127.0.0.162")]
        warm_ms = []
        for _ in range(5):
            started = time.perf_counter()
            warm, _ = await node.lookup_stats(KEY)
            warm_ms.append((time.perf_counter() - started) * 1000)
            assert [p.host for p in warm] == ["127.0.0.162"]
        print(f"cold lookup with a dial of the provider: {cold_ms:.1f} ms; connected: {min(warm_ms):.1f} ms")
    finally:
        await liar_peer.close()


@pytest.mark.parametrize(
    "where",
    ["poisoned", "liar", "malformed"],
    ids=["poisoned-address", "the-liars-own-address", "malformed-address"],
)
async def test_a_provider_no_connection_vouches_for_is_skipped(
    node: Libp2pRouter, provider: Libp2pRouter, where: str
) -> None:
    liar_addr: list[bytes] = []

    def names() -> list[wire.PeerInfo]:
        addrs = {
            "poisoned": (tcp_addr(POISON, 5000),),
            "liar": tuple(liar_addr),  # a libp2p host, but with another peer id: Noise says no
            "malformed": (b"\x04\x7f\x00", b"\x06\x13\x88", b""),
        }[where]
        return [info(provider, addrs)]

    liar_peer = await lying_peer(node, "127.0.0.164", names)
    liar_addr.append(liar_peer.addr())
    try:
        found, _ = await node.lookup_stats(KEY)
        assert found == []
        assert node.ready()
    finally:
        await liar_peer.close()


async def test_a_poisoned_address_never_replaces_a_known_peers_address(
    node: Libp2pRouter, tmp_path: Path
) -> None:
    honest = await router(
        tmp_path, "honest", "127.0.0.165", bootstrap=Static(node.listen_multiaddrs()), bootstrap_interval=0.2
    )
    try:
        await eventually(lambda: node.peer_count() == 1 and honest.peer_count() == 1, within=20)
        await honest.advertise([KEY])
        await eventually(lambda: node.provider_records() == 1, within=10)
        liar_peer = await lying_peer(node, "127.0.0.166", lambda: [info(honest, (tcp_addr(POISON, 5000),))])
        try:
            for _ in range(3):  # the lie is read each time (fewer than k peers: all are asked)
                found, stats = await node.lookup_stats(KEY, limit=5)
                assert stats.queried >= 1
                assert [(p.peer_id, p.host) for p in found] == [(honest.peer_id, "127.0.0.165")]
        finally:
            await liar_peer.close()
    finally:
        await honest.close()


STALL = Limits(sends=SendLimits(stall_timeout=1.0))


@pytest.mark.parametrize("node", [STALL], indirect=True)
async def test_a_peer_that_stops_reading_our_records_is_disconnected(node: Libp2pRouter) -> None:
    async def never_reads(stream: INetStream) -> None:
        await trio.sleep_forever()

    stone = RawPeer("127.0.0.167", handler=never_reads)
    await stone.start()
    try:
        assert await stone.call(ping, node.listen_multiaddrs()[0]) == wire.Message(wire.PING)
        await eventually(lambda: node.peer_count() == 1)
        # ~90 bytes each: 5.4 MB, past what the peer's yamux buffers unread (its window grows to ~2 MB)
        await node.advertise([f"sha256:{i:064x}" for i in range(60_000)])
        await eventually(lambda: node.peer_count() == 0, within=30)  # disconnected: out of the table
        node_id = ID.from_base58(node.peer_id)

        async def disconnected(host: IHost) -> bool:
            return not host.get_network().connections.get(node_id)

        await eventually(lambda: stone.call(disconnected), within=10)
        assert node.ready()  # alone: still ready
    finally:
        await stone.close()


async def test_streams_never_negotiated_are_bounded_per_connection(node: Libp2pRouter) -> None:
    raw = RawPeer("127.0.0.168")
    await raw.start()
    addr = node.listen_multiaddrs()[0]
    node_id = ID.from_base58(node.peer_id)

    async def open_bare_streams(host: IHost, n: int) -> int:
        """Open ``n`` yamux streams and never name a protocol on them."""
        conn = host.get_network().connections[node_id][0]
        for _ in range(n):
            await conn.muxed_conn.open_stream()
        return n

    try:
        assert await raw.call(ping, addr) == wire.Message(wire.PING)
        await raw.call(open_bare_streams, 300)
        # at most MAX_INBOUND_STREAMS are held at once; a slot frees when a negotiation times out
        # (5 s), which a loaded machine may reach before all 300 arrive: most are refused, anyway
        refused = await eventually(
            lambda: (n := node.stream_refusals()["connection_limit"]) >= 300 - 4 * MAX_INBOUND_STREAMS and n,
            within=30,
        )
        assert refused <= 300 - MAX_INBOUND_STREAMS
        other = RawPeer("127.0.0.170")
        await other.start()
        try:
            assert await other.call(ping, addr) == wire.Message(wire.PING)  # another peer is served
        finally:
            await other.close()
        # the unnegotiated ones time out (muxer.INBOUND_NEGOTIATION_TIMEOUT): the peer is served again
        assert await eventually(lambda: raw.call(ping_or_none, addr), within=30) == wire.Message(wire.PING)
    finally:
        await raw.close()

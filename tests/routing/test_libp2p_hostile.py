"""A hostile peer, as a real libp2p host, against one router: the node stays bounded and keeps
serving honest lookups (issue 10, item 3: records and wire; unit tests in test_libp2p_bounds.py).

The hostile side is :class:`rawpeer.RawPeer`: py-libp2p with Spegel's transport stack and no
DHT, writing hand-made ``/spegel/kad/1.0.0`` bytes on authenticated connections.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from rawpeer import RawPeer, add_providers, ask_providers, flood_key, open_stream, request, reset
from support.poll import eventually

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.limits import Limits, RecordLimits, StreamLimits
from spegel_py.routing.libp2p.router import Libp2pRouter

FLOOD = 300_000  # ADD_PROVIDER messages one peer pipelines on one stream (issue 10's measurement)
BAD_KEYS = [b"", b"\x12\x20" + b"k" * 31, b"\x12\x20" + b"k" * 33, b"\x13\x20" + b"k" * 32, b"x" * 4096]
HONEST = "sha256:" + "ab" * 32


class Static:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


def rss() -> int:
    """This process's resident memory, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.fixture
async def node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Libp2pRouter]:
    """The router under attack, alone on 127.0.0.151 (refresh walks rare: the raw peers do not
    answer them, or answer them with junk); its limits are the defaults, or the test's param."""
    router = Libp2pRouter(
        limits=getattr(request, "param", None),
        listen_addrs=["/ip4/127.0.0.151/tcp/0"],
        data_dir=tmp_path / "node",
        registry_port=5000,
        alone=True,
        refresh_interval=600,
        cache_ttl=0,
        lookup_timeout=3.0,
    )
    await router.start()
    try:
        yield router
    finally:
        await router.close()


@pytest.fixture
async def honest(node: Libp2pRouter, tmp_path: Path) -> AsyncIterator[Libp2pRouter]:
    """An honest router on 127.0.0.152 that has advertised HONEST to the node."""
    router = Libp2pRouter(
        listen_addrs=["/ip4/127.0.0.152/tcp/0"],
        data_dir=tmp_path / "honest",
        registry_port=5000,
        bootstrap=Static(node.listen_multiaddrs()),
        bootstrap_interval=0.2,
        refresh_interval=600,
    )
    await router.start()
    try:
        await eventually(lambda: node.peer_count() == 1 and router.peer_count() == 1, within=20)
        await router.advertise([HONEST])
        await eventually(lambda: node.provider_records() == 1, within=10)
        yield router
    finally:
        await router.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawPeer]:
    peer = RawPeer("127.0.0.153")
    await peer.start()
    try:
        yield peer
    finally:
        await peer.close()


async def test_an_add_provider_flood_is_capped_and_counted_and_lookups_go_on(
    node: Libp2pRouter, honest: Libp2pRouter, raw: RawPeer
) -> None:
    addr = node.listen_multiaddrs()[0]
    before = rss()
    await raw.call(add_providers, addr, range(FLOOD), BAD_KEYS * 200)
    limits = RecordLimits()
    refused = await eventually(
        lambda: (r := node.provider_refusals())["peer_limit"] == FLOOD - limits.per_peer and r, within=180
    )
    over = FLOOD - limits.per_peer
    assert refused == {"invalid_key": 200 * len(BAD_KEYS), "peer_limit": over, "key_limit": 0, "evicted": 0}
    assert node.provider_records() == limits.per_peer + 1  # the flood's share, and the honest record
    assert rss() - before < 40 << 20  # 300,000 records grew it by 63 MiB (issue 10)

    # honest lookups: at the node, over the wire from another stream, and by the node itself
    found = await raw.call(ask_providers, addr, multihash(HONEST))
    assert found == [ID.from_base58(honest.peer_id).to_bytes()]
    assert [p.peer_id async for p in node.lookup(HONEST)] == [honest.peer_id]


SMALL = Limits(records=RecordLimits(total=3000, per_peer=2000))  # evict: 187 records at once


@pytest.mark.parametrize("node", [SMALL], indirect=True)
async def test_past_the_total_the_most_prolific_peers_records_go_and_honest_ones_stay(
    node: Libp2pRouter, honest: Libp2pRouter, raw: RawPeer
) -> None:
    addr = node.listen_multiaddrs()[0]
    second = RawPeer("127.0.0.156")
    await second.start()
    try:
        await raw.call(add_providers, addr, range(0, 2000))
        await eventually(lambda: node.provider_records() == 2001, within=30)
        await second.call(add_providers, addr, range(10_000, 12_000))
        # its last record stored: the node has read the whole stream (one stream, in order)
        await eventually(lambda: raw.call(ask_providers, addr, flood_key(11_999)), within=30)
        assert node.provider_records() <= SMALL.records.total
        refusals = node.provider_refusals()
        assert refusals["peer_limit"] == 0 and refusals["evicted"] > 0
        # the first flood held the most when the second pushed past the total: its oldest went,
        # then the second's once it held more
        assert await second.call(ask_providers, addr, flood_key(0)) == []  # (a reply leaves out the asker)
        assert await second.call(ask_providers, addr, flood_key(1999)) == [raw.peer_id]
        assert await raw.call(ask_providers, addr, flood_key(10_000)) == []  # then the second's oldest
        assert await raw.call(ask_providers, addr, flood_key(11_999)) == [second.peer_id]
        assert await raw.call(ask_providers, addr, multihash(HONEST)) == [
            ID.from_base58(honest.peer_id).to_bytes()
        ]
    finally:
        await second.close()


async def test_four_mib_of_empty_entries_costs_a_bounded_number_of_objects(node: Libp2pRouter) -> None:
    """In a GET_PROVIDERS reply (4 MiB, the wire's limit) and in a request (over 16 KiB: the
    stream ends; under it: a bounded decode and the stream goes on)."""
    bomb = wire.frame(b"\x08\x03" + b"\x4a\x00" * ((wire.MAX_MESSAGE - 2) // 2))
    asked: list[bytes] = []

    async def answer_with_the_bomb(stream: INetStream) -> None:
        deframer = wire.Deframer()
        try:
            while data := await stream.read(65536):
                for body in deframer.feed(data):
                    msg = wire.decode(body)
                    asked.append(msg.key)
                    reply = bomb if msg.type == wire.GET_PROVIDERS else wire.frame(wire.encode(msg))
                    await stream.write(reply)
        except Exception:  # the node reset the stream
            pass
        finally:
            await reset(stream)

    peer = RawPeer("127.0.0.154", handler=answer_with_the_bomb)
    await peer.start()
    try:
        addr = node.listen_multiaddrs()[0]

        async def ping(host: IHost) -> wire.Message | None:  # an inbound stream: the node admits the peer
            stream = await open_stream(host, addr)
            try:
                return await request(stream, wire.Message(wire.PING))
            finally:
                await reset(stream)

        assert await peer.call(ping) == wire.Message(wire.PING)
        await eventually(lambda: node.peer_count() == 1)

        tracemalloc.start()
        try:
            started = time.perf_counter()
            found = [p async for p in node.lookup("sha256:" + "cd" * 32)]
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert asked and found == []
        # Two million decoded entries were ~300 MiB of objects and seconds of CPU; what is left
        # is the 4 MiB body, held a few times on its way through Noise, Yamux and the deframer.
        assert peak < 48 << 20
        assert elapsed < 3.0

        async def inbound(host: IHost) -> tuple[wire.Message | None, wire.Message | None]:
            stream = await open_stream(host, addr)
            try:
                small = wire.frame(b"\x08\x02" + b"\x4a\x00" * ((wire.MAX_REQUEST - 2) // 2))
                await stream.write(small)  # ADD_PROVIDER with 8,000 empty providers: nothing stored
                ok = await request(stream, wire.Message(wire.PING))
                try:
                    await stream.write(bomb)  # over MAX_REQUEST: the node resets the stream
                except Exception:  # reset while the 4 MiB were still being written
                    return ok, None
                return ok, await request(stream, wire.Message(wire.PING))
            finally:
                await reset(stream)

        ok, gone = await peer.call(inbound)
        assert ok == wire.Message(wire.PING) and gone is None
        assert node.provider_records() == 0
        assert await peer.call(ping) == wire.Message(wire.PING)  # a new stream is served
    finally:
        await peer.close()


async def test_streams_past_the_per_peer_limit_are_refused_while_others_are_served(
    node: Libp2pRouter, raw: RawPeer
) -> None:
    addr = node.listen_multiaddrs()[0]
    limit = StreamLimits().per_peer
    other = RawPeer("127.0.0.155")
    await other.start()

    async def hold(host: IHost) -> tuple[list[INetStream], list[bool]]:
        held = [await open_stream(host, addr) for _ in range(limit)]
        # every admitted stream is served (a reply proves its handler runs)
        return held, [await request(s, wire.Message(wire.PING)) is not None for s in held]

    async def ping_on_a_new_stream(host: IHost) -> bool:
        try:
            stream = await open_stream(host, addr)
        except Exception:  # reset as the protocol was agreed: a refusal too
            return False
        try:
            return await request(stream, wire.Message(wire.PING)) is not None
        finally:
            await reset(stream)

    async def reset_all(host: IHost, streams: list[INetStream]) -> None:
        for s in streams:
            await reset(s)

    held: list[INetStream] = []
    try:
        held, served = await raw.call(hold)
        assert served == [True] * limit
        assert not await raw.call(ping_on_a_new_stream)  # one more: reset at once
        assert await other.call(ping_on_a_new_stream)  # another peer is served
        assert await other.call(ask_providers, addr, multihash(HONEST)) == []
        await raw.call(reset_all, held)
        held = []
        await eventually(lambda: raw.call(ping_on_a_new_stream), within=10)  # served again
    finally:
        await raw.call(reset_all, held)
        await other.close()

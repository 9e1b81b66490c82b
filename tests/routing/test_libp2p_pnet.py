"""A private network (issue 10, item 4): routers with the same pre-shared key find each other's
records; a host with another key, or with none, cannot connect to a protected node (nor a
protected node to it), cannot complete a lookup, never enters the node's table, and no record
it sends is stored. Each case has the same-key control next to it, so every check can fail."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libp2p.abc import IHost
from rawpeer import RawPeer, open_stream, request, reset
from routingsupport import ScriptedBootstrap
from support.poll import eventually

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.keys import multihash
from spegel_py.routing.libp2p.psk import PreSharedKey
from spegel_py.routing.libp2p.router import Libp2pRouter

KEY = PreSharedKey(os.urandom(32))
OTHER = PreSharedKey(os.urandom(32))
INSIDE = "sha256:" + "1a" * 32  # advertised by the protected node
OUTSIDE = "sha256:" + "2b" * 32  # advertised by the other one
ROUNDS = 3  # bootstrap rounds the outsider completes (each dials the node) before the checks

CASES = {  # node's key, the other's key, can they talk
    "same key": (KEY, KEY, True),
    "another key": (KEY, OTHER, False),
    "no key, dialling a protected node": (KEY, None, False),
    "a key, dialling an unprotected node": (None, KEY, False),
    "no key on either side": (None, None, True),
}


@contextlib.asynccontextmanager
async def router(
    tmp_path: Path, ip: str, psk: PreSharedKey | None, bootstrap: ScriptedBootstrap | None = None
) -> AsyncIterator[Libp2pRouter]:
    node = Libp2pRouter(
        listen_addrs=[f"/ip4/{ip}/tcp/0"],
        data_dir=tmp_path / ip,
        registry_port=5000,
        bootstrap=bootstrap,
        alone=bootstrap is None,
        bootstrap_interval=0.1,
        refresh_interval=600,
        cache_ttl=0,
        lookup_timeout=1.0,
        psk=psk,
    )
    await node.start()
    try:
        yield node
    finally:
        await node.close()


async def lookup(node: Libp2pRouter, key: str) -> list[str]:
    return [p.peer_id async for p in node.lookup(key)]


@pytest.mark.parametrize(("node_key", "other_key", "talk"), CASES.values(), ids=list(CASES))
async def test_only_nodes_with_the_same_key_connect_and_learn(
    tmp_path: Path, node_key: PreSharedKey | None, other_key: PreSharedKey | None, talk: bool
) -> None:
    async with router(tmp_path, "127.0.0.161", node_key) as node:
        await node.advertise([INSIDE])
        boot = ScriptedBootstrap(lambda _call: node.listen_multiaddrs())
        async with router(tmp_path, "127.0.0.162", other_key, boot) as other:
            await other.advertise([OUTSIDE])
            if talk:
                await eventually(lambda: node.peers() == [other.peer_id] and other.peers() == [node.peer_id])
                await eventually(lambda: node.provider_records() == 1)
                assert await lookup(other, INSIDE) == [node.peer_id]
                assert await lookup(node, OUTSIDE) == [other.peer_id]
                return
            # The rounds before the last have dialled the node and given up (a round's dials end
            # before the next round asks the bootstrapper).
            await eventually(lambda: boot.calls >= ROUNDS, within=30)
            assert await lookup(other, INSIDE) == []
            await other.advertise([OUTSIDE])
            assert node.peers() == [] and other.peers() == []
            assert node.peer_count() == 0 and node.provider_records() == 0
            assert await lookup(node, OUTSIDE) == []


def add_provider(me: RawPeer, key: str) -> wire.Message:
    info = wire.PeerInfo(me.peer_id, (me.addr(),))
    return wire.Message(wire.ADD_PROVIDER, key=multihash(key), providers=[info])


@pytest.mark.parametrize(
    ("psk", "stored"), [(KEY, True), (OTHER, False), (None, False)], ids=["same", "other", "none"]
)
async def test_a_raw_host_without_the_key_cannot_even_open_a_stream(
    tmp_path: Path, psk: PreSharedKey | None, stored: bool
) -> None:
    async with router(tmp_path, "127.0.0.163", KEY) as node:
        addr = node.listen_multiaddrs()[0]
        raw = RawPeer("127.0.0.164", psk=psk)
        await raw.start()
        try:

            async def send(host: IHost, key: str) -> bool:
                try:
                    stream = await open_stream(host, addr)
                except Exception:  # the dial failed: what a wrong key looks like
                    return False
                await stream.write(wire.frame(wire.encode(add_provider(raw, key))))
                reply = await request(stream, wire.Message(wire.GET_PROVIDERS, key=multihash(key)))
                await reset(stream)
                return reply is not None

            assert await raw.call(send, OUTSIDE) is stored
            if stored:
                await eventually(lambda: node.provider_records() == 1)
            else:
                assert node.provider_records() == 0 and node.peer_count() == 0
        finally:
            await raw.close()

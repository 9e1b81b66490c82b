"""The Router contract, run against every implementation: memory and libp2p (real hosts on loopback).

Each libp2p node listens on its own loopback address (127.0.0.x, a "node"), bootstraps from the
first node, and uses short record lifetimes so expiry is observable within a test.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import pytest
from support import poll

from spegel_py.errors import RoutingError
from spegel_py.routing.base import Peer, Router
from spegel_py.routing.libp2p.router import Libp2pRouter
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter

REGISTRY_PORT = 5123
DEADLINE = 20.0  # seconds any eventual condition may take here before the test fails
LOOKUP_TIMEOUT = 1.5
KEY = "sha256:" + "ab" * 32
TAG = "docker.io/library/nginx:1.25"

Cluster = Callable[..., Awaitable[list[Any]]]


class Static:
    """A bootstrapper that returns fixed multiaddrs (the ``static`` bootstrap, in miniature)."""

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


eventually = partial(poll.eventually, within=DEADLINE, interval=0.05)  # a check is a lookup: 20 a second


async def found(router: Router, key: str, limit: int = 3) -> list[Peer]:
    return [p async for p in router.lookup(key, limit=limit)]


_IP_BASE = iter(range(40, 250, 6))  # distinct 127.0.0.x ranges per cluster in this process


@pytest.fixture(params=["memory", "libp2p"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """``await cluster(n, alone=False)``: n connected routers of the implementation under test."""
    async with AsyncExitStack() as stack:
        network = MemoryNetwork()
        tmp = stack.enter_context(tempfile.TemporaryDirectory())

        async def make(n: int, *, alone: bool = False) -> list[Any]:
            base = next(_IP_BASE)
            routers: list[Any] = []
            for i in range(n):
                ip = f"127.0.0.{base + i}"
                if request.param == "memory":
                    r: Any = MemoryRouter(
                        network, peer_id=f"peer-{base + i}", host=ip, port=REGISTRY_PORT, alone=alone
                    )
                else:
                    seeds = Static(routers[0].listen_multiaddrs()) if routers else None
                    r = Libp2pRouter(
                        listen_addrs=[f"/ip4/{ip}/tcp/0"],
                        data_dir=os.path.join(tmp, ip),
                        registry_port=REGISTRY_PORT,
                        bootstrap=seeds,
                        alone=alone,
                        record_ttl=3.0,
                        reprovide_interval=1.0,
                        lookup_timeout=LOOKUP_TIMEOUT,
                        cache_ttl=0.3,
                        bootstrap_interval=0.2,
                        refresh_interval=0.5,
                    )
                    await r.start()
                stack.push_async_callback(r.close)
                routers.append(r)
            if n > 1:

                async def all_ready() -> bool:
                    return all(r.ready() for r in routers)

                await eventually(all_ready)
            return routers

        yield make


async def test_implements_the_protocol(cluster: Cluster) -> None:
    (node,) = await cluster(1, alone=True)
    assert isinstance(node, Router)


@pytest.mark.parametrize("alone", [True, False])
async def test_ready_alone_only_when_configured(cluster: Cluster, alone: bool) -> None:
    (node,) = await cluster(1, alone=alone)
    assert node.ready() is alone


async def test_ready_once_it_has_a_peer(cluster: Cluster) -> None:
    a, b = await cluster(2)  # cluster() waits until every node is ready, or fails
    assert a.ready() and b.ready()


@pytest.mark.parametrize("key", [KEY, TAG])
async def test_advertised_key_is_found_from_another_node(cluster: Cluster, key: str) -> None:
    a, b, c = await cluster(3)
    await a.advertise([key])

    async def seen_by_others() -> bool:
        return [p.peer_id for p in await found(b, key)] == [a.peer_id] and bool(await found(c, key))

    await eventually(seen_by_others)
    (peer,) = await found(b, key)
    assert (peer.host, peer.port) == (a.peer.host if isinstance(a, MemoryRouter) else _ip(a), REGISTRY_PORT)


def _ip(router: Libp2pRouter) -> str:
    return router.listen_multiaddrs()[0].split("/")[2]


async def test_lookup_never_yields_the_node_itself(cluster: Cluster) -> None:
    a, b = await cluster(2)
    await a.advertise([KEY])
    await b.advertise([KEY])

    async def b_found_by_a() -> bool:
        return [p.peer_id for p in await found(a, KEY)] == [b.peer_id]

    await eventually(b_found_by_a)
    assert a.peer_id not in [p.peer_id for p in await found(a, KEY, limit=10)]
    await b.withdraw([KEY])
    await a.advertise([TAG])
    assert await found(a, TAG) == []


@pytest.mark.parametrize("limit", [0, 1, 2, 3])
async def test_limit_bounds_the_peers_yielded(cluster: Cluster, limit: int) -> None:
    nodes = await cluster(4)
    for node in nodes[1:]:
        await node.advertise([KEY])
    seeker = nodes[0]
    providers = {n.peer_id for n in nodes[1:]}

    async def all_three_known() -> bool:
        return {p.peer_id for p in await found(seeker, KEY, limit=10)} == providers

    await eventually(all_three_known)
    got = await found(seeker, KEY, limit=limit)
    assert len(got) == limit
    assert len({p.peer_id for p in got}) == limit and {p.peer_id for p in got} <= providers


async def test_withdrawn_key_stops_being_found(cluster: Cluster) -> None:
    a, b = await cluster(2)
    await a.advertise([KEY, TAG])

    async def both_found() -> bool:
        return bool(await found(b, KEY)) and bool(await found(b, TAG))

    await eventually(both_found)
    await a.withdraw([KEY])

    async def key_gone() -> bool:  # libp2p: remote records expire (record_ttl) once not reprovided
        return await found(b, KEY) == []

    await eventually(key_gone)
    assert [p.peer_id for p in await found(b, TAG)] == [a.peer_id]  # still reprovided


async def test_unknown_key_lookup_ends_by_its_deadline(cluster: Cluster) -> None:
    a, _b, _c = await cluster(3)
    start = time.monotonic()
    assert await found(a, "sha256:" + "00" * 32) == []
    assert time.monotonic() - start < LOOKUP_TIMEOUT + 0.5


async def test_close_is_idempotent_and_final(cluster: Cluster) -> None:
    a, b = await cluster(2)
    await a.advertise([KEY])
    await b.close()
    await b.close()
    assert not b.ready()
    assert await found(b, KEY) == []
    with pytest.raises(RoutingError):
        await b.advertise([TAG])


async def test_close_leaves_no_threads_tasks_or_sockets(cluster: Cluster) -> None:
    threads = set(threading.enumerate())
    fds = _open_fds()
    tasks = asyncio.all_tasks()
    nodes = await cluster(3)
    await nodes[0].advertise([KEY])
    await eventually(lambda: _nonempty(found(nodes[1], KEY)))
    for node in nodes:
        await node.close()
    assert set(threading.enumerate()) == threads
    assert asyncio.all_tasks() == tasks
    assert _open_fds() <= fds


async def _nonempty(result: Awaitable[list[Peer]]) -> bool:
    return bool(await result)


def _open_fds() -> set[str]:
    """Open descriptors that are sockets or pipes (files opened by pytest itself come and go)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:", "anon_inode:")):
            out.add(target)
    return out

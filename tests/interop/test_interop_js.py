"""spegel-py's libp2p router and an independent kad-dht (js-libp2p) find each other's providers.

js-libp2p shares no code with py-libp2p or go-libp2p, so this checks the wire protocol itself:
``/spegel/kad/1.0.0`` over TCP + Noise + Yamux, Spegel's key derivation (CIDv1 raw of sha2-256 of
the key string), ADD_PROVIDER and GET_PROVIDERS in both directions. js-libp2p leaves itself out
of its own GET_PROVIDERS answers, so its records reach spegel-py through ADD_PROVIDER only: the
spegel-py lookup must see records other nodes pushed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from pathlib import Path

import pytest
from jspeer import REGISTRY_PORT, JsPeer, ensure_installed, js_peers, lookup
from jspeer import py_router as start_py_router
from support.poll import eventually

from spegel_py.routing.bootstrap import StaticBootstrapper
from spegel_py.routing.libp2p.router import Libp2pRouter

pytestmark = pytest.mark.integration

PY_IP = "127.0.0.33"
JS_IPS = ("127.0.0.34", "127.0.0.35")


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    ensure_installed()


def py_router(tmp_path: Path, name: str, ip: str, bootstrap: list[str]) -> AsyncContextManager[Libp2pRouter]:
    return start_py_router(tmp_path / name, ip, StaticBootstrapper(bootstrap))


async def connected(router: Libp2pRouter, *peers: JsPeer) -> None:
    """Both sides have each other in their routing tables (the js side learns ids via identify)."""

    async def ready() -> bool:
        return router.ready() and all([await p.routing_table_size() > 0 for p in peers])

    await eventually(ready, within=20, interval=0.05)


async def test_js_finds_a_py_provider(tmp_path: Path) -> None:
    async with (
        js_peers(JS_IPS[0]) as (js,),
        py_router(tmp_path, "py", PY_IP, [js.addr]) as router,
    ):
        await connected(router, js)
        keys = ["sha256:" + "ab" * 32, "docker.io/library/nginx:1.25"]
        await router.advertise(keys)
        py_addr = router.listen_multiaddrs()[0]
        for key in keys:
            found = await js.find_providers(key, timeout_ms=5000)
            assert router.peer_id in found, (key, found)
            assert any(a.startswith(f"/ip4/{PY_IP}/tcp/") for a in found[router.peer_id]), found
            assert py_addr.split("/p2p/")[0] in found[router.peer_id]
        # A key nobody provides: js finds nobody (the check above can fail).
        assert await js.find_providers("sha256:" + "cd" * 32, timeout_ms=1000) == {}


async def test_py_finds_a_js_provider(tmp_path: Path) -> None:
    async with (
        js_peers(JS_IPS[0]) as (js,),
        py_router(tmp_path, "py", PY_IP, [js.addr]) as router,
    ):
        await connected(router, js)
        key = "127.0.0.1:5000/team/app:v1"
        assert await lookup(router, key) == []
        await js.provide(key)  # js pushes ADD_PROVIDER to its closest peers: the py node
        peers = await lookup(router, key)
        assert [p.peer_id for p in peers] == [js.peer_id]
        # The registry of a peer is at its IP and (Spegel's assumption) the local registry port.
        assert (peers[0].host, peers[0].port) == (JS_IPS[0], REGISTRY_PORT)


async def test_mixed_network_of_two_js_and_one_py(tmp_path: Path) -> None:
    """py in the middle: records flow js -> py -> js and js -> js through py's routing."""
    async with (
        js_peers(*JS_IPS) as (js_a, js_b),
        py_router(tmp_path, "py", PY_IP, [js_a.addr, js_b.addr]) as router,
    ):
        await connected(router, js_a, js_b)
        await js_a.provide("sha256:" + "01" * 32)
        await router.advertise(["sha256:" + "02" * 32])
        assert js_a.peer_id in {p.peer_id for p in await lookup(router, "sha256:" + "01" * 32)}
        assert router.peer_id in await js_b.find_providers("sha256:" + "02" * 32)
        assert router.peer_id in await js_a.find_providers("sha256:" + "02" * 32)


async def test_js_finds_what_the_advertiser_announces(tmp_path: Path) -> None:
    """End to end: a store's image -> advertiser -> spegel-py's libp2p router -> found by js."""
    from conformance.store_images import small_image

    from spegel_py.routing.advertiser import Advertiser
    from spegel_py.store.memory import MemoryStore

    store = MemoryStore()
    image = small_image()
    for digest in image.present:
        store.add_blob(image.blobs[digest], image.media_types[digest])
    store.tag(image.name, image.root)
    async with (
        js_peers(JS_IPS[0]) as (js,),
        py_router(tmp_path, "py", PY_IP, [js.addr]) as router,
    ):
        await connected(router, js)
        advertiser = Advertiser(store, router)
        task = asyncio.create_task(advertiser.run(), name="advertiser")
        try:
            await eventually(
                lambda: len(advertiser.advertised()) == len(image.present) + 1, within=10, interval=0.05
            )
            for key in [image.name, str(image.root), *(str(d) for d in image.layers)]:
                assert router.peer_id in await js.find_providers(key), key
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_two_py_nodes_meet_through_a_js_node(tmp_path: Path) -> None:
    """py_a and py_b bootstrap from the js node only: py_a's record reaches js (ADD_PROVIDER), and
    py_b finds it, through js's GET_PROVIDERS answer or a peer js's FIND_NODE answers led it to."""
    async with (
        js_peers(JS_IPS[0]) as (js,),
        py_router(tmp_path, "a", "127.0.0.36", [js.addr]) as py_a,
        py_router(tmp_path, "b", "127.0.0.37", [js.addr]) as py_b,
    ):
        await connected(py_a, js)
        await connected(py_b, js)
        key = "sha256:" + "5e" * 32
        await py_a.advertise([key])

        async def js_holds_it() -> bool:
            return py_a.peer_id in await js.find_providers(key, timeout_ms=1000)

        await eventually(js_holds_it, within=10, interval=0.05)
        peers = await lookup(py_b, key)
        assert py_a.peer_id in {p.peer_id for p in peers}
        assert next(p for p in peers if p.peer_id == py_a.peer_id).host == "127.0.0.36"

"""The mirror plugged into the real registry server: node B lacks content, node A (a real
spegel-py server) has it; a client of B gets A's bytes, and A never mirrors a peer's request."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from nodesupport import Node, start_node
from relaysupport import Cluster, FakeRouter

from spegel_py.oci.digest import Digest
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror
from spegel_py.relay.peerclient import PeerClient
from spegel_py.relay.settings import MirrorSettings
from spegel_py.routing.base import Peer
from spegel_py.store.memory import MemoryStore


@pytest.fixture
async def nodes(no_leaks: None) -> AsyncIterator[tuple[Node, Node, FakeRouter]]:
    router = FakeRouter()
    a = await start_node("127.0.0.2", MemoryStore(), Mirror(FakeRouter(), pool=BufferPool(count=2)))
    mirror = Mirror(
        router, client=PeerClient(), pool=BufferPool(count=4, size=64 * 1024), settings=MirrorSettings()
    )
    b = await start_node("127.0.0.3", MemoryStore(), mirror)
    router.peers = [Peer("a", "127.0.0.2", a.port)]
    try:
        yield a, b, router
    finally:
        for node in (b, a):
            await node.close()


async def test_node_b_serves_node_a_content(nodes: tuple[Node, Node, FakeRouter]) -> None:
    a, b, router = nodes
    layer = bytes(range(256)) * 8192  # 2 MiB: relayed, not buffered
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    layer_digest = a.store.add_blob(layer).digest
    manifest_digest = a.store.add_blob(manifest).digest
    a.store.tag("docker.io/library/app:v1", manifest_digest)
    async with aiohttp.ClientSession() as session:
        async with session.head(f"{b.url}/v2/library/app/manifests/v1?ns=docker.io") as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == str(manifest_digest)
            assert resp.headers["Content-Length"] == str(len(manifest))
        async with session.get(f"{b.url}/v2/library/app/manifests/{manifest_digest}?ns=docker.io") as resp:
            assert resp.status == 200
            assert await resp.read() == manifest
        async with session.get(f"{b.url}/v2/library/app/blobs/{layer_digest}?ns=docker.io") as resp:
            assert resp.status == 200
            assert await resp.read() == layer
        missing = Digest.of(b"nobody has this")
        async with session.get(f"{b.url}/v2/library/app/blobs/{missing}?ns=docker.io") as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert b.mirror is not None and b.mirror.stats.served == 3
    # Node A answered from local content only: its own mirror was never consulted.
    assert a.mirror is not None and a.mirror.stats.requests == 0
    assert router.lookups == [
        "docker.io/library/app:v1",
        str(manifest_digest),
        str(layer_digest),
        str(missing),
    ]


async def test_resume_continues_from_a_real_registry_server(
    nodes: tuple[Node, Node, FakeRouter], cluster: Cluster
) -> None:
    """The Range request a resume sends is answered by the real server in the form expected."""
    a, b, router = nodes
    layer = bytes(range(256)) * 12_000 + b"tail"
    digest = a.store.add_blob(layer).digest
    dying = await cluster.peer({str(digest): layer}, die_after=len(layer) // 3)
    router.peers = [dying.peer, *router.peers]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{b.url}/v2/library/app/blobs/{digest}?ns=docker.io") as resp:
            assert resp.status == 200
            assert await resp.read() == layer
    assert b.mirror is not None and b.mirror.stats.resumed == 1


async def test_mirror_finds_peers_through_a_memory_router(no_leaks: None) -> None:
    """The whole seam with the project's own in-memory router: A advertises, B's mirror finds A."""
    from spegel_py.routing.memory import MemoryNetwork, MemoryRouter

    network = MemoryNetwork()
    a = await start_node("127.0.0.2", MemoryStore(), None)
    router_a = MemoryRouter(network, peer_id="a", host="127.0.0.2", port=a.port)
    b_router = MemoryRouter(network, peer_id="b", host="127.0.0.3", port=0)
    mirror = Mirror(b_router, client=PeerClient(), pool=BufferPool(count=2, size=64 * 1024))
    b = await start_node("127.0.0.3", MemoryStore(), mirror)
    try:
        layer = bytes(range(256)) * 4096
        manifest = b'{"schemaVersion":2}'
        layer_digest = a.store.add_blob(layer).digest
        manifest_digest = a.store.add_blob(manifest).digest
        a.store.tag("docker.io/library/app:v2", manifest_digest)
        await router_a.advertise([str(layer_digest), str(manifest_digest), "docker.io/library/app:v2"])
        async with aiohttp.ClientSession() as session:
            for path, expected in [
                ("manifests/v2?ns=docker.io", manifest),
                (f"blobs/{layer_digest}?ns=docker.io", layer),
            ]:
                async with session.get(f"{b.url}/v2/library/app/{path}") as resp:
                    assert resp.status == 200
                    assert await resp.read() == expected
            await router_a.withdraw([str(layer_digest)])
            async with session.get(f"{b.url}/v2/library/app/blobs/{layer_digest}?ns=docker.io") as resp:
                assert resp.status == 404
    finally:
        for node in (b, a):
            await node.runner.cleanup()
        await mirror.close()
        await router_a.close()
        await b_router.close()


async def test_relayed_answers_echo_ns_in_oci_namespace(nodes: tuple[Node, Node, FakeRouter]) -> None:
    """A relayed manifest, blob and range carry ``OCI-Namespace: <ns>``, as local content does;
    without ``ns`` there is none, and an error answer never carries it."""
    a, b, _ = nodes
    layer = bytes(range(256)) * 8192  # 2 MiB: streamed through a relay buffer
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    layer_digest = a.store.add_blob(layer).digest
    a.store.tag("docker.io/library/app:v1", a.store.add_blob(manifest).digest)
    blob = f"{b.url}/v2/library/app/blobs/{layer_digest}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{b.url}/v2/library/app/manifests/v1?ns=docker.io") as resp:
            assert (resp.status, resp.headers.get("OCI-Namespace")) == (200, "docker.io")
        async with session.get(f"{blob}?ns=docker.io") as resp:
            assert (resp.status, resp.headers.get("OCI-Namespace")) == (200, "docker.io")
            assert await resp.read() == layer
        async with session.get(f"{blob}?ns=docker.io", headers={"Range": "bytes=-10"}) as resp:
            assert (resp.status, resp.headers.get("OCI-Namespace")) == (206, "docker.io")
            assert await resp.read() == layer[-10:]
        async with session.get(f"{blob}?ns=docker.io", headers={"Range": f"bytes={len(layer)}-"}) as resp:
            assert resp.status == 416 and "OCI-Namespace" not in resp.headers
        async with session.head(blob) as resp:
            assert resp.status == 200 and "OCI-Namespace" not in resp.headers


@pytest.mark.parametrize("size", [1000, 2 << 20], ids=["small", "streamed"])
async def test_a_relayed_range_starting_at_the_size_is_416(
    nodes: tuple[Node, Node, FakeRouter], size: int
) -> None:
    """The range is asked of the peer (a real server), whose 416 becomes the client's, exactly at
    the boundary Spegel v0.7 fixed (#1422); one byte earlier is a 206 of the last byte."""
    a, b, _ = nodes
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    blob = f"{b.url}/v2/library/app/blobs/{a.store.add_blob(data).digest}?ns=docker.io"
    async with aiohttp.ClientSession() as session:
        for header in (f"bytes={size}-", f"bytes={size}-{size + 5}"):
            async with session.get(blob, headers={"Range": header}) as resp:
                assert resp.status == 416, header
                assert resp.headers["Content-Range"] == f"bytes */{size}"
        async with session.get(blob, headers={"Range": f"bytes={size - 1}-"}) as resp:
            assert resp.status == 206 and await resp.read() == data[-1:]


async def test_peer_requests_carry_spegels_basic_auth(no_leaks: None) -> None:
    """With Spegel's basic auth, a node's registry refuses requests without the credentials, so
    the relay sends them to peers (every node shares one secret, Go Spegel's nodes too)."""
    auth = "Basic " + base64.b64encode(b"spegel:s3cret").decode()
    a = await start_node("127.0.0.2", MemoryStore(), None, authorization=auth)
    layer = bytes(range(256)) * 8192
    digest = a.store.add_blob(layer).digest
    nodes: list[Node] = [a]
    try:
        for client_auth, status in ((auth, 200), (None, 404)):  # without: A answers 401, a peer miss
            router = FakeRouter()
            router.peers = [Peer("a", "127.0.0.2", a.port)]
            mirror = Mirror(router, client=PeerClient(authorization=client_auth), pool=BufferPool(count=2))
            b = await start_node("127.0.0.3", MemoryStore(), mirror, authorization=auth)
            nodes.append(b)
            async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
                async with session.get(f"{b.url}/v2/library/app/blobs/{digest}?ns=docker.io") as resp:
                    assert resp.status == status
                    if status == 200:
                        assert await resp.read() == layer
    finally:
        for node in reversed(nodes):
            await node.close()

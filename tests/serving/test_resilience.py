"""The miss-handler seam, a store that is down or hangs, readiness, and clients that go away."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from regsupport import REGISTRY, Content, FileStore, make_content, start_server
from support.poll import eventually

from spegel_py.errors import StoreUnavailableError
from spegel_py.metrics import Metrics
from spegel_py.oci.digest import Digest
from spegel_py.oci.paths import DistributionPath
from spegel_py.oci.reference import Reference
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.store.base import Blob, Descriptor, Event, Image
from spegel_py.store.memory import MemoryStore

Z = "sha256:" + "0" * 64


class RecordingMissHandler:
    """A MissHandler that answers 200 ``peer`` and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[DistributionPath, str | None]] = []

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        self.calls.append((path, ns))
        return web.Response(text="peer")


class BrokenStore:
    """A store whose backend is down (``hang=False``) or never answers (``hang=True``)."""

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang

    async def _fail(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        raise StoreUnavailableError("containerd is restarting")

    async def list_images(self) -> list[Image]:
        await self._fail()
        return []

    async def resolve(self, reference: Reference) -> Digest:
        await self._fail()
        raise AssertionError

    async def stat(self, digest: Digest) -> Descriptor:
        await self._fail()
        raise AssertionError

    async def open(self, digest: Digest) -> Blob:
        await self._fail()
        raise AssertionError

    async def subscribe(self) -> AsyncIterator[Event]:
        await self._fail()
        yield Event(kind=None)  # type: ignore[arg-type]  # unreachable

    async def close(self) -> None:
        return None


class Router:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def ready(self) -> bool:
        return self._ready


@pytest.fixture
def memory() -> tuple[MemoryStore, Content]:
    store = MemoryStore()
    return store, make_content(lambda b: store.add_blob(b).digest, lambda n, d: store.tag(n, d) and None)


@pytest.mark.parametrize(
    ("target", "headers", "mirrored"),
    [
        (f"/v2/x/blobs/{Z}", {}, True),
        (f"/v2/x/manifests/{Z}", {}, True),
        ("/v2/test/small/manifests/v9?ns=127.0.0.1%3A5000", {}, True),
        ("/v2/test/small/manifests/v9", {}, False),  # no ns: no registry to look the tag up in
        (f"/v2/x/blobs/{Z}", {"X-Spegel-Mirrored": "true"}, False),
        (f"/v2/x/blobs/{Z}", {"X-Spegel-Mirrored": "TRUE"}, False),
        ("/v2/test/small/manifests/v9?ns=127.0.0.1%3A5000", {"X-Spegel-Mirrored": "true"}, False),
    ],
)
async def test_local_misses_go_to_the_mirror_unless_a_peer_asked(
    memory: tuple[MemoryStore, Content], target: str, headers: dict[str, str], mirrored: bool
) -> None:
    store, _ = memory
    mirror = RecordingMissHandler()
    runner, client = await start_server(store, on_miss=mirror)
    try:
        got = await client.request("GET", target, headers)
    finally:
        await runner.cleanup()
    if mirrored:
        assert (got.status, got.body, len(mirror.calls)) == (200, b"peer", 1)
    else:
        assert got.status == 404 and mirror.calls == []


async def test_present_content_is_never_mirrored(memory: tuple[MemoryStore, Content]) -> None:
    store, content = memory
    mirror = RecordingMissHandler()
    runner, client = await start_server(store, on_miss=mirror)
    try:
        for target in (f"/v2/x/blobs/{content.layer}", "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000"):
            got = await client.request("GET", target, {"X-Spegel-Mirrored": "true"})
            assert got.status == 200
            got = await client.request("GET", target)
            assert got.status == 200
    finally:
        await runner.cleanup()
    assert mirror.calls == []


@pytest.mark.parametrize("hang", [False, True], ids=["down", "hanging"])
@pytest.mark.parametrize(
    "target", [f"/v2/x/blobs/{Z}", f"/v2/x/manifests/{Z}", "/v2/x/manifests/v1?ns=docker.io", "/readyz"]
)
async def test_store_down_gives_a_prompt_503(hang: bool, target: str) -> None:
    runner, client = await start_server(BrokenStore(hang=hang), store_timeout=0.3)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        got = await client.request("GET", target, within=5)
        elapsed = loop.time() - started
    finally:
        await runner.cleanup()
    assert got.status == 503
    assert json.loads(got.body)["errors"][0]["code"] == "UNAVAILABLE"
    assert elapsed < 2.0
    # the API root and liveness do not depend on the store
    runner, client = await start_server(BrokenStore(hang=hang), store_timeout=0.3)  # type: ignore[arg-type]
    try:
        assert (await client.request("GET", "/v2/")).status == 200
        assert (await client.request("GET", "/livez")).status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("ready", "status"), [(True, 200), (False, 503)])
async def test_readiness_follows_the_router(
    memory: tuple[MemoryStore, Content], ready: bool, status: int
) -> None:
    store, _ = memory
    runner, client = await start_server(store, router=Router(ready))  # type: ignore[arg-type]
    try:
        assert (await client.request("GET", "/readyz")).status == status
    finally:
        await runner.cleanup()


async def test_content_deleted_after_tag_lookup_is_a_clean_404(memory: tuple[MemoryStore, Content]) -> None:
    """Presence is asked of the store every time: nothing "exists" from an earlier answer."""
    store, content = memory
    runner, client = await start_server(store)
    try:
        target = f"/v2/x/blobs/{content.layer}"
        assert (await client.request("HEAD", target)).status == 200
        store.delete_blob(content.layer)
        assert (await client.request("HEAD", target)).status == 404
    finally:
        await runner.cleanup()


async def test_client_going_away_mid_body_releases_everything(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    digest = store.add_blob(os.urandom(64 << 20))
    coordinator = PageCacheCoordinator(settle=0)
    metrics = Metrics()
    runner, client = await start_server(store, coordinator=coordinator, metrics=metrics)
    try:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"GET /v2/x/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readexactly(1 << 20)  # the body is flowing
        writer.transport.abort()  # RST, mid-body
        fd = os.open(store.blobs / "sha256" / digest.hex, os.O_RDONLY)
        try:
            await eventually(
                lambda: coordinator.in_flight(fd) == 0
                and metrics.registry.get_sample_value("http_requests_inflight", {"handler": "blob"}) == 0,
                within=10,
                interval=0.02,
                what="the aborted request released",
            )
            assert coordinator.in_flight(fd) == 0
            assert metrics.registry.get_sample_value("http_requests_inflight", {"handler": "blob"}) == 0
        finally:
            os.close(fd)
        # the server still serves
        got = await client.request("HEAD", f"/v2/x/blobs/{digest}")
        assert got.status == 200
    finally:
        await runner.cleanup()


async def test_http_metrics_carry_spegels_labels(memory: tuple[MemoryStore, Content]) -> None:
    store, content = memory
    metrics = Metrics()
    runner, client = await start_server(store, metrics=metrics)
    try:
        await client.request("GET", f"/v2/x/blobs/{content.layer}")
        await client.request("GET", f"/v2/x/blobs/{Z}")
        await client.request("HEAD", f"/v2/test/small/manifests/v1?ns={REGISTRY}")
    finally:
        await runner.cleanup()
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_count", {"handler": "blob", "method": "GET", "code": "200"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_count", {"handler": "blob", "method": "GET", "code": "404"}
        )
        == 1
    )
    assert registry.get_sample_value(
        "http_response_size_bytes_sum", {"handler": "blob", "method": "GET", "code": "200"}
    ) == len(content.data[content.layer])
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_count", {"handler": "manifest", "method": "HEAD", "code": "200"}
        )
        == 1
    )
    assert registry.get_sample_value("http_requests_inflight", {"handler": "blob"}) == 0

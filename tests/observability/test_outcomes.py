"""Mirror outcomes for ``/debug/web`` through the real mirror and registry server.

A client asks a front server (empty store, the real :class:`Mirror` behind
:class:`RecordingMirror`) for content that only a peer holds; the peer is a small aiohttp app
that can also send corrupt bytes. Each request must leave one :class:`MirrorOutcome` with its
key, the peer that served it, the result, the body bytes and a duration.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from serving.regsupport import RawClient, start_server  # tests/ is on the path (pyproject)

from spegel_py.debug.outcomes import RecordingHealth, RecordingMirror, recording_hook
from spegel_py.debug.web import MirrorOutcome, RecentOutcomes
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror
from spegel_py.routing.memory import MemoryNetwork, MemoryRouter
from spegel_py.store.memory import MemoryStore

PEER_HOST = "127.0.0.89"
SMALL = b"s" * 1000  # verified whole before the client sees it
LARGE = bytes(range(256)) * 1024  # 256 KiB: streamed through a relay buffer
CORRUPT = b"c" * (256 * 1024)  # the peer sends other bytes than its digest says


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Setup:
    client: RawClient
    outcomes: RecentOutcomes
    verdicts: list[tuple[str, bool]]


async def peer_app(blobs: dict[str, bytes]) -> tuple[web.AppRunner, int]:
    """A peer's registry: blobs by digest with the headers a spegel-py node sends."""

    async def blob(request: web.Request) -> web.StreamResponse:
        name = request.match_info["digest"]
        if name not in blobs:
            return web.Response(status=404)
        body = blobs[name] if name != digest(CORRUPT) else CORRUPT[:-1] + b"x"
        headers = {"Docker-Content-Digest": name, "Accept-Ranges": "bytes"}
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, PEER_HOST, 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    blobs = {digest(b): b for b in (SMALL, LARGE, CORRUPT)}
    peer_runner, port = await peer_app(blobs)
    network = MemoryNetwork()
    peer = MemoryRouter(network, peer_id="peer-a", host=PEER_HOST, port=port)
    await peer.advertise(blobs)
    here = MemoryRouter(network, peer_id="front")
    outcomes = RecentOutcomes()
    verdicts: list[tuple[str, bool]] = []
    mirror = Mirror(
        here,
        pool=BufferPool(count=2, size=64 * 1024),
        health=RecordingHealth(),
        on_result=recording_hook(lambda registry, served: verdicts.append((registry, served))),
    )
    runner, client = await start_server(MemoryStore(), on_miss=RecordingMirror(mirror, outcomes))
    try:
        yield Setup(client, outcomes, verdicts)
    finally:
        await runner.cleanup()
        await mirror.close()
        await peer_runner.cleanup()
        await here.close()
        await peer.close()


@pytest.mark.parametrize(
    ("method", "target", "key", "peer", "result", "size"),
    [
        ("GET", f"/v2/app/blobs/{digest(SMALL)}?ns=example.com", digest(SMALL), "peer-a", "hit", len(SMALL)),
        ("GET", f"/v2/app/blobs/{digest(LARGE)}?ns=example.com", digest(LARGE), "peer-a", "hit", len(LARGE)),
        ("HEAD", f"/v2/app/blobs/{digest(LARGE)}?ns=example.com", digest(LARGE), "peer-a", "hit", 0),
        ("GET", f"/v2/app/blobs/{digest(b'none')}?ns=example.com", digest(b"none"), "", "miss", 0),
        ("GET", "/v2/app/manifests/v1?ns=example.com", "example.com/app:v1", "", "miss", 0),
        ("GET", f"/v2/app/blobs/{digest(CORRUPT)}?ns=example.com", digest(CORRUPT), "peer-a", "aborted", 0),
    ],
    ids=["small-blob", "streamed-blob", "head", "unknown-blob", "unknown-tag", "corrupt-stream"],
)
async def test_each_mirrored_request_leaves_one_outcome(
    setup: Setup, method: str, target: str, key: str, peer: str, result: str, size: int
) -> None:
    response = await setup.client.request(method, target)
    assert response.status == (404 if result == "miss" else 200)
    (outcome,) = setup.outcomes()
    assert isinstance(outcome, MirrorOutcome)
    assert (outcome.key, outcome.peer, outcome.result, outcome.bytes) == (key, peer, result, size)
    assert 0 < outcome.seconds < 10
    assert setup.verdicts == [("example.com", result != "miss")]  # the metrics hook still runs


async def test_outcomes_are_newest_first(setup: Setup) -> None:
    for data in (SMALL, LARGE):
        await setup.client.request("GET", f"/v2/app/blobs/{digest(data)}?ns=example.com")
    assert [o.key for o in setup.outcomes()] == [digest(LARGE), digest(SMALL)]


async def manifest_peer(host: str, body: bytes) -> tuple[web.AppRunner, int]:
    """A peer that answers every tag with ``body`` (self-consistent: its digest is reported)."""

    async def manifest(request: web.Request) -> web.StreamResponse:
        headers = {"Docker-Content-Digest": digest(body)}
        return web.Response(
            body=body, headers=headers, content_type="application/vnd.oci.image.index.v1+json"
        )

    app = web.Application()
    app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", manifest)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]


async def test_a_tag_the_providers_disagree_on_is_a_disagreement_outcome() -> None:
    network = MemoryNetwork()
    runners, routers = [], []
    for n, (host, body) in enumerate([("127.0.0.91", b'{"a":1}'), ("127.0.0.92", b'{"b":2}')]):
        runner, port = await manifest_peer(host, body)
        router = MemoryRouter(network, peer_id=f"peer-{n}", host=host, port=port)
        await router.advertise(["example.com/app:v1"])
        runners.append(runner)
        routers.append(router)
    here = MemoryRouter(network, peer_id="front")
    outcomes = RecentOutcomes()
    mirror = Mirror(here, health=RecordingHealth(), on_result=recording_hook())
    runner, client = await start_server(MemoryStore(), on_miss=RecordingMirror(mirror, outcomes))
    try:
        response = await client.request("GET", "/v2/app/manifests/v1?ns=example.com")
        assert response.status == 404
        (outcome,) = outcomes()
        assert (outcome.key, outcome.peer, outcome.result) == ("example.com/app:v1", "", "disagreement")
        assert mirror.stats.tag_disagreements == 1
    finally:
        await runner.cleanup()
        await mirror.close()
        for r in runners:
            await r.cleanup()
        for router in [*routers, here]:
            await router.close()

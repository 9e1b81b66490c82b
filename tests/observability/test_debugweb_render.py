"""``/debug/web`` without a browser: served by aiohttp, HTML-escaped, newest outcomes first."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from spegel_py.debug.web import (
    Advertised,
    AdvertisedImage,
    DebugInfo,
    MirrorOutcome,
    RecentOutcomes,
    debug_routes,
    render_page,
)


def test_recent_outcomes_ring_is_bounded_newest_first() -> None:
    ring = RecentOutcomes(size=2)
    for key in ("a", "b", "c"):
        ring.add(MirrorOutcome(key, "p", "hit", 1, 0.1))
    assert [o.key for o in ring()] == ["c", "b"]


def test_user_supplied_names_are_escaped() -> None:
    page = render_page(
        peer_id="<b>id</b>",
        peers=["<i>peer</i>"],
        advertised=Advertised(images=[AdvertisedImage("r/<script>x</script>:v1")]),
        outcomes=[MirrorOutcome("k<", "<p>", "<miss>", 0, 0.0)],
        now=0.0,
    )
    assert "<script>" not in page and "<b>id" not in page and "<i>" not in page and "<miss>" not in page
    assert "&lt;script&gt;" in page


async def test_served_with_sync_and_async_sources() -> None:
    async def peers() -> Sequence[str]:
        return ["peer-a"]

    info = DebugInfo(
        peer_id=lambda: "me", peers=peers, advertised=Advertised, outcomes=lambda: [], clock=lambda: 1.7e9
    )
    app = web.Application()
    app.router.add_routes(debug_routes(info))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/debug/web")
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.text()
        assert "peer-a" in body and 'class="status ok"' in body and "no mirror requests yet" in body
        assert (await client.post("/debug/web")).status == 405
        assert await (await client.get("/debug/web/")).text() == body  # Spegel's path, with the slash
        metadata = await client.get("/debug/web/metadata")  # Spegel's shape, for scripts
        assert metadata.content_type == "application/json"
        assert await metadata.json() == {"libp2p": {"id": "me"}}

"""``/debug/web`` rendered by a real headless Chromium: the DOM holds what the node knows, and the
screenshot is a real page (not blank) with the status badge in the colour of the node's state.

The page is served by a real aiohttp server on loopback with :func:`debug_routes`; Chromium loads
it over HTTP exactly as an operator's browser would.
"""

from __future__ import annotations

import asyncio
import hashlib
import html.parser
import json
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from aiohttp import web
from harness.require import missing
from pngread import read_png
from support.poll import eventually

from spegel_py.debug.web import (
    Advertised,
    AdvertisedImage,
    DebugInfo,
    MirrorOutcome,
    RecentOutcomes,
    debug_routes,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOST = "127.0.0.47"
GREEN = (0x1A, 0x7F, 0x37)  # .status.ok: connected to peers
MAGENTA = (0xBF, 0x39, 0x89)  # .status.warn: no peers
PEER_ID = "12D3KooWDebugPagePeerIdForTheChromiumTest1234567890"
PEERS = ["12D3KooWPeerNumberOne", "12D3KooWPeerNumberTwo"]
HOSTILE = "127.0.0.1:5000/evil<script>document.title='pwned'</script>:v1"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    missing("chromium not found (scripts/install-deps.sh installs it)")
    raise AssertionError("unreachable")


async def run_chromium(url: str, tmp: Path, *args: str) -> bytes:
    """One headless Chromium run (its own profile dir); stdout. Killed by pid on timeout."""
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",  # root in a container: the sandbox needs user namespaces we may not have
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",  # no traffic beyond loopback
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp}",
        "--window-size=1280,900",
        *args,
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


class Cells(html.parser.HTMLParser):
    """Text of every ``<td>`` per table id, the status badge, and the document title."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.status = ""
        self.title = ""
        self.scripts = 0
        self._table = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "td":
            self._in = "td"
            self.tables[self._table].append("")
        elif tag == "span" and a.get("id") == "status":
            self._in = "status"
        elif tag == "title":
            self._in = "title"
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span", "title"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "td":
            self.tables[self._table][-1] += data
        elif self._in == "status":
            self.status += data
        elif self._in == "title":
            self.title += data


def make_info(peers: Sequence[str]) -> DebugInfo:
    recent = RecentOutcomes(size=3)
    for i in range(4):  # one more than the ring holds: the oldest drops out
        recent.add(MirrorOutcome(f"sha256:{i:064x}", PEERS[0], "hit", 1_000_000 + i, 0.012))
    recent.add(MirrorOutcome("127.0.0.1:5000/app:v2", "", "miss", 0, 0.02))

    async def peer_list() -> Sequence[str]:  # the router's answer may need an await
        return peers

    advertised = Advertised(
        images=[AdvertisedImage("127.0.0.1:5000/app:v1", "sha256:" + "ab" * 32), AdvertisedImage(HOSTILE)],
        tags=2,
        image_digests=2,
        content_digests=9,
    )
    return DebugInfo(peer_id=lambda: PEER_ID, peers=peer_list, advertised=lambda: advertised, outcomes=recent)


@pytest.fixture
async def page(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_routes(debug_routes(make_info(request.param)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # bound above
    try:
        yield f"http://{HOST}:{port}/debug/web"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("page", "badge", "absent", "status"),
    [
        (PEERS, GREEN, MAGENTA, "connected: 2 peers"),
        ([], MAGENTA, GREEN, "no peers in the routing table"),
    ],
    indirect=["page"],
    ids=["peers", "no-peers"],
)
async def test_debug_page_in_headless_chromium(
    page: str, badge: tuple[int, int, int], absent: tuple[int, int, int], status: str, tmp_path: Path
) -> None:
    dom = (await run_chromium(page, tmp_path / "profile-dom", "--dump-dom")).decode()
    cells = Cells()
    cells.feed(dom)
    assert cells.title == "spegel-py debug"  # the hostile image name did not run as a script
    assert cells.scripts == 0
    assert PEER_ID in dom
    assert cells.status == status
    expected_peers = [p for p in PEERS if p in (PEERS if "connected" in status else [])]
    assert cells.tables["peers"] == (expected_peers or ["none"])
    assert cells.tables["images"][::2] == ["127.0.0.1:5000/app:v1", HOSTILE]
    outcomes = cells.tables["outcomes"]
    rows = [outcomes[i : i + 6] for i in range(0, len(outcomes), 6)]
    assert [r[1:5] for r in rows] == [  # newest first; the ring kept three
        ["127.0.0.1:5000/app:v2", "-", "miss", "0"],
        [f"sha256:{3:064x}", PEERS[0], "hit", "1,000,003"],
        [f"sha256:{2:064x}", PEERS[0], "hit", "1,000,002"],
    ]
    assert all(r[5] == "12.0 ms" for r in rows[1:])

    shot = tmp_path / "debug-web.png"
    await run_chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}")
    image = read_png(shot)
    assert (image.width, image.height) == (1280, 900)
    assert image.non_white() > 20_000, "the page rendered (text, tables, badge)"
    badge_pixels = image.count(badge, tolerance=6)
    assert badge_pixels > 1_000, "the status badge in its state's colour"
    # the other state's badge is absent (green also colours the small bold "hit" cells)
    assert image.count(absent, tolerance=6) < badge_pixels // 5


def _one_image_layout(root: Path) -> None:
    """``<root>/test/app`` tagged ``v1`` (config + one small layer): what the real node advertises."""
    layout = root / "test" / "app"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode())
    layer = blob(b"\x1f\x8b" + bytes(4094))
    manifest = blob(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode())  # fmt: skip
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]}  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))


async def test_a_real_registry_process_debug_page_in_headless_chromium(tmp_path: Path) -> None:
    """The page a running ``spegel-py registry`` serves (its own router, advertiser and mirror),
    loaded by Chromium: the node's peer id, no peers (alone), its image, a recorded miss."""
    def free_port() -> int:
        with socket.socket() as s:
            s.bind((HOST, 0))
            return int(s.getsockname()[1])

    _one_image_layout(tmp_path / "layouts")
    port, mport, rport = free_port(), free_port(), free_port()
    spegel = str(Path(sys.executable).with_name("spegel-py"))
    argv = [spegel, "registry", "--content-store", "oci-layout", "--oci-layout-path",
            str(tmp_path / "layouts"), "--oci-layout-registry", "127.0.0.1:5000",
            "--registry-addr", f"{HOST}:{port}", "--metrics-addr", f"{HOST}:{mport}",
            "--router-addr", f"{HOST}:{rport}", "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://{HOST}:{port}"
    debug = f"http://{HOST}:{mport}/debug/web/"  # the metrics listener, as in Spegel

    def fetch(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(path if path.startswith("http") else base + path, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""  # not listening yet

    async def until(what: str, condition: Callable[[], Awaitable[bool]]) -> None:
        async def met() -> bool:
            if await condition():
                return True
            assert proc.returncode is None, "spegel-py exited"
            return False

        await eventually(met, within=30, interval=0.1, what=what)

    async def ready() -> bool:
        return (await asyncio.to_thread(fetch, "/readyz"))[0] == 200

    async def lists_its_image() -> bool:
        return "127.0.0.1:5000/test/app:v1" in (await asyncio.to_thread(fetch, debug))[1]

    try:
        await until("readiness", ready)
        missing = f"sha256:{'0' * 64}"
        assert (await asyncio.to_thread(fetch, f"/v2/x/blobs/{missing}?ns=example.com"))[0] == 404
        await until("the advertiser's first walk", lists_its_image)

        dom = (await run_chromium(debug, tmp_path / "profile-dom", "--dump-dom")).decode()
        cells = Cells()
        cells.feed(dom)
        assert cells.title == "spegel-py debug" and cells.scripts == 0
        peer_id = dom.split('<code id="peer-id">', 1)[1].split("</code>", 1)[0]
        assert peer_id.startswith("12D3KooW")  # the node's own Ed25519 identity from --data-dir
        assert cells.status == "no peers in the routing table"  # alone: no bootstrap configured
        assert cells.tables["peers"] == ["none"]
        assert cells.tables["images"][0] == "127.0.0.1:5000/test/app:v1"
        assert cells.tables["outcomes"][1:4] == [missing, "-", "miss"]

        shot = tmp_path / "real-node.png"
        await run_chromium(debug, tmp_path / "profile-shot", f"--screenshot={shot}")
        image = read_png(shot)
        assert image.non_white() > 10_000, "the page rendered"
        assert image.count(MAGENTA, tolerance=6) > 1_000, "the no-peers badge"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

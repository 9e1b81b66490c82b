"""``GET /debug/web/``: one self-contained HTML page that shows what this node knows right now.

Operators open it when a pull did not come from a peer: is the node in the DHT (its peer id, the
peers in its routing table), what it advertises, and how its recent mirror attempts ended. The
page has no external assets (styles inline, no scripts) so it renders inside air-gapped clusters
and through ``kubectl port-forward``. It only reads: the app passes a :class:`DebugInfo` whose
callables return snapshots, so this module knows nothing about the router, store or mirror.

The app mounts it on the metrics listener (``--metrics-addr``), where Spegel serves its debug
page, when ``--debug-web-enabled`` is set; not on the registry port, which every client of the
cluster (and the chart's NodePort) reaches. ``/debug/web/metadata`` is the node's peer id as JSON
(``{"libp2p": {"id": ...}}``, Spegel's shape), for scripts.
"""

from __future__ import annotations

import html
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

from spegel_py.httpx.expect import expect_handler

T = TypeVar("T")

# A callable that answers now or after an await (the router's peer list may need the trio thread).
Source = Callable[[], T | Awaitable[T]]

# Results that mean "a peer served it"; anything else is shown as a failure or a miss.
_GOOD_RESULTS = frozenset({"hit", "ok", "success"})
_OUTCOME_HEADERS = ("Time (UTC)", "Key", "Peer", "Result", "Bytes", "Duration")
_MAX_ROWS = 200  # the page stays small even if a caller passes a long history


@dataclass(frozen=True)
class MirrorOutcome:
    """How one mirror attempt ended: ``key`` (digest or tag reference), the ``peer`` that answered
    ('' when none did), ``result`` (e.g. hit, miss, failed), body ``bytes`` and wall ``seconds``."""

    key: str
    peer: str
    result: str
    bytes: int
    seconds: float
    at: float = field(default_factory=time.time)  # wall clock, shown as UTC


@dataclass(frozen=True)
class AdvertisedImage:
    """One image this node advertises: its reference (``registry/repo:tag`` or ``@digest``)."""

    name: str
    digest: str = ""


@dataclass(frozen=True)
class Advertised:
    """Counts of the keys this node advertises, and the images they come from."""

    images: Sequence[AdvertisedImage] = ()
    tags: int = 0
    image_digests: int = 0
    content_digests: int = 0


@dataclass(frozen=True)
class DebugInfo:
    """What the page shows, as callables so every request sees the current state."""

    peer_id: Source[str]
    peers: Source[Sequence[str]]
    advertised: Source[Advertised]
    outcomes: Source[Iterable[MirrorOutcome]]
    # The page's "as of" stamp; injectable so two renders can be compared byte for byte.
    clock: Callable[[], float] = time.time


class RecentOutcomes:
    """A bounded ring of the latest mirror outcomes (newest first), filled by :meth:`add`
    (``app.py`` has :class:`spegel_py.debug.outcomes.RecordingMirror` add one per request)."""

    def __init__(self, *, size: int = 50) -> None:
        self._ring: deque[MirrorOutcome] = deque(maxlen=size)

    def add(self, outcome: MirrorOutcome) -> None:
        self._ring.append(outcome)

    def __call__(self) -> list[MirrorOutcome]:
        return list(reversed(self._ring))


async def _get(source: Source[T]) -> T:
    value = source()
    if inspect.isawaitable(value):
        return await value
    return value


def debug_routes(info: DebugInfo) -> list[web.RouteDef]:
    """``/debug/web/`` (also without the slash) and ``/debug/web/metadata`` (GET, and HEAD
    through aiohttp's GET handling)."""

    async def handle(_: web.Request) -> web.Response:
        page = render_page(
            peer_id=await _get(info.peer_id),
            peers=list(await _get(info.peers)),
            advertised=await _get(info.advertised),
            outcomes=list(await _get(info.outcomes))[:_MAX_ROWS],
            now=info.clock(),
        )
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"libp2p": {"id": await _get(info.peer_id)}},
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    return [
        web.get("/debug/web", handle, expect_handler=expect_handler),
        web.get("/debug/web/", handle, expect_handler=expect_handler),
        web.get("/debug/web/metadata", metadata, expect_handler=expect_handler),
    ]


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.status{display:inline-block;padding:6px 14px;border-radius:6px;color:#fff;font-weight:600}
.ok{background:#1a7f37}.warn{background:#bf3989}
code{font-family:ui-monospace,monospace;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.hit{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.counts span{display:inline-block;margin-right:18px;padding:8px 12px;background:#ddf4ff;border-radius:6px}
.empty{color:#656d76;font-style:italic}
"""


def render_page(
    *,
    peer_id: str,
    peers: Sequence[str],
    advertised: Advertised,
    outcomes: Sequence[MirrorOutcome],
    now: float,
) -> str:
    """The whole page; every value from the node is HTML-escaped (image names come from users)."""
    e = html.escape
    healthy = bool(peers)
    plural = "s" if len(peers) != 1 else ""
    status = (
        f'<span id="status" class="status ok">connected: {len(peers)} peer{plural}</span>'
        if healthy
        else '<span id="status" class="status warn">no peers in the routing table</span>'
    )
    peer_rows = "".join(f"<tr><td><code>{e(p)}</code></td></tr>" for p in peers)
    image_rows = "".join(
        f"<tr><td>{e(i.name)}</td><td><code>{e(i.digest)}</code></td></tr>" for i in advertised.images
    )
    outcome_rows = "".join(
        "<tr>"
        f"<td>{e(time.strftime('%H:%M:%S', time.gmtime(o.at)))}</td>"
        f"<td><code>{e(o.key)}</code></td>"
        f"<td><code>{e(o.peer) or '-'}</code></td>"
        f'<td class="{"hit" if o.result in _GOOD_RESULTS else "bad"}">{e(o.result)}</td>'
        f'<td class="num">{o.bytes:,}</td>'
        f'<td class="num">{o.seconds * 1000:.1f} ms</td>'
        "</tr>"
        for o in outcomes
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    counts = "".join(
        f"<span>{label} <b>{value}</b></span>"
        for label, value in (
            ("images", len(advertised.images)),
            ("tags", advertised.tags),
            ("image digests", advertised.image_digests),
            ("content digests", advertised.content_digests),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>spegel-py debug</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body>
<h1>spegel-py</h1>
<p>Peer id <code id="peer-id">{e(peer_id)}</code> &middot; {e(stamp)}</p>
{status}
<h2>Peers in the routing table ({len(peers)})</h2>
{_table(["Peer"], peer_rows, "peers", "none")}
<h2>Advertised</h2>
<div class="counts" id="counts">{counts}</div>
<p></p>
{_table(["Image", "Digest"], image_rows, "images", "nothing advertised")}
<h2>Recent mirror outcomes ({len(outcomes)})</h2>
{_table(_OUTCOME_HEADERS, outcome_rows, "outcomes", "no mirror requests yet")}
</body></html>
"""


def _table(headers: Sequence[str], rows: str, table_id: str, empty: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = rows or f'<tr><td class="empty" colspan="{len(headers)}">{empty}</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

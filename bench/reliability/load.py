"""Row "load": many connections and a request mix against one node that has peers.

Two real nodes: node 1 (the target) holds ``test/small`` in its containerd, node 2 holds
``test/multi`` (all platforms), so node 1 serves small's blobs from its own store and relays
multi's from node 2. ``connections`` keep-alive connections send ``requests`` requests, mixed:
local blobs (some ranged, some HEAD), relayed blobs, manifests by tag and by digest, 404s
(unknown digests and tags) and malformed or hostile requests on connections of their own. Every
200 blob body is hashed and compared with its digest.

Held to: 0 answers >= 500, 0 wrong bodies; after the load, the target's open descriptors back
to the baseline, no relay buffer in use, resident memory within 16 MiB of the baseline. The
baseline is taken after a warm-up pass of the same mix (a tenth of the requests), because the
relay's buffer pool and the interpreter's caches grow on first use by design and stay; the
cold figure is reported beside it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

from harness import BuiltImage
from support.poll import wait_until

from . import common
from .common import Row, Scale
from .httpio import Answer, Conn, request
from .lab import Lab, lab

RSS_BOUND_KIB = 16 << 10
ACCEPT = (
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass(frozen=True)
class Req:
    kind: str
    data: bytes
    head: bool = False
    digest: str = ""  # expected sha256 of a 200 body (blobs fetched whole)
    fresh: bool = False  # on a connection of its own (malformed requests)


def _blobs(image: BuiltImage) -> list[str]:
    manifests = {image.digest, *image.platforms.values()}
    return [d for d in image.blobs if d not in manifests]


def _manifests(image: BuiltImage) -> list[str]:
    return sorted({image.digest, *image.platforms.values()})


def malformed(host: str, small: BuiltImage) -> list[bytes]:
    """Hostile or broken requests; any answer below 500 (or a closed connection) is right."""
    repo, blob = small.repository(), _blobs(small)[0]
    return [
        request("GET", "/v2/../../../etc/passwd", host),
        request("GET", "/v2/%2e%2e/%2e%2e/etc/passwd", host),
        request("GET", f"/v2/{repo}/blobs/sha256:zz", host),
        request("GET", f"/v2/{repo}/blobs/{blob}/../../../../etc/passwd", host),
        request("BREW", "/v2/", host),
        request("POST", f"/v2/{repo}/blobs/uploads/", host, body=b"x" * 1000),
        request("GET", f"/v2/{repo}/blobs/{blob}", host, {"Range": "bytes=99999999999-"}),
        request("GET", f"/v2/{repo}/blobs/{blob}", host, {"Range": "bytes=5-1,garbage"}),
        request("GET", f"/v2/{repo}/manifests/v1?ns=%ff%fe%00", host),
        request("GET", "/v2/" + "a/" * 3000 + "manifests/v1", host),
        request("GET", "/v2/", host, {"X-Long": "a" * 10_000}),
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET /v2/ HTTP/1.1\nHost: x\nX-Bare: a\rb\n\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]


def mix(lab_: Lab, count: int, seed: int) -> list[Req]:
    """``count`` requests in a fixed pseudo-random order (``seed``)."""
    rnd = random.Random(seed)
    host = lab_.node(1).spegel.addr
    small, multi = lab_.images.small, lab_.images.multi
    ns = f"?ns={lab_.upstream.addr}"
    bad = malformed(host, small)
    local = _blobs(small)
    relayed = _blobs(multi)
    out = []
    for _ in range(count):
        roll = rnd.random()
        if roll < 0.25:
            image, pool, kind = small, local, "local_blob"
        elif roll < 0.45:
            image, pool, kind = multi, relayed, "relayed_blob"
        else:
            image, pool, kind = small, local, ""
        if kind:
            # small blobs mostly: the client shares two cores with the server
            digest = min(rnd.sample(pool, 2), key=lambda d: image.blobs[d])
            path = f"/v2/{image.repository()}/blobs/{digest}{ns}"
            shape = rnd.random()
            if shape < 0.1:
                out.append(Req(kind, request("HEAD", path, host), head=True))
            elif shape < 0.2:
                out.append(Req(kind, request("GET", path, host, {"Range": "bytes=0-1023"})))
            else:
                out.append(Req(kind, request("GET", path, host), digest=digest))
        elif roll < 0.6:
            image = rnd.choice((small, multi))
            path = f"/v2/{image.repository()}/manifests/{image.tag}{ns}"
            out.append(Req("manifest_tag", request("GET", path, host, {"Accept": ACCEPT})))
        elif roll < 0.75:
            image = rnd.choice((small, multi))
            digest = rnd.choice(_manifests(image))
            path = f"/v2/{image.repository()}/manifests/{digest}{ns}"
            head = rnd.random() < 0.3
            out.append(
                Req(
                    "manifest_digest",
                    request("HEAD" if head else "GET", path, host, {"Accept": ACCEPT}),
                    head=head,
                    digest="" if head else digest,
                )
            )
        elif roll < 0.9:
            missing = f"sha256:{rnd.getrandbits(256):064x}"
            what = rnd.choice(("blobs", "manifests"))
            ref = missing if rnd.random() < 0.7 else f"nope{rnd.randrange(1000)}"
            path = f"/v2/{small.repository()}/{what}/{ref}{ns}"
            out.append(Req("not_found", request("GET", path, host, {"Accept": ACCEPT})))
        else:
            out.append(Req("malformed", rnd.choice(bad), fresh=True))
    return out


async def drive(host: str, port: int, reqs: list[Req], connections: int) -> dict[str, Any]:
    """Send ``reqs`` over ``connections`` keep-alive connections; tally what came back."""
    queue = deque(reqs)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    wrong: list[str] = []
    retried = 0

    async def one(conn: Conn, req: Req) -> Answer:
        nonlocal retried
        answer = await conn.send(req.data, head_only=req.head, hash_body=bool(req.digest))
        if answer.status == 0 and not req.fresh:  # a kept-alive connection closed under us
            retried += 1
            answer = await conn.send(req.data, head_only=req.head, hash_body=bool(req.digest))
        return answer

    async def worker() -> None:
        conn = Conn(host, port)
        try:
            while queue:
                req = queue.popleft()
                started = time.perf_counter()
                if req.fresh:
                    own = Conn(host, port)
                    try:
                        answer = await own.send(req.data)
                    finally:
                        await own.close()
                else:
                    answer = await one(conn, req)
                latencies[req.kind].append(time.perf_counter() - started)
                statuses[req.kind][answer.status] += 1
                if req.digest and answer.status == 200 and answer.digest != req.digest:
                    wrong.append(f"{req.kind} {req.digest} -> {answer.digest}")
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "rate": round(len(reqs) / seconds),
        "statuses": {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())},
        "p99_ms": {k: round(common.percentile(v, 0.99) * 1000, 1) for k, v in sorted(latencies.items())},
        "server_errors": sum(n for c in statuses.values() for s, n in c.items() if s >= 500),
        "wrong_bodies": wrong,
        "retried": retried,
        "unanswered": sum(c.get(0, 0) for k, c in statuses.items() if k != "malformed"),
    }


def _settled(pid: int, metrics_url: str, fds: int) -> bool:
    return common.open_fds(pid) <= fds and common.buffers_in_use(metrics_url) == 0


def run(scale: Scale) -> Row:
    with lab(size=2, extra_args=scale.load_args) as lab_:
        target, peer = lab_.node(1), lab_.node(2)
        small, multi = lab_.images.small, lab_.images.multi
        target.containerd.pull(lab_.ref(small))
        peer.containerd.pull(lab_.ref(multi), all_platforms=True)
        lab_.cluster.wait_findable([multi], by=[target])
        pid, metrics_url = target.spegel.pid, target.spegel.metrics_url
        host, port = target.ip, target.spegel.port
        cold = {"rss_kib": common.rss_kib(pid), "fds": common.open_fds(pid)}
        warm = asyncio.run(drive(host, port, mix(lab_, scale.load_requests // 10, 1), scale.load_connections))
        wait_until(
            lambda: _settled(pid, metrics_url, cold["fds"] + 8),
            within=60,
            interval=0.5,
            what="descriptors and buffers to settle after the warm-up",
        )
        base = {"rss_kib": common.rss_kib(pid), "fds": common.open_fds(pid)}
        result = asyncio.run(drive(host, port, mix(lab_, scale.load_requests, 2), scale.load_connections))
        settle_start = time.monotonic()
        fds_ok = True
        try:
            wait_until(
                lambda: _settled(pid, metrics_url, base["fds"]),
                within=60,
                interval=0.5,
                what="descriptors back to the baseline and no relay buffer in use",
            )
        except AssertionError:
            fds_ok = False
        after = {
            "rss_kib": common.rss_kib(pid),
            "fds": common.open_fds(pid),
            "buffers_in_use": common.buffers_in_use(metrics_url),
            "settle_s": round(time.monotonic() - settle_start, 1),
        }
        alive = target.spegel.running()
    grew = after["rss_kib"] - base["rss_kib"]
    row = Row(
        "load",
        f"{scale.load_connections} connections, {scale.load_requests:,} requests (local and relayed "
        "blobs, manifests by tag and digest, 404s, malformed) against node 1 of 2",
        f"{result['server_errors']} 5xx, {len(result['wrong_bodies'])} wrong bodies, "
        f"{result['rate']} req/s; RSS {base['rss_kib'] >> 10} -> {after['rss_kib'] >> 10} MiB "
        f"({grew / 1024:+.1f}); fds {base['fds']} -> {after['fds']}; buffers in use "
        f"{after['buffers_in_use']:.0f}",
        "0 5xx, 0 wrong bodies, RSS within 16 MiB, fds and relay buffers back",
        True,
        details={"cold": cold, "warm_up": warm, "baseline": base, "after": after, "load": result},
    )
    row.check(alive, "the target's spegel-py exited")
    row.check(result["server_errors"] == 0, f"{result['server_errors']} answers >= 500")
    row.check(not result["wrong_bodies"], f"wrong bodies: {result['wrong_bodies'][:3]}")
    row.check(result["unanswered"] == 0, f"{result['unanswered']} well-formed requests got no answer")
    row.check(grew <= RSS_BOUND_KIB, f"RSS grew {grew} KiB")
    row.check(fds_ok, f"fds {after['fds']} > baseline {base['fds']} or buffers in use")
    return row

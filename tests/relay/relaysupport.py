"""Test doubles for the relay: peers with misbehaviour knobs, a router, a front server, a cluster.

Peers are real aiohttp servers on distinct 127.0.0.x addresses serving bytes from memory, so the
mirror's sockets, timeouts and keep-alive are exercised for real. The front server stands in for
the registry server's seam: on a request it calls ``Mirror.fetch`` and ``respond``. A
:class:`Cluster` holds the peers, mirrors, fronts and sessions of one test and tears them down.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from spegel_py.errors import NotFoundError, RangeNotSatisfiableError
from spegel_py.httpx.answers import answer_for
from spegel_py.httpx.ranges import parse_range
from spegel_py.oci.paths import Kind
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror
from spegel_py.relay.peerclient import PeerClient
from spegel_py.relay.peerhealth import PeerHealth
from spegel_py.relay.request import MirrorRequest
from spegel_py.relay.settings import MirrorSettings
from spegel_py.routing.base import Peer


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Knobs:
    """How a fake peer misbehaves. Defaults: a healthy peer."""

    missing: bool = False  # answer 404 for everything
    first_byte_delay: float = 0.0  # seconds before the response head
    die_after: int | None = None  # abort the connection after this many body bytes
    stall_after: int | None = None  # go silent (connection open) after this many body bytes
    drip_after: int | None = None  # after this many body bytes, send one byte every drip_every s
    drip_every: float = 2.5
    corrupt: bool = False  # flip one byte in the middle of every body
    corrupt_ranges: bool = False  # flip one byte in the middle of every range sent (206 bodies)
    silent: bool = False  # accept the request and never answer
    ignore_range: bool = False
    tag_digest: str | None = None  # Docker-Content-Digest reported for tags (default: the truth)


@dataclass
class FakePeer:
    """A peer registry holding ``blobs`` (digest -> bytes) and ``tags`` (name:tag -> digest)."""

    host: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    knobs: Knobs = field(default_factory=Knobs)
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    port: int = 0
    body_bytes_sent: int = 0  # response body bytes written, over all requests
    _runner: web.AppRunner | None = None
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def peer(self) -> Peer:
        return Peer(f"peer-{self.host}", self.host, self.port)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v2/{name:.+}/{kind:(blobs|manifests)}/{ref}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._never.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ref = request.match_info["ref"]
        name = request.match_info["name"]
        self.requests.append(
            (request.method, ref, request.headers.get("Range"), request.headers.get("X-Spegel-Mirrored"))
        )
        knobs = self.knobs
        if knobs.silent:
            await self._never.wait()
        if knobs.first_byte_delay:
            await asyncio.sleep(knobs.first_byte_delay)  # the misbehaviour under test, not a sync
        digest = ref if ref.startswith("sha256:") else self.tags.get(f"{name}:{ref}")
        data = self.blobs.get(digest) if digest else None
        if knobs.missing or data is None or digest is None:
            return web.Response(status=404, text="{}")
        if not ref.startswith("sha256:") and knobs.tag_digest is not None:
            digest = knobs.tag_digest
        if knobs.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        headers = {
            "Docker-Content-Digest": digest,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status, start, end = 200, 0, len(data)
        if not knobs.ignore_range:
            try:
                selected = parse_range(request.headers.get("Range"), len(data))
            except RangeNotSatisfiableError:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            if selected is not None:
                status, start, end = 206, selected.start, selected.end
                headers["Content-Range"] = selected.content_range()
        body = data[start:end]
        if knobs.corrupt_ranges and status == 206:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if knobs.drip_after is not None:
            await self._drip(response, body, knobs.drip_after, knobs.drip_every)
            return response
        if knobs.stall_after is not None:
            await self._write(response, body[: knobs.stall_after])
            await self._never.wait()
        if knobs.die_after is not None:
            await self._write(response, body[: knobs.die_after])
            await response.drain()
            assert request.transport is not None
            request.transport.abort()
            return response
        view = memoryview(body)
        for pos in range(0, len(body), 1 << 20):
            await self._write(response, view[pos : pos + (1 << 20)])
        await response.write_eof()
        return response

    async def _drip(self, response: web.StreamResponse, body: bytes, after: int, every: float) -> None:
        """The first ``after`` bytes at once, then one byte per ``every`` seconds until the
        client hangs up or the peer stops (the slow peer of issue 11)."""
        await self._write(response, body[:after])
        for pos in range(after, len(body)):
            try:
                # The wait is the misbehaviour under test; it ends early when the peer stops.
                await asyncio.wait_for(self._never.wait(), every)
                return
            except TimeoutError:
                pass
            try:
                await self._write(response, body[pos : pos + 1])
            except ConnectionError:
                return
        await response.write_eof()

    async def _write(self, response: web.StreamResponse, data: bytes | memoryview) -> None:
        await response.write(data)
        self.body_bytes_sent += len(data)


class FakeRouter:
    """Yields a fixed provider list for every key (or per-key lists); counts lookups."""

    def __init__(
        self, peers: Iterable[Peer] = (), by_key: dict[str, list[Peer]] | None = None, *, linger: bool = False
    ) -> None:
        """``linger``: after the last provider, keep the lookup open (a DHT still searching)."""
        self.peers = list(peers)
        self.by_key = by_key or {}
        self.linger = linger
        self.lookups: list[str] = []

    def ready(self) -> bool:
        return True

    async def advertise(self, keys: Iterable[str]) -> None:
        return None

    async def withdraw(self, keys: Iterable[str]) -> None:
        return None

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        self.lookups.append(key)
        for peer in self.by_key.get(key, self.peers)[:limit]:
            yield peer
        if self.linger:
            await asyncio.Event().wait()  # until the mirror closes the lookup

    async def close(self) -> None:
        return None


class Front:
    """The registry server's seam, reduced to the mirror call: fetch, then respond or 404."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.port = 0
        self._runner: web.AppRunner | None = None
        # Seconds from request to the mirror's answer (or 404), measured in the server: what a
        # bar like "404 within 100 ms" is about, without the test client's own overhead.
        self.answer_times: list[float] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v2/{name:.+}/{kind:(blobs|manifests)}/{ref}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        assert kind in ("blobs", "manifests")
        method = request.method
        assert method in ("GET", "HEAD")
        mirror_request = MirrorRequest(
            registry=request.query.get("ns", "docker.io"),
            name=request.match_info["name"],
            reference=request.match_info["ref"],
            kind=kind,  # type: ignore[arg-type]  # checked just above
            method=method,  # type: ignore[arg-type]  # checked just above
            range=request.headers.get("Range"),
            accept=request.headers.get("Accept"),
        )
        started = time.perf_counter()
        try:
            result = await self.mirror.fetch(mirror_request)
        except NotFoundError as exc:
            self.answer_times.append(time.perf_counter() - started)
            return answer_for(exc, Kind(kind))
        self.answer_times.append(time.perf_counter() - started)
        return await result.respond(request)


class Cluster:
    """Peers, a router over them, and a mirror behind a front server, torn down together."""

    def __init__(self) -> None:
        self.peers: list[FakePeer] = []
        self.fronts: list[Front] = []
        self.mirrors: list[Mirror] = []
        self.sessions: list[aiohttp.ClientSession] = []
        self.pools: list[BufferPool] = []
        self._sockets: list[socket.socket] = []
        self._next_host = 2

    async def peer(
        self, blobs: dict[str, bytes], tags: dict[str, str] | None = None, **knobs: Any
    ) -> FakePeer:
        peer = FakePeer(f"127.0.0.{self._next_host}", dict(blobs), dict(tags or {}), Knobs(**knobs))
        self._next_host += 1
        await peer.start()
        self.peers.append(peer)
        return peer

    def dead_peer(self) -> Peer:
        """An address nothing listens on: connections are refused, as for a node that died."""
        host = f"127.0.0.{self._next_host}"
        self._next_host += 1
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        return Peer(f"dead-{host}", host, port)

    def blackhole_peer(self) -> Peer:
        """An address whose connections are never accepted, as for a node that vanished (its
        SYNs go unanswered): a listener with a full accept queue drops further SYNs."""
        host = f"127.0.0.{self._next_host}"
        self._next_host += 1
        listener = socket.socket()
        listener.bind((host, 0))
        listener.listen(0)
        filler = socket.socket()
        filler.settimeout(5)
        filler.connect(listener.getsockname())  # takes the one queue slot, never accepted
        self._sockets += [listener, filler]
        return Peer(f"blackhole-{host}", host, listener.getsockname()[1])

    async def mirror(
        self,
        providers: Iterable[Peer] | FakeRouter,
        *,
        pool: BufferPool | None = None,
        health: PeerHealth | None = None,
        client: PeerClient | None = None,
        **settings: Any,
    ) -> tuple[Front, Mirror]:
        router = providers if isinstance(providers, FakeRouter) else FakeRouter(providers)
        pool = pool or BufferPool(count=8, size=64 * 1024)
        self.pools.append(pool)
        mirror = Mirror(
            router,
            client=client or PeerClient(),
            pool=pool,
            health=health,
            settings=MirrorSettings(**settings),
        )
        front = Front(mirror)
        await front.start()
        self.mirrors.append(mirror)
        self.fronts.append(front)
        return front, mirror

    def session(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        for front in self.fronts:
            await front.stop()
        # Every relay buffer came back, whatever the test did (responses are over by now).
        leaked = [(pool.capacity - pool.free) for pool in self.pools if pool.free != pool.capacity]
        for mirror in self.mirrors:
            await mirror.close()
        for peer in self.peers:
            await peer.stop()
        for sock in self._sockets:
            sock.close()
        assert not leaked, f"relay buffers not returned to their pools: {leaked}"

"""The mirror path: serve a local miss from peers, fast, verified, and never hanging the client.

The registry server calls :meth:`Mirror.serve` (its ``Mirror`` seam) for a request that missed
locally and did not come from a peer (no ``X-Spegel-Mirrored: true``). The mirror looks the key
up in the router, asks providers with ``X-Spegel-Mirrored: true`` (so they answer from local
content only), hedges across them (:mod:`.hedging`), and returns once it has a good answer head,
so a 404 (containerd then falls back to the next host or upstream) comes before any byte is
promised. Manifests, HEADs and small blobs are read and verified whole before the client sees
anything; large blobs are relayed by :mod:`.stream` (through a pooled buffer), hashed
as they pass, continued from another provider with ``Range`` if a peer breaks off, and their
last bytes are held back until the digest checks out: on a mismatch the client connection is
dropped, so no client ever receives a complete wrong body.

Tag policy (``resolve_tags`` / ``resolve_latest``): a tag is mutable, and a peer's copy of it may
be older than upstream's. Tags are resolved by peers only when ``resolve_tags`` is on (the
``resolve`` capability in hosts.toml); ``:latest`` is never resolved by peers unless
``resolve_latest`` is set, because it is the tag most likely to have moved (Go Spegel's
``--resolve-latest-tag`` defaults to true; spegel-py's default is the safer one). A tag that may
not be resolved is a miss (404), and containerd asks upstream. The bytes of a tag's manifest are
verified against the ``Docker-Content-Digest`` the peer reports, which must parse.

Stale providers: a peer that refused, was unreachable within ``dial_timeout`` or answered 404 is
remembered for the key (:mod:`.peerhealth`, seconds), and once every known provider failed the
mirror waits for further ones only ``first_provider_timeout``; on loopback or a LAN a request
whose providers are all dead or stale gets its 404 within 100 ms (a black-holed address costs
one ``dial_timeout`` the first time). Slow peers are hedged around but not negative-cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from spegel_py.errors import (
    BufferPoolExhaustedError,
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidDigestError,
    NotFoundError,
    PeerCorruptError,
    PeerError,
    PeerMissError,
    RangeNotSatisfiableError,
)
from spegel_py.httpx.ranges import parse_range
from spegel_py.oci.digest import Digest
from spegel_py.oci.errors import ErrorCode, error_body
from spegel_py.oci.filters import RegistryFilter
from spegel_py.oci.paths import DistributionPath, Kind
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.hashing import StreamHasher
from spegel_py.relay.hedging import Hedger, Providers
from spegel_py.relay.peerclient import PeerClient, PeerResponse
from spegel_py.relay.peerhealth import PeerHealth
from spegel_py.relay.stream import MIRRORED_HEADER, BlobStream
from spegel_py.routing.base import Peer, Router


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """What the server asks the mirror for; ``registry`` is containerd's ``ns`` parameter."""

    registry: str | None  # None when the client sent no ns (skopeo, podman): digests only
    name: str
    reference: str  # a tag or a digest string
    kind: Literal["manifests", "blobs"]
    method: Literal["GET", "HEAD"] = "GET"
    range: str | None = None  # the client's Range header, verbatim
    accept: str | None = None  # the client's Accept header(s), combined


@dataclass(slots=True)
class MirrorStats:
    """Counters for the metrics layer (read, never reset)."""

    requests: int = 0
    served: int = 0
    not_found: int = 0
    hedged: int = 0  # extra parallel attempts started beyond the first
    resumed: int = 0
    corrupt: int = 0
    aborted: int = 0  # client responses killed mid-body (no provider left, or corruption)
    bytes_relayed: int = 0
    last_success: float = 0.0  # wall-clock time of the last request served from a peer


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Mirror tuning; every time is in seconds."""

    resolve_tags: bool = True  # let peers resolve tags at all
    resolve_latest: bool = False  # ... including ``:latest`` (off: it moves the most)
    lookup_limit: int = 4  # providers asked from the router per key
    # Wait this long for the router's first (or, once all failed, next) provider; Go Spegel's
    # --mirror-resolve-timeout defaults to 20ms too.
    first_provider_timeout: float = 0.02
    hedge_delay: float = 0.03  # start another peer if none answered within this (~p80 on a LAN)
    dial_timeout: float = 0.2  # TCP connect to a peer
    # From request sent to response head, per peer. Slow peers are hedged around, not dropped:
    # by default an attempt may take the whole deadline (a busy peer is still a good peer).
    first_byte_timeout: float = 2.5
    deadline: float = 2.5  # whole answer for a manifest/HEAD, head of a blob (containerd: 3 s cap)
    stall_timeout: float = 3.0  # a blob stream silent this long is resumed elsewhere
    resume_deadline: float = 3.0  # bound on finding a provider to resume from
    max_buffered: int = 4 * 1024 * 1024  # manifests larger than this are refused
    small_blob: int = 64 * 1024  # blobs up to this size are verified before anything is sent
    buffer_timeout: float = 1.0  # wait for a relay buffer before refusing (404 -> upstream)
    # Threads hashing relayed blobs next to the event loop (0: hash on the loop). sha256 is two
    # thirds of the relay's CPU (py-spy), so one thread lets a relay use a second core: with a
    # peer behind a 10 Gbit/s link, relay 0.87-0.92x a direct GET (0.72-0.77x hashing on the
    # loop; bench/relay_bench.py --peer-rate 10gbit, docs/benchmarks.md). It costs ~10 % more
    # CPU per GiB (hand-offs), so a node short of CPU can set 0 (--relay-hash-threads).
    hash_threads: int = 1


class Mirror:
    """Serves local misses from peers found through ``router``."""

    def __init__(
        self,
        router: Router,
        *,
        client: PeerClient | None = None,
        pool: BufferPool | None = None,
        health: PeerHealth | None = None,
        settings: MirrorSettings | None = None,
        filters: RegistryFilter | None = None,
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        """``filters``: images that may not be shared are not mirrored either (404 at once).
        ``on_result(registry, served)``: called once per request, for the metrics layer
        (``spegel_mirror_requests_total{registry,cache}``, last success timestamp).
        """
        self._router = router
        self._filters = filters if filters is not None else RegistryFilter()
        self._on_result = on_result
        self._client = client if client is not None else PeerClient()
        self._pool = pool if pool is not None else BufferPool()
        self.health = health if health is not None else PeerHealth()
        self.settings = settings if settings is not None else MirrorSettings()
        self.stats = MirrorStats()
        self._hash_executor: Executor | None = None

    def _hasher(self, digest: Digest) -> StreamHasher:
        if self.settings.hash_threads > 0 and self._hash_executor is None:
            self._hash_executor = ThreadPoolExecutor(
                max_workers=self.settings.hash_threads, thread_name_prefix="spegel-hash"
            )
        return StreamHasher(digest.hasher(), self._hash_executor)

    def lookup_key(self, request: MirrorRequest) -> str:
        """The router key for ``request``; raises :class:`NotFoundError` if policy forbids it."""
        if request.registry is not None and not self._filters.allows(request.registry, request.name):
            raise ContentNotFoundError("image excluded from sharing by the registry filters")
        if request.reference.startswith(("sha256:", "sha512:")):
            try:
                return str(Digest.parse(request.reference))
            except InvalidDigestError as exc:
                raise ContentNotFoundError(f"invalid digest {request.reference[:80]!r}") from exc
        if request.kind != "manifests" or not self.settings.resolve_tags or request.registry is None:
            raise ImageNotFoundError("tags are not resolved by peers")
        if request.reference == "latest" and not self.settings.resolve_latest:
            raise ImageNotFoundError(":latest is not resolved by peers")
        if not self._filters.allows(request.registry, request.name, request.reference):
            raise ImageNotFoundError("image excluded from sharing by the registry filters")
        return f"{request.registry}/{request.name}:{request.reference}"

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        """The registry server's seam (:class:`spegel_py.serving.seam.Mirror`): answer from peers or 404.

        A 404 (BLOB_UNKNOWN / MANIFEST_UNKNOWN) comes within ``settings.deadline`` so containerd
        falls back to the next host or upstream at once.
        """
        kind: Literal["manifests", "blobs"] = "blobs" if path.kind is Kind.BLOBS else "manifests"
        reference = str(path.digest) if path.digest is not None else path.tag
        method = request.method
        if reference is None or method not in ("GET", "HEAD"):
            raise ValueError("the server hands the mirror only validated GET/HEAD content paths")
        accept = request.headers.getall("Accept", [])
        mirror_request = MirrorRequest(
            registry=ns,
            name=path.name,
            reference=reference,
            kind=kind,
            method="GET" if method == "GET" else "HEAD",
            range=request.headers.get("Range"),
            # skopeo and podman send several Accept lines; a proxy must combine them.
            accept=", ".join(accept) if accept else None,
        )
        try:
            result = await self.fetch(mirror_request)
        except NotFoundError as exc:
            code = ErrorCode.BLOB_UNKNOWN if kind == "blobs" else ErrorCode.MANIFEST_UNKNOWN
            return web.Response(status=404, body=error_body(code, str(exc)), content_type="application/json")
        return await result.respond(request)

    async def fetch(self, request: MirrorRequest) -> MirrorResponse:
        """Find a peer that serves ``request``; raise :class:`NotFoundError` when none does in time."""
        self.stats.requests += 1
        try:
            key = self.lookup_key(request)
            response = await self._fetch(request, key)
        except NotFoundError:
            self.stats.not_found += 1
            self._report(request, served=False)
            raise
        self.stats.served += 1
        self.stats.last_success = time.time()
        self._report(request, served=True)
        return response

    def _report(self, request: MirrorRequest, *, served: bool) -> None:
        if self._on_result is not None:
            self._on_result(request.registry or "", served)

    async def _fetch(self, request: MirrorRequest, key: str) -> MirrorResponse:
        settings = self.settings
        digest = Digest.parse(key) if request.reference.startswith(("sha256:", "sha512:")) else None
        providers = Providers(self._router, key, self.health, limit=settings.lookup_limit)
        attempt = _Attempt(self, request, digest)
        hedger: Hedger[_Answer] = Hedger(
            attempt.run,
            _Answer.discard,
            self.health,
            hedge_delay=settings.hedge_delay,
            first_provider_timeout=settings.first_provider_timeout,
        )
        buffer: memoryview | None = None
        try:
            async with asyncio.timeout(settings.deadline):
                if request.kind == "blobs" and request.method == "GET":
                    buffer = await self._pool.acquire(max_wait=settings.buffer_timeout)
                peer, answer = await hedger.run(providers)
        except (TimeoutError, BufferPoolExhaustedError) as exc:
            if buffer is not None:
                self._pool.release(buffer)
            await providers.aclose()
            raise ContentNotFoundError(f"no peer served {key} within {settings.deadline}s") from exc
        except BaseException:
            if buffer is not None:
                self._pool.release(buffer)
            await providers.aclose()
            raise
        finally:
            self.stats.hedged += max(0, hedger.started - 1)
            self.stats.corrupt += hedger.corrupt
        if answer.stream is None or buffer is None:
            if buffer is not None:
                self._pool.release(buffer)
            await providers.aclose()
            if answer.body is not None and request.method == "GET":
                # buffered bodies (manifests, small blobs) are relayed bytes too
                self.stats.bytes_relayed += len(answer.body)
            return MirrorResponse(answer.status, answer.headers, answer.body, None)
        assert digest is not None  # only blobs, always named by digest, are streamed
        stream = BlobStream(
            request=request,
            digest=digest,
            providers=providers,
            peer=peer,
            resp=answer.stream,
            buffer=buffer,
            client=self._client,
            pool=self._pool,
            health=self.health,
            settings=settings,
            stats=self.stats,
            hasher=self._hasher,
        )
        return MirrorResponse(answer.status, answer.headers, None, stream)

    async def close(self) -> None:
        """Close kept-alive peer connections and stop the hashing threads."""
        await self._client.close()
        if self._hash_executor is not None:
            self._hash_executor.shutdown(wait=True)
            self._hash_executor = None


@dataclass(slots=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: PeerResponse | None = None

    @staticmethod
    def discard(answer: _Answer) -> None:
        if answer.stream is not None:
            answer.stream.release()


class _Attempt:
    """One request to one peer, validated; raises a :class:`PeerError` for anything unusable."""

    def __init__(self, mirror: Mirror, request: MirrorRequest, digest: Digest | None) -> None:
        self._mirror = mirror
        self._request = request
        self._digest = digest

    def target(self) -> str:
        r = self._request
        return f"/v2/{r.name}/{r.kind}/{r.reference}" + (f"?ns={r.registry}" if r.registry else "")

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {MIRRORED_HEADER: "true", "Accept": self._request.accept or "*/*"}
        headers.update(extra or {})
        return headers

    async def run(self, peer: Peer) -> _Answer:
        s = self._mirror.settings
        r = self._request
        resp: PeerResponse | None = await self._mirror._client.request(
            peer,
            r.method,
            self.target(),
            self.headers(),
            dial_timeout=s.dial_timeout,
            first_byte_timeout=s.first_byte_timeout,
        )
        assert resp is not None
        try:
            if resp.status != 200:
                raise PeerMissError(f"peer answered {resp.status}")
            if resp.content_length is None:
                raise PeerError("peer answer has no Content-Length")
            digest = self._verified_header_digest(resp)
            headers = _client_headers(resp, digest)
            if r.method == "HEAD":
                return _Answer(200, headers)
            size = resp.content_length
            if r.kind == "manifests" or size <= s.small_blob:
                if size > s.max_buffered:
                    raise PeerMissError(f"manifest of {size} bytes is too large")
                body = await resp.read_all(limit=s.max_buffered, stall_timeout=s.first_byte_timeout)
                if Digest.of(body, digest.algorithm) != digest:
                    raise PeerCorruptError(f"peer bytes do not match {digest}")
                return _Answer(200, headers, body=body)
            stream, resp = resp, None  # ownership passes to the answer
            return _Answer(200, headers, stream=stream)
        finally:
            if resp is not None:
                resp.release()

    def _verified_header_digest(self, resp: PeerResponse) -> Digest:
        reported = resp.headers.get("docker-content-digest")
        parsed: Digest | None = None
        if reported is not None:
            try:
                parsed = Digest.parse(reported)
            except InvalidDigestError as exc:
                raise PeerCorruptError(f"peer reported an invalid digest {reported[:80]!r}") from exc
        if self._digest is not None:
            if parsed is not None and parsed != self._digest:
                raise PeerCorruptError(f"peer reported {parsed} for {self._digest}")
            return self._digest
        if parsed is None:
            # A tag's bytes can only be verified against the digest the peer claims for them.
            raise PeerMissError("peer resolved a tag without Docker-Content-Digest")
        return parsed


def _client_headers(resp: PeerResponse, digest: Digest) -> dict[str, str]:
    headers = {
        "Content-Type": resp.headers.get("content-type", "application/octet-stream"),
        "Content-Length": str(resp.content_length),
        "Docker-Content-Digest": str(digest),
    }
    if "accept-ranges" in resp.headers:
        headers["Accept-Ranges"] = "bytes"
    return headers


@dataclass(slots=True)
class MirrorResponse:
    """A peer's answer, ready to become the client's response with :meth:`respond`.

    ``body`` is set for verified small answers; a blob stream is relayed by :meth:`respond`.
    Whoever receives this must call :meth:`respond` or :meth:`aclose` (both release the peer
    connection and the relay buffer).
    """

    status: int
    headers: dict[str, str]
    body: bytes | None
    _stream: BlobStream | None = field(default=None, repr=False)

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        """Send this answer to ``request``'s client (honouring its Range) and return the response."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            return await stream.respond(request, self.headers)
        headers = dict(self.headers)
        if request.method == "HEAD" or self.body is None:
            response = web.StreamResponse(status=self.status, headers=headers)
            response.content_length = int(headers["Content-Length"])
            await response.prepare(request)
            await response.write_eof()
            return response
        body = self.body
        if "Accept-Ranges" in headers:  # a small blob: the client's Range still applies
            try:
                selected = parse_range(request.headers.get("Range"), len(body))
            except RangeNotSatisfiableError:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            if selected is not None:
                headers["Content-Range"] = selected.content_range()
                del headers["Content-Length"]
                return web.Response(status=206, headers=headers, body=body[selected.start : selected.end])
        del headers["Content-Length"]  # aiohttp sets it from the body
        return web.Response(status=self.status, headers=headers, body=body)

    async def aclose(self) -> None:
        """Release the peer connection and relay buffer without responding. Idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

"""The mirror path: serve a local miss from peers, fast, verified, and never hanging the client.

The registry server calls :meth:`Mirror.fetch` for a request that missed locally and did not
come from a peer (no ``X-Spegel-Mirrored: true``). The mirror looks the key up in the router,
asks providers with ``X-Spegel-Mirrored: true`` (so they answer from local content only),
hedges across them (:mod:`.hedging`), and returns once it has a good answer head, so a 404
(containerd then falls back to the next host or upstream) comes before any byte is promised.
Manifests, HEADs and small blobs are read and verified whole before the client sees anything;
large blobs are relayed through a pooled buffer (:mod:`.relay`), hashed as they pass, continued
from another provider with ``Range`` if a peer breaks off, and their last bytes are held back
until the digest checks out: on a mismatch the client connection is dropped, so no client ever
receives a complete wrong body.

Tag policy (``resolve_tags`` / ``resolve_latest``): a tag is mutable, and a peer's copy of it may
be older than upstream's. Tags are resolved by peers only when ``resolve_tags`` is on (the
``resolve`` capability in hosts.toml); ``:latest`` is never resolved by peers unless
``resolve_latest`` is set, because it is the tag most likely to have moved. A tag that may not be
resolved is a miss (404), and containerd asks upstream.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError, InvalidDigestError, NotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.oci.errors import ErrorCode, error_body
from spegel_py.oci.paths import DistributionPath, Kind
from spegel_py.registry.bufferpool import BufferPool, BufferPoolExhaustedError
from spegel_py.registry.hedging import Hedger, PeerCorruptError, PeerMissError, Providers
from spegel_py.registry.peerhealth import PeerHealth
from spegel_py.registry.relay import (
    PeerClient,
    PeerError,
    PeerResponse,
    PeerTimeoutError,
    ResponseSink,
    StreamHasher,
)
from spegel_py.routing.base import Peer, Router

MIRRORED_HEADER = "X-Spegel-Mirrored"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class IntegrityError(PeerCorruptError):
    """Relayed bytes did not match the digest; the client response was aborted."""


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


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    """Mirror tuning; every time is in seconds."""

    resolve_tags: bool = True  # let peers resolve tags at all
    resolve_latest: bool = False  # ... including ``:latest`` (off: it moves the most)
    lookup_limit: int = 4  # providers asked from the router per key
    first_provider_timeout: float = 0.05  # wait this long for the router's first provider
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
    # Threads hashing relayed blobs next to the event loop (0: hash on the loop). One is enough
    # on small nodes: it overlaps hashing with socket work, the loop stays the other core.
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
    ) -> None:
        self._router = router
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
        if request.reference.startswith(("sha256:", "sha512:")):
            try:
                return str(Digest.parse(request.reference))
            except InvalidDigestError as exc:
                raise ContentNotFoundError(f"invalid digest {request.reference[:80]!r}") from exc
        if request.kind != "manifests" or not self.settings.resolve_tags or request.registry is None:
            raise ImageNotFoundError("tags are not resolved by peers")
        if request.reference == "latest" and not self.settings.resolve_latest:
            raise ImageNotFoundError(":latest is not resolved by peers")
        return f"{request.registry}/{request.name}:{request.reference}"

    async def serve(self, request: web.Request, path: DistributionPath, ns: str | None) -> web.StreamResponse:
        """The registry server's seam (:class:`spegel_py.registry.base.Mirror`): answer from peers or 404.

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
            return web.Response(
                status=404, body=error_body(code, str(exc)), content_type="application/json"
            )
        return await result.respond(request)

    async def fetch(self, request: MirrorRequest) -> MirrorResponse:
        """Find a peer that serves ``request``; raise :class:`NotFoundError` when none does in time."""
        self.stats.requests += 1
        try:
            key = self.lookup_key(request)
            response = await self._fetch(request, key)
        except NotFoundError:
            self.stats.not_found += 1
            raise
        self.stats.served += 1
        return response

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
            return MirrorResponse(answer.status, answer.headers, answer.body, None)
        stream = _BlobStream(self, request, digest, providers, peer, answer.stream, buffer)
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
            peer, r.method, self.target(), self.headers(),
            dial_timeout=s.dial_timeout, first_byte_timeout=s.first_byte_timeout,
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
    _stream: _BlobStream | None = field(default=None, repr=False)

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        """Send this answer to ``request``'s client (honouring its Range) and return the response."""
        if self._stream is None:
            headers = dict(self.headers)
            if request.method == "HEAD" or self.body is None:
                response = web.StreamResponse(status=self.status, headers=headers)
                response.content_length = int(headers["Content-Length"])
                await response.prepare(request)
                await response.write_eof()
                return response
            return web.Response(status=self.status, headers=headers, body=self.body)
        stream, self._stream = self._stream, None
        return await stream.respond(request, self.headers)

    async def aclose(self) -> None:
        """Release the peer connection and relay buffer without responding. Idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


class _BlobStream:
    """A large blob being relayed: resumes on peer failure, verifies, holds back its tail."""

    def __init__(
        self,
        mirror: Mirror,
        request: MirrorRequest,
        digest: Digest | None,
        providers: Providers,
        peer: Peer,
        resp: PeerResponse,
        buffer: memoryview,
    ) -> None:
        assert digest is not None and resp.content_length is not None  # blobs are fetched by digest
        self._mirror = mirror
        self._request = request
        self._digest = digest
        self._providers = providers
        self._peer = peer
        self._resp: PeerResponse | None = resp
        self._buffer: memoryview | None = buffer
        self._total = resp.content_length
        self._contributors: set[Peer] = {peer}

    async def aclose(self) -> None:
        if self._resp is not None:
            self._resp.release()
            self._resp = None
        if self._buffer is not None:
            self._mirror._pool.release(self._buffer)
            self._buffer = None
        await self._providers.aclose()

    async def respond(self, request: web.BaseRequest, headers: dict[str, str]) -> web.StreamResponse:
        try:
            start, end, status = _byte_range(self._request.range, self._total)
            headers = dict(headers)
            if status == 416:
                headers = {"Content-Range": f"bytes */{self._total}"}
                return web.Response(status=416, headers=headers)
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{self._total}"
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end + 1 - start
            await response.prepare(request)
            sink = ResponseSink(request, response)
            try:
                await self._relay(sink, start, end)
            except (IntegrityError, _ResumeFailedError):
                # The client connection is already aborted: it sees a short body and retries.
                return response
            await response.write_eof()
            return response
        finally:
            await self.aclose()

    async def _relay(self, sink: ResponseSink, start: int, end: int) -> None:
        assert self._buffer is not None
        settings = self._mirror.settings
        stats = self._mirror.stats
        hasher = self._mirror._hasher(self._digest)
        # Two halves: one may still be hashed on the worker while the other receives (StreamHasher).
        half = len(self._buffer) // 2
        halves = (self._buffer[:half], self._buffer[half : 2 * half])
        turn = 0
        pos = 0
        held: bytes = b""
        while pos < self._total:
            buf = halves[turn]
            try:
                if self._resp is None:
                    self._resp = await self._resume(pos)
                n = await self._resp.readinto(buf[: self._total - pos], stall_timeout=settings.stall_timeout)
            except PeerError as exc:
                if self._resp is not None:
                    self._resp.release()
                    self._resp = None
                if not isinstance(exc, PeerTimeoutError):
                    self._mirror.health.record_miss(self._peer, self._providers.key)
                continue
            except BaseException:
                sink.abort()
                raise
            chunk = buf[:n]
            await hasher.update(chunk)
            turn ^= 1
            lo, hi = max(pos, start), min(pos + n, end + 1)
            if lo < hi:
                piece = chunk[lo - pos : hi - pos]
                if hi == end + 1:
                    held = bytes(piece)  # the last bytes wait for the digest check
                else:
                    await sink.write(piece)
            pos += n
        if await hasher.hexdigest() != self._digest.hex:
            stats.corrupt += 1
            stats.aborted += 1
            for peer in self._contributors:
                self._mirror.health.record_corruption(peer)
            sink.abort()
            raise IntegrityError(f"relayed bytes do not match {self._digest}")
        await sink.write(memoryview(held))
        stats.bytes_relayed += sink.sent

    async def _resume(self, pos: int) -> PeerResponse:
        """A response from another provider starting at blob offset ``pos``."""
        settings = self._mirror.settings
        self._mirror.stats.resumed += 1
        self._providers.rewind(exclude={self._peer})
        attempt = _RangeAttempt(self._mirror, self._request, pos, self._total)
        hedger: Hedger[PeerResponse] = Hedger(
            attempt.run, PeerResponse.release, self._mirror.health,
            hedge_delay=settings.hedge_delay, first_provider_timeout=settings.first_provider_timeout,
        )
        try:
            async with asyncio.timeout(settings.resume_deadline):
                peer, resp = await hedger.run(self._providers)
        except (TimeoutError, NotFoundError) as exc:
            self._mirror.stats.aborted += 1
            raise _ResumeFailedError(f"no provider to resume {self._digest} at byte {pos}") from exc
        self._peer = peer
        self._contributors.add(peer)
        return resp


class _ResumeFailedError(Exception):
    """No provider could continue a broken blob stream; the client response is aborted."""


class _RangeAttempt:
    """``GET`` with ``Range: bytes=<pos>-``; accepts 206 at the right offset."""

    def __init__(self, mirror: Mirror, request: MirrorRequest, pos: int, total: int) -> None:
        self._mirror = mirror
        self._request = request
        self._pos = pos
        self._total = total

    async def run(self, peer: Peer) -> PeerResponse:
        s = self._mirror.settings
        r = self._request
        resp = await self._mirror._client.request(
            peer, "GET", f"/v2/{r.name}/blobs/{r.reference}" + (f"?ns={r.registry}" if r.registry else ""),
            {MIRRORED_HEADER: "true", "Range": f"bytes={self._pos}-"},
            dial_timeout=s.dial_timeout, first_byte_timeout=s.first_byte_timeout,
        )
        expected = f"bytes {self._pos}-{self._total - 1}/{self._total}"
        if resp.status == 206 and resp.headers.get("content-range") == expected:
            return resp
        resp.release()
        raise PeerMissError(f"peer cannot resume at {self._pos}: {resp.status}")


def _byte_range(header: str | None, total: int) -> tuple[int, int, int]:
    """``(start, end inclusive, status)`` for a client's Range; multi-ranges get the whole body."""
    if not header or total == 0:
        return 0, total - 1, 200
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return 0, total - 1, 200
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return 0, 0, 416
        return max(0, total - int(last)), total - 1, 206
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or start > end:
        return 0, 0, 416
    return start, end, 206

"""The mirror path: serve a local miss from peers, fast, verified, and never hanging the client.

The registry server calls :meth:`Mirror.serve` (which fits its ``MissHandler`` seam, without
either package importing the other) for a request that missed locally and did not come from a
peer (no ``X-Spegel-Mirrored: true``). The mirror looks the key up in the router, asks providers
with ``X-Spegel-Mirrored: true`` (so they answer from local content only) through
:mod:`.attempt`, hedges across them (:mod:`.hedging`), and returns once it has a good answer head,
so a 404 (containerd then falls back to the next host or upstream) comes before any byte is
promised. Manifests, HEADs and small blobs are read and verified whole before the client sees
anything; large blobs are relayed by :mod:`.stream` (through a pooled buffer), hashed
as they pass, continued from another provider with ``Range`` if a peer breaks off, and their
last bytes are held back until the digest checks out: on a mismatch the client connection is
dropped, so no client ever receives a complete wrong body. A whole blob of at least
``multi_peer_min_size`` with more than one provider is relayed by :mod:`.multistream` instead:
ranges from several providers at once, delivered in order under the same checks.

Tag policy (``resolve_tags`` / ``resolve_latest``): a tag is mutable, and a peer's copy of it may
be older than upstream's. Tags are resolved by peers only when ``resolve_tags`` is on (the
``resolve`` capability in hosts.toml); ``:latest`` is never resolved by peers unless
``resolve_latest`` is set, because it is the tag most likely to have moved (Go Spegel's
``--resolve-latest-tag`` defaults to true; spegel-py's default is the safer one). A tag that may
not be resolved is a miss (404), and containerd asks upstream.
A tag that may be resolved is asked of every provider and used only when their answers agree
(:mod:`.tags`): one lying or stale peer cannot decide it.

Stale providers: a peer that refused, was unreachable within ``dial_timeout`` or answered 404 is
remembered for the key (:mod:`.peerhealth`, seconds), and once every known provider failed the
mirror waits for further ones only ``first_provider_timeout``; on loopback or a LAN a request
whose providers are all dead or stale gets its 404 within 100 ms (a black-holed address costs
one ``dial_timeout`` the first time). Slow peers are hedged around but not negative-cached.

Answers (404, 416, 206) are made by :mod:`spegel_py.httpx.answers`, as for local content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from spegel_py.errors import (
    BufferPoolExhaustedError,
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidDigestError,
    NotFoundError,
    RangeNotSatisfiableError,
)
from spegel_py.httpx.answers import BodyHead, answer_for, body_head, send_bytes
from spegel_py.httpx.headers import NAMESPACE_HEADER
from spegel_py.oci.digest import Digest
from spegel_py.oci.filters import RegistryFilter
from spegel_py.oci.paths import DistributionPath, Kind
from spegel_py.relay.attempt import Answer, PeerAttempt
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.coordinate import PullCoordinator, WinnerFirst
from spegel_py.relay.floor import body_deadline
from spegel_py.relay.hashing import HashPool
from spegel_py.relay.hedging import Hedger, Providers
from spegel_py.relay.multistream import MultiStream, wants_multi
from spegel_py.relay.peerclient import PeerClient
from spegel_py.relay.peerhealth import PeerHealth, PeerReporter
from spegel_py.relay.rangestream import RangeStream
from spegel_py.relay.request import MirrorRequest
from spegel_py.relay.settings import MirrorSettings
from spegel_py.relay.stats import RelayStats
from spegel_py.relay.stream import BlobStream, StreamContext, StreamStart
from spegel_py.relay.tags import TagDisagreementError, TagVote
from spegel_py.routing.base import Peer, Router

log = logging.getLogger(__name__)


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
        coordinator: PullCoordinator | None = None,
    ) -> None:
        """``filters``: images that may not be shared are not mirrored either (404 at once).
        ``on_result(registry, served)``: called once per request, for the metrics layer
        (``spegel_mirror_requests_total{registry,cache}``, last success timestamp).
        ``coordinator``: settles a blob GET that no provider served (:mod:`.coordinate`).
        """
        self._router = router
        self._coordinator = coordinator
        self._filters = filters if filters is not None else RegistryFilter()
        self._on_result = on_result
        self._client = client if client is not None else PeerClient()
        self._pool = pool if pool is not None else BufferPool()
        self.health = health if health is not None else PeerHealth()
        self.settings = settings if settings is not None else MirrorSettings()
        self.stats = RelayStats()
        self._reporter = PeerReporter(self.health)
        self._hashing = HashPool(self.settings.hash_threads)
        self._streams = StreamContext(
            client=self._client,
            pool=self._pool,
            hashing=self._hashing,
            reporter=self._reporter,
            stats=self.stats,
            settings=self.settings,
        )

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
        """Answer a local miss from peers, or 404 (the server's ``MissHandler`` seam).

        A 404 (BLOB_UNKNOWN / MANIFEST_UNKNOWN) comes within ``settings.deadline`` so containerd
        falls back to the next host or upstream at once.
        """
        kind: Literal["manifests", "blobs"] = "blobs" if path.kind is Kind.BLOBS else "manifests"
        reference = str(path.digest) if path.digest is not None else path.tag
        method = request.method
        if reference is None or method not in ("GET", "HEAD"):
            raise ValueError("the server hands the mirror only validated GET/HEAD content paths")
        # Sent on to peers: only printable ASCII (media types are), never a control character.
        accept = [value for value in request.headers.getall("Accept", []) if _sendable(value)]
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
            return answer_for(exc, path.kind)
        if ns is not None:  # as local content answers (validated by the server's parse_ns)
            result.headers[NAMESPACE_HEADER] = ns
        return await result.respond(request)

    async def fetch(self, request: MirrorRequest) -> MirrorResponse:
        """Find a peer that serves ``request``; raise :class:`NotFoundError` when none does in time."""
        self.stats.request_started()
        try:
            key = self.lookup_key(request)
            try:
                response = await self._fetch(request, key)
            except NotFoundError:
                if self._coordinator is None or request.kind != "blobs" or request.method != "GET":
                    raise
                fetch = self._from_winner(request, key)
                response = await self._coordinator.settle(key, request.target, fetch)
        except NotFoundError:
            self.stats.request_finished(served=False)
            self._report(request, served=False)
            raise
        self.stats.request_finished(served=True)
        self._report(request, served=True)
        return response

    def _report(self, request: MirrorRequest, *, served: bool) -> None:
        if self._on_result is not None:
            self._on_result(request.registry or "", served)

    def _from_winner(self, request: MirrorRequest, key: str) -> Callable[[Peer], Awaitable[MirrorResponse]]:
        def fetch(winner: Peer) -> Awaitable[MirrorResponse]:
            return self._fetch(request, key, WinnerFirst(self._router, winner))

        return fetch

    async def _fetch(self, request: MirrorRequest, key: str, router: Router | None = None) -> MirrorResponse:
        settings = self.settings
        digest = Digest.parse(key) if request.reference.startswith(("sha256:", "sha512:")) else None
        providers = Providers(router or self._router, key, self.health, limit=settings.providers_wanted)
        attempt = PeerAttempt(self._client, settings, request, digest)
        hedger: Hedger[Answer] | TagVote
        if digest is None:  # a tag: only an answer the providers agree on (:mod:`.tags`)
            hedger = TagVote(
                attempt.run,
                self._reporter,
                first_provider_timeout=settings.first_provider_timeout,
                window=min(settings.tag_vote_window, settings.deadline),
            )
        else:
            hedger = Hedger(
                attempt.run,
                Answer.discard,
                self._reporter,
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
        except TagDisagreementError as exc:
            await providers.aclose()
            self.stats.tag_disagreement()
            self.health.record_disagreement(key, exc.digests)
            log.warning("providers disagree on %s: %s; not resolved by peers", key, " ".join(exc.digests))
            raise
        except BaseException:
            if buffer is not None:
                self._pool.release(buffer)
            await providers.aclose()
            raise
        finally:
            self.stats.attempts_raced(started=hedger.started, corrupt=hedger.corrupt)
        if answer.stream is None or buffer is None:
            if buffer is not None:
                self._pool.release(buffer)
            await providers.aclose()
            if answer.body is not None and request.method == "GET":
                # buffered bodies (manifests, small blobs) are relayed bytes too
                self.stats.relayed(len(answer.body))
            return MirrorResponse(
                answer.status,
                answer.headers,
                answer.body,
                request.range,
                size=answer.size,
                deadline=body_deadline(settings, len(answer.body or b"")),
            )
        if answer.status == 206:  # the client's range, as the peer sent it: not resumed
            await providers.aclose()
            ranged = RangeStream(self._streams, key, peer, answer.stream, buffer)
            return MirrorResponse(answer.status, answer.headers, None, request.range, ranged)
        assert digest is not None  # only blobs, always named by digest, are streamed
        start = StreamStart(request.target, digest, providers, peer, answer.stream, buffer)
        stream: BlobStream | MultiStream = BlobStream(self._streams, start)
        if request.range is None and wants_multi(self._streams, key, answer.stream.content_length or 0):
            stream = MultiStream(self._streams, start)
        return MirrorResponse(answer.status, answer.headers, None, request.range, stream)

    async def close(self) -> None:
        """Close kept-alive peer connections and stop the hashing threads."""
        await self._client.close()
        self._hashing.close()


@dataclass(slots=True)
class MirrorResponse:
    """A peer's answer, ready to become the client's response with :meth:`respond`.

    ``body`` is set for verified small answers (and small ranges); a blob stream is relayed by
    :meth:`respond`. Whoever receives this must call :meth:`respond` or :meth:`aclose` (both
    release the peer connection and the relay buffer).
    """

    status: int  # 200; 206: the peer's answer to the client's range; 416: ``size`` is the blob's
    headers: dict[str, str]  # Content-Length is the whole representation's (a 206: the range's)
    body: bytes | None
    range_header: str | None = None  # the client's Range, verbatim
    _stream: BlobStream | MultiStream | RangeStream | None = field(default=None, repr=False)
    size: int | None = None
    deadline: float | None = None  # seconds the client may take to read ``body`` (relay/floor.py)

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        """Send this answer to ``request``'s client (honouring its Range) and return the response.

        A blob stream always honours the Range; a verified small body only when the peer
        accepted ranges (a blob); a HEAD never does. A 206 or 416 is the peer's answer to the
        range, checked by the attempt that won.
        """
        stream, self._stream = self._stream, None
        if self.status == 416:
            assert self.size is not None and stream is None
            return answer_for(RangeNotSatisfiableError(self.range_header or "", size=self.size))
        ranged = stream is not None or (
            self.body is not None and request.method != "HEAD" and "Accept-Ranges" in self.headers
        )
        try:
            size = int(self.headers["Content-Length"])
            if self.status == 206:
                head = BodyHead(206, 0, size, dict(self.headers))
            else:
                head = body_head(size, self.headers, self.range_header if ranged else None)
        except RangeNotSatisfiableError as exc:
            if stream is not None:
                await stream.aclose()
            return answer_for(exc)
        if stream is not None:
            return await stream.respond(request, head)
        return await send_bytes(request, head, self.body, deadline=self.deadline)

    async def aclose(self) -> None:
        """Release the peer connection and relay buffer without responding. Idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


def _sendable(value: str) -> bool:
    """True when a client's header value may be copied into a request to a peer."""
    return value.isascii() and value.isprintable()

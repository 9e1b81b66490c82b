"""The registry's HTTP surface: the read-only OCI distribution pull API over the local store.

Every request goes through one catch-all route so that every answer, including "no such
endpoint" and "method not allowed", is an OCI JSON error and is counted in the HTTP metrics.
Paths are parsed from the raw request line (:mod:`spegel_py.oci.paths`); store calls are bounded
by a timeout so a response always starts promptly (containerd waits forever on a silent mirror);
presence is asked of the store on every request. At most ``store_concurrency`` store calls run at
once and the timeout starts when a call gets its turn: under mere load (500 busy connections on a
loaded machine, the reliability suite's load row, ``bench/reliability/load.py``) the deadline
otherwise expired while calls queued for the event loop and containerd, and clients got 503s
from a store that was answering. Content that is missing locally goes to the
:class:`~spegel_py.serving.seam.MissHandler`, if any, unless the request came from a peer; a
peer's request for a blob this node is still pulling is served as it grows (``ingests``,
:mod:`.growing`).
Errors become answers in one place, :func:`spegel_py.httpx.answers.answer_for`.

With Spegel's basic auth configured (``authorization``), every ``/v2`` request must carry the
credentials (401 otherwise); the probes never need them.

Tags resolve only with ``?ns=<registry>``, which containerd sends to mirrors. skopeo and podman
(``registries.conf`` mirrors) send no ``ns``, so their tag requests get a 404 and they fall back
to the next mirror or upstream; their requests by digest are served normally.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest

from spegel_py.errors import (
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidInputError,
    NotFoundError,
    RangeNotSatisfiableError,
    StoreUnavailableError,
)
from spegel_py.httpx.answers import answer_for, oci_error
from spegel_py.httpx.expect import SCREEN, expect_handler
from spegel_py.httpx.headers import basic_credentials, from_peer
from spegel_py.metrics import Metrics, method_label
from spegel_py.oci.digest import Digest
from spegel_py.oci.errors import ErrorCode
from spegel_py.oci.filters import RegistryFilter
from spegel_py.oci.paths import DistributionPath, Kind, parse_ns, parse_path
from spegel_py.oci.reference import Reference
from spegel_py.routing.base import Router
from spegel_py.serving.content import WriteBounds, serve_content
from spegel_py.serving.growing import FollowBounds, serve_growing, stalled
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.seam import MissHandler
from spegel_py.store.base import Blob, ContentStore, GrowingBlob, IngestSource

log = logging.getLogger(__name__)
T = TypeVar("T")

# Asked of the store by /readyz: any answer, even "not found", proves the store is reachable.
_PROBE = Digest("sha256", "0" * 64)
_ALLOW = "GET, HEAD"


class RegistryServer:
    """Builds the aiohttp application that serves ``store``, and local misses through ``on_miss``.

    ``store_timeout`` (seconds) bounds every store call; on expiry the client gets a 503 at once.
    ``store_concurrency``: store calls running at once; a call waiting for its turn is not yet on
    ``store_timeout``.
    ``router`` only feeds ``/readyz`` here. ``authorization``: the ``Authorization: Basic`` value
    every ``/v2`` request must carry (Spegel's basic auth; ``None``: none needed), else 401.
    ``filters``: an image they exclude is not served at all, from local content or peers (404),
    as in Spegel; it applies to requests with ``ns`` (without one the registry is unknown).
    ``write_bounds``: how long a client may take to read a local body (no progress, and a
    deadline from its size); small answers (JSON, errors) are bounded by the listener
    (spegel_py/httpx/limits.py). ``ingests``: where a peer's request for a blob missing
    locally looks for a write in progress (``None``: it does not, ``--serve-in-progress=false``),
    followed within ``follow``. Nothing is started: ``app.py`` runs :meth:`application`.
    """

    def __init__(
        self,
        store: ContentStore,
        *,
        metrics: Metrics,
        coordinator: PageCacheCoordinator,
        on_miss: MissHandler | None = None,
        router: Router | None = None,
        store_timeout: float = 1.0,
        store_concurrency: int = 32,
        authorization: str | None = None,
        filters: RegistryFilter | None = None,
        write_bounds: WriteBounds | None = None,
        ingests: IngestSource | None = None,
        follow: FollowBounds | None = None,
    ) -> None:
        self._store = store
        self._filters = filters
        self._credentials = basic_credentials(authorization) if authorization else None
        self._metrics = metrics
        self._coordinator = coordinator
        self._on_miss = on_miss
        self._router = router
        self._timeout = store_timeout
        self._store_slots = asyncio.Semaphore(store_concurrency)
        self._write_bounds = write_bounds if write_bounds is not None else WriteBounds()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._ingests = ingests
        self._follow = follow if follow is not None else FollowBounds()

    def application(self) -> web.Application:
        app = web.Application(handler_args={"max_field_size": 8190, "max_line_size": 8190})
        app.router.add_route("*", "/{tail:.*}", self._handle, expect_handler=expect_handler)
        app[SCREEN] = self._screen
        return app

    async def _screen(self, request: BaseRequest) -> web.StreamResponse:
        """What the listener sends here before routing (spegel_py/httpx/expect.py): ``CONNECT``
        is answered as any other method (a 405 OCI error, counted); an ``Expect`` value that is
        not printable ASCII gets a 417 OCI error."""
        if request.method == hdrs.METH_CONNECT and isinstance(request, web.Request):
            return await self._handle(request)
        return oci_error(ErrorCode.UNSUPPORTED, "unsupported Expect value", status=417)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Metrics around :meth:`_route`; the single entry point of every request."""
        handler = _handler_name(request.raw_path)
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        metrics = self._metrics
        inflight = metrics.http_requests_inflight.labels(handler)
        inflight.inc()
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, size = 500, 0
        try:
            response = await self._route(request)
            status = response.status
            if request.method != "HEAD":
                size = response.content_length or 0
            return response
        finally:
            if task is not None:
                self._inflight.discard(task)
            inflight.dec()
            labels = (handler, method_label(request.method), str(status))
            metrics.http_request_duration.labels(*labels).observe(loop.time() - started)
            metrics.http_response_size.labels(*labels).observe(size)

    async def drain(self, grace: float) -> None:
        """Let in-flight requests finish for up to ``grace`` seconds, then cancel the rest.

        Call after the listeners stopped. aiohttp's own shutdown cannot interrupt a handler that
        waits on a client which stopped reading, so the bound is enforced here.
        """
        pending = {task for task in self._inflight if not task.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        if request.method not in ("GET", "HEAD"):
            return oci_error(ErrorCode.UNSUPPORTED, "only GET and HEAD are served", headers={"Allow": _ALLOW})
        if path == "/livez":
            return web.Response(text="ok")
        if path == "/readyz":
            return await self._ready()
        if self._credentials is not None and path.startswith("/v2") and not self._authorized(request):
            return oci_error(ErrorCode.UNAUTHORIZED, "invalid credentials")
        try:
            target = parse_path(request.raw_path)
            ns = _ns(request)
        except InvalidInputError as exc:
            return answer_for(exc)
        if target.kind is None:
            # The version header is how Docker-era clients recognise a v2 registry.
            return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})
        try:
            return await self._serve(request, target, ns)
        except RangeNotSatisfiableError as exc:
            return answer_for(exc, target.kind)
        except (StoreUnavailableError, TimeoutError, OSError) as exc:
            log.warning("content store unavailable", extra={"error": repr(exc), "path": path[:200]})
            return answer_for(exc)

    async def _serve(
        self, request: web.Request, target: DistributionPath, ns: str | None
    ) -> web.StreamResponse:
        if target.digest is None and ns is None:
            # Without ns a tag names nothing: it could belong to any registry. skopeo and podman
            # send no ns; on this 404 they fall back to the next mirror or upstream.
            return answer_for(ImageNotFoundError("a tag lookup needs the ns query parameter"), target.kind)
        filters = self._filters
        if ns is not None and filters is not None and not filters.allows(ns, target.name, target.tag):
            return answer_for(ContentNotFoundError("image excluded by the registry filters"), target.kind)
        try:
            digest = target.digest
            if digest is None:
                assert target.tag is not None and ns is not None
                reference = Reference(ns, target.name, target.tag)
                digest = await self._bounded(lambda: self._store.resolve(reference))
            found = digest
            blob: Blob = await self._bounded(lambda: self._store.open(found))
        except NotFoundError as exc:
            if not from_peer(request.headers):
                if self._on_miss is not None:
                    return await self._on_miss.serve(request, target, ns)
            elif target.kind is Kind.BLOBS and target.digest is not None:
                growing = await self._open_ingest(target.digest)
                if growing is not None:
                    async with growing:
                        return await serve_growing(
                            request, growing, coordinator=self._coordinator, metrics=self._metrics,
                            bounds=self._write_bounds, follow=self._follow, namespace=ns,
                        )  # fmt: skip
            return answer_for(exc, target.kind)
        async with blob:
            return await serve_content(
                request,
                blob,
                digest,
                ranged=target.kind is Kind.BLOBS,
                coordinator=self._coordinator,
                metrics=self._metrics,
                read_timeout=self._timeout,
                namespace=ns,
                bounds=self._write_bounds,
            )

    async def _open_ingest(self, digest: Digest) -> GrowingBlob | None:
        """The write in progress of ``digest``, for a peer (only peers: this node's own containerd
        already waits on its own write of the blob), or ``None``."""
        ingests = self._ingests
        if ingests is None:
            return None
        try:
            growing = await self._bounded(lambda: ingests.open_ingest(digest))
        except NotFoundError:
            return None
        if stalled(growing, self._follow):  # its writer died: the peer should look elsewhere now
            await growing.aclose()
            return None
        return growing

    async def _ready(self) -> web.Response:
        try:
            await self._bounded(lambda: self._store.stat(_PROBE))
        except ContentNotFoundError:
            pass
        except (StoreUnavailableError, TimeoutError, OSError) as exc:
            return answer_for(exc)
        if self._router is not None and not self._router.ready():
            return oci_error(ErrorCode.UNAVAILABLE, "router not ready")
        return web.Response(text="ok")

    def _authorized(self, request: web.Request) -> bool:
        """Spegel's check: the credentials of ``Authorization``, compared in constant time."""
        given = basic_credentials(request.headers.get("Authorization"))
        expected = self._credentials
        return given is not None and expected is not None and hmac.compare_digest(given, expected)

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._store_slots:  # the deadline starts with the call, not with the wait
            async with asyncio.timeout(self._timeout):
                return await call()


def _ns(request: web.Request) -> str | None:
    """The ``ns`` query parameter (the upstream registry), validated."""
    try:
        return parse_ns(request.query.getall("ns", []))
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid ns parameter: {exc}") from exc


def target_kind(raw_path: str) -> Kind | None:
    """The resource kind a (possibly invalid) path aims at, to pick the right error code."""
    parts = raw_path.partition("?")[0].split("/")
    if len(parts) >= 3 and parts[-2] in ("manifests", "blobs"):
        return Kind(parts[-2])
    return None


def _handler_name(raw_path: str) -> str:
    """The ``handler`` metric label: a small fixed set, never derived from client input verbatim."""
    path = raw_path.partition("?")[0]
    if path in ("/v2", "/v2/"):
        return "root"
    if path in ("/readyz", "/livez"):
        return path[1:]
    kind = target_kind(path) if path.startswith("/v2/") else None
    if kind is Kind.BLOBS:
        return "blob"
    if kind is Kind.MANIFESTS:
        return "manifest"
    return "other"

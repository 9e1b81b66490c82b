"""The registry's HTTP surface: the read-only OCI distribution pull API over the local store.

Every request goes through one catch-all route so that every answer, including "no such
endpoint" and "method not allowed", is an OCI JSON error and is counted in the HTTP metrics.
Paths are parsed from the raw request line (:mod:`spegel_py.oci.paths`); store calls are bounded
by a timeout so a response always starts promptly (containerd waits forever on a silent mirror);
presence is asked of the store on every request. Content that is missing locally goes to the
:class:`~spegel_py.serving.seam.MissHandler`, if any, unless the request came from a peer.
Errors become answers in one place, :func:`spegel_py.httpx.answers.answer_for`.

Tags resolve only with ``?ns=<registry>``, which containerd sends to mirrors. skopeo and podman
(``registries.conf`` mirrors) send no ``ns``, so their tag requests get a 404 and they fall back
to the next mirror or upstream; their requests by digest are served normally.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from spegel_py.errors import (
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidInputError,
    NotFoundError,
    RangeNotSatisfiableError,
    StoreUnavailableError,
)
from spegel_py.httpx.answers import answer_for, oci_error
from spegel_py.httpx.headers import from_peer
from spegel_py.metrics import Metrics, method_label
from spegel_py.oci.digest import Digest
from spegel_py.oci.errors import ErrorCode
from spegel_py.oci.paths import DistributionPath, Kind, parse_ns, parse_path
from spegel_py.oci.reference import Reference
from spegel_py.routing.base import Router
from spegel_py.serving.content import serve_content
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.seam import MissHandler
from spegel_py.store.base import Blob, ContentStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Asked of the store by /readyz: any answer, even "not found", proves the store is reachable.
_PROBE = Digest("sha256", "0" * 64)
_ALLOW = "GET, HEAD"


class RegistryServer:
    """Builds the aiohttp application that serves ``store``, and local misses through ``on_miss``.

    ``store_timeout`` (seconds) bounds every store call; on expiry the client gets a 503 at once.
    ``router`` only feeds ``/readyz`` here. Nothing is started: ``app.py`` runs :meth:`application`.
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
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._coordinator = coordinator
        self._on_miss = on_miss
        self._router = router
        self._timeout = store_timeout
        self._inflight: set[asyncio.Task[Any]] = set()

    def application(self) -> web.Application:
        app = web.Application(handler_args={"max_field_size": 8190, "max_line_size": 8190})
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

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
        try:
            digest = target.digest
            if digest is None:
                assert target.tag is not None and ns is not None
                digest = await self._bounded(self._store.resolve(Reference(ns, target.name, target.tag)))
            blob: Blob = await self._bounded(self._store.open(digest))
        except NotFoundError as exc:
            if self._on_miss is not None and not from_peer(request.headers):
                return await self._on_miss.serve(request, target, ns)
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
            )

    async def _ready(self) -> web.Response:
        try:
            await self._bounded(self._store.stat(_PROBE))
        except ContentNotFoundError:
            pass
        except (StoreUnavailableError, TimeoutError, OSError) as exc:
            return answer_for(exc)
        if self._router is not None and not self._router.ready():
            return oci_error(ErrorCode.UNAVAILABLE, "router not ready")
        return web.Response(text="ok")

    async def _bounded(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(self._timeout):
            return await call


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

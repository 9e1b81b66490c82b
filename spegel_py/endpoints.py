"""The daemon's small HTTP endpoints beside the registry: ``/metrics`` and ``/id``.

Also :func:`start`, which puts any of the daemon's aiohttp applications (these and the
registry's) on an address, so ``spegel_py/app.py`` only says which application goes where, and
makes room for the listener's connection cap in the process's descriptor limit.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.flagvalues import split_address
from spegel_py.httpx.expect import SCREEN, expect_handler, refuse
from spegel_py.httpx.limits import BoundedSite
from spegel_py.routing.bootstrap.http import IdFormat, id_document

log = logging.getLogger(__name__)

# Descriptors beyond the listeners' caps: peer connections, the store, files being served.
SPARE_DESCRIPTORS = 1024


class Identity(Protocol):
    """What ``/id`` tells peers about this node's router."""

    @property
    def peer_id(self) -> str: ...

    def listen_multiaddrs(self) -> list[str]: ...


def metrics_application(
    registry: CollectorRegistry, *, routes: Sequence[web.RouteDef] = ()
) -> web.Application:
    """``GET /metrics`` in the Prometheus text format, from ``registry`` (never the global one);
    ``routes``: more on the same listener (the ``/debug/web/`` page, where Spegel serves it)."""

    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle, expect_handler=expect_handler)
    app.router.add_routes(routes)
    return app


def id_application(router: Identity, *, router_port: int, pod_ip: str = "") -> web.Application:
    """``GET /id`` for ``--bootstrap-kind=http`` peers: this node's dialable router address.

    ``pod_ip`` (``--pod-ip``): listed first, with ``router_port``, because a router listening on
    every interface (0.0.0.0) has no address of its own that peers could dial.
    """

    async def handle(request: web.Request) -> web.Response:
        addrs = router.listen_multiaddrs()
        if pod_ip:
            version = ipaddress.ip_address(pod_ip).version
            addrs = [f"/ip{version}/{pod_ip}/tcp/{router_port}", *addrs]
        # Default: the object released Go Spegel (v0.6 to v0.7.4) reads from a peer's /id.
        asked = request.query.get("format")
        fmt: IdFormat = "json" if asked == "json" else "text" if asked == "text" else "object"
        try:
            body = id_document(router.peer_id, addrs, fmt=fmt)
        except RoutingError as exc:
            return web.Response(status=503, text=str(exc))
        return web.Response(text=body)

    app = web.Application()
    app.router.add_get("/id", handle, expect_handler=expect_handler)
    return app


@dataclass(frozen=True)
class Bounds:
    """What one listener allows a client (seconds; 0 turns a bound off). See docs/operations.md."""

    max_connections: int = 4096
    """Open connections; one accepted beyond it waits up to ``queue_timeout`` for a slot. Sized to
    hold slowloris plus idle attackers (4,000 on bench/reliability/slow.py's row, about 9 KiB each):
    below them, every newcomer evicts one that reconnects at once, and the churn starves the loop."""
    queue_timeout: float = 1.0
    """How long a connection accepted at the cap waits (unread) for a slot before it is closed."""
    header_timeout: float = 10.0
    """A connection's first request head must be complete within this."""
    keepalive_timeout: float = 30.0
    """An idle keep-alive connection (or one trickling a later request head) is closed after this."""
    write_timeout: float = 30.0
    """A response that the client stops reading (write buffer full, no drain) is aborted after this."""


REGISTRY_BOUNDS = Bounds()
METRICS_BOUNDS = Bounds(max_connections=16, header_timeout=5.0, keepalive_timeout=30.0, write_timeout=10.0)


async def start(
    stack: AsyncExitStack, app: web.Application, address: str, *, bounds: Bounds = REGISTRY_BOUNDS
) -> web.AppRunner:
    """Serve ``app`` on ``address`` (``host:port`` or ``:port``) until ``stack`` closes, within ``bounds``.

    Raises :class:`ConfigurationError` when the address cannot be listened on (in use, not ours).
    """
    # In-flight registry requests are drained before cleanup (RegistryServer.drain): what is left
    # for aiohttp's own shutdown are idle keep-alive connections, so its bound can be short.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        keepalive_timeout=bounds.keepalive_timeout,
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    reserve_descriptors(bounds.max_connections)
    host, port = split_address(address)
    try:
        site = BoundedSite(
            runner,
            host,
            port,
            max_connections=bounds.max_connections,
            header_timeout=bounds.header_timeout,
            write_timeout=bounds.write_timeout,
            queue_timeout=bounds.queue_timeout,
            screen=app.get(SCREEN, refuse),
        )
        await site.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return runner


def reserve_descriptors(connections: int) -> None:
    """Raise the soft descriptor limit (to the hard one at most) to fit ``connections`` more:
    at the limit accept() fails and asyncio stops accepting on the listener for a second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = len(os.listdir("/proc/self/fd")) + connections + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if soft < needed:
            log.warning("descriptor limit %d is below the %d the connection caps need", soft, needed)

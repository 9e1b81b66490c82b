"""Composition root: the only module that names concrete components and wires them together.

``run_registry`` builds the content store chosen in the settings (imported lazily, so the
registry's idle memory holds no client it does not use), the registry server and the metrics
server, runs them with every background task named and supervised, and shuts down in bounded
time: the first SIGTERM/SIGINT stops accepting and drains in-flight requests for up to
``--shutdown-timeout``, a second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from spegel_py.errors import ConfigurationError, RoutingError, SpegelError
from spegel_py.metrics import Metrics, StateCollector, counter, gauge
from spegel_py.routing.base import RECORD_LIFETIME, Peer, Router
from spegel_py.routing.bootstrap.http import id_document
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.settings import (
    CleanupSettings,
    CleanupWaitSettings,
    ConfigurationSettings,
    RegistrySettings,
    split_address,
)
from spegel_py.store.base import ContentStore

if TYPE_CHECKING:
    from spegel_py.debug.web import DebugInfo, RecentOutcomes
    from spegel_py.relay.bufferpool import BufferPool
    from spegel_py.relay.mirror import Mirror
    from spegel_py.routing.advertiser import Advertiser
    from spegel_py.routing.libp2p.router import Libp2pRouter

log = logging.getLogger(__name__)

# Exit statuses: 0 clean shutdown, 1 runtime failure, 2 bad configuration, 130 forced by a 2nd signal.
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_FORCED = 0, 1, 2, 130


class Supervisor:
    """Named background tasks; the first one to fail unexpectedly stops the daemon."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failure: BaseException | None = None

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            self.failure = exc
            log.error("task failed, stopping", extra={"task": task.get_name(), "error": repr(exc)})
            self._stop.set()

    async def close(self, grace: float) -> None:
        """Cancel what is still running and wait up to ``grace`` seconds for it to finish."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)


async def build_store(settings: RegistrySettings) -> ContentStore:
    """The content store named by ``--content-store`` (imported here, only when chosen)."""
    if settings.content_store == "oci-layout":
        from spegel_py.store.ocilayout import OciLayoutStore

        return OciLayoutStore(settings.oci_layout_path, registry=settings.oci_layout_registry)
    from spegel_py.store.containerd import ContainerdStore

    return ContainerdStore(
        settings.containerd_sock,
        settings.containerd_namespace,
        settings.containerd_content_path,
        rpc_timeout=settings.store_timeout,
    )


def metrics_application(metrics: Metrics) -> web.Application:
    """``GET /metrics`` in the Prometheus text format, from the injected registry."""

    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


async def _start(stack: AsyncExitStack, app: web.Application, address: str) -> web.AppRunner:
    # In-flight requests are drained before cleanup (RegistryServer.drain): what is left for
    # aiohttp's own shutdown are idle keep-alive connections, so its bound can be short.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    host, port = split_address(address)
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return runner


def router_multiaddr(address: str) -> str:
    """``--router-addr`` (``host:port`` or ``:port``) as a libp2p listen multiaddr."""
    host, port = split_address(address)
    if host is None:
        return f"/ip4/0.0.0.0/tcp/{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigurationError(f"--router-addr needs an IP address, not {host!r}") from exc
    return f"/ip{ip.version}/{ip}/tcp/{port}"


class TimedRouter:
    """A :class:`Router` that observes each lookup's time to its first provider.

    Wrapping keeps the metric out of the router (and of the mirror): this is the one place that
    knows both the metrics and the concrete router.
    """

    def __init__(self, router: Router, observe: Callable[[float], None]) -> None:
        self._router = router
        self._observe = observe

    def ready(self) -> bool:
        return self._router.ready()

    async def advertise(self, keys: Iterable[str]) -> None:
        await self._router.advertise(keys)

    async def withdraw(self, keys: Iterable[str]) -> None:
        await self._router.withdraw(keys)

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        started = time.monotonic()
        first = True
        async for peer in self._router.lookup(key, limit=limit):
            if first:
                self._observe(time.monotonic() - started)
                first = False
            yield peer

    async def close(self) -> None:
        await self._router.close()


async def build_router(
    settings: RegistrySettings, *, on_reprovide: Callable[[int, float], None] | None = None
) -> Libp2pRouter:
    """The libp2p router with the bootstrapper ``--bootstrap-kind`` names (started by the caller).

    ``on_reprovide(keys, seconds)``: called on this loop after each periodic reprovide.
    """
    from spegel_py.routing.bootstrap import build_bootstrapper
    from spegel_py.routing.libp2p.router import Libp2pRouter

    _, router_port = split_address(settings.router_addr)
    bootstrap = build_bootstrapper(
        settings.bootstrap_kind,
        router_port=router_port,
        static_peers=settings.static_bootstrap_peers,
        dns_domain=settings.dns_bootstrap_domain,
        http_url=settings.http_bootstrap_url,
        kubernetes_namespace=settings.pod_namespace,
        kubernetes_selector=settings.kubernetes_bootstrap_selector,
        pod_name=settings.pod_name or None,
    )
    return Libp2pRouter(
        listen_addrs=[router_multiaddr(settings.router_addr)],
        data_dir=settings.data_dir,
        registry_port=split_address(settings.registry_addr)[1],
        bootstrap=bootstrap,
        # No way to find peers: a single node is ready on its own (it still accepts dials).
        alone=bootstrap is None,
        record_ttl=RECORD_LIFETIME,
        reprovide_interval=settings.reprovide_interval,
        on_reprovide=on_reprovide,
    )


def id_application(router: Libp2pRouter, settings: RegistrySettings) -> web.Application:
    """``GET /id`` for ``--bootstrap-kind=http`` peers: this node's dialable router address."""
    _, router_port = split_address(settings.router_addr)

    async def handle(request: web.Request) -> web.Response:
        addrs = router.listen_multiaddrs()
        if settings.pod_ip:  # listening on 0.0.0.0: the pod IP is what peers can dial
            version = ipaddress.ip_address(settings.pod_ip).version
            addrs = [f"/ip{version}/{settings.pod_ip}/tcp/{router_port}", *addrs]
        fmt: Literal["text", "json"] = "json" if request.query.get("format") == "json" else "text"
        try:
            body = id_document(router.peer_id, addrs, fmt=fmt)
        except RoutingError as exc:
            return web.Response(status=503, text=str(exc))
        return web.Response(text=body)

    app = web.Application()
    app.router.add_get("/id", handle)
    return app


def state_metrics(
    *, router: Libp2pRouter, advertiser: Advertiser, mirror: Mirror, pool: BufferPool
) -> Callable[[], Iterable[Metric]]:
    """Scrape-time metrics read from the components' own counters."""

    def source() -> Iterable[Metric]:
        families = {
            "spegel_advertised_images": "Images advertised to peers, by registry.",
            "spegel_advertised_image_tags": "Tagged images advertised to peers, by registry.",
            "spegel_advertised_image_digests": "Images advertised by digest only, by registry.",
            "spegel_advertised_content_digests": "Distinct blob digests advertised, by registry.",
        }
        gauges = {name: GaugeMetricFamily(name, text, labels=["registry"]) for name, text in families.items()}
        for registry, counts in advertiser.counts().items():
            gauges["spegel_advertised_images"].add_metric([registry], counts.images)
            gauges["spegel_advertised_image_tags"].add_metric([registry], counts.image_tags)
            gauges["spegel_advertised_image_digests"].add_metric([registry], counts.image_digests)
            gauges["spegel_advertised_content_digests"].add_metric([registry], counts.content_digests)
        yield from gauges.values()
        yield gauge("spegel_advertised_keys", "Keys announced through the router.",
                    len(advertiser.advertised()))
        yield counter("spegel_advertise_failures", "Advertise batches that failed and were retried.",
                      advertiser.failures)
        yield gauge("spegel_router_peers", "Peers in the routing table.", router.peer_count())
        yield gauge("spegel_router_provider_records",
                    "Provider records (key, provider) this node's DHT stores for the cluster.",
                    router.provider_records())
        stats = mirror.stats
        yield counter("spegel_mirror_resumed_streams", "Blob streams resumed from another peer.",
                      stats.resumed)
        yield counter("spegel_mirror_integrity_failures",
                      "Peer responses whose bytes did not match their digest.", stats.corrupt)
        yield counter("spegel_mirror_hedged_attempts", "Extra parallel peer attempts started.", stats.hedged)
        yield counter("spegel_mirror_aborted_responses", "Client responses killed mid-body.", stats.aborted)
        relayed = CounterMetricFamily("spegel_relayed_bytes", "Body bytes relayed from peers.")
        relayed.add_metric([], stats.bytes_relayed)
        yield relayed
        yield gauge("spegel_relay_buffers_in_use", "Relay buffers in use.", pool.in_use)
        yield gauge("spegel_relay_buffers_capacity", "Relay buffers available at most.", pool.capacity)
        yield gauge("spegel_relay_buffers_allocated", "Relay buffers allocated so far.", pool.allocated)
        yield gauge("spegel_relay_buffer_size_bytes", "Size of each relay buffer (--relay-buffer-size).",
                    pool.size)
        yield gauge("spegel_relay_hash_threads",
                    "Threads hashing relayed bytes (--relay-hash-threads; 0: on the event loop).",
                    mirror.settings.hash_threads)
        yield counter("spegel_relay_buffer_waits", "Times a stream waited for a relay buffer.",
                      pool.waits_total)
        yield counter("spegel_relay_buffer_timeouts", "Times a stream gave up waiting for a relay buffer.",
                      pool.timeouts_total)
        cache = cgroup_cache_bytes()
        if cache is not None:
            yield gauge("spegel_cgroup_page_cache_bytes",
                        "Page cache charged to this process's memory cgroup (v1 total_cache, v2 file).",
                        cache)

    return source


def debug_info(*, router: Libp2pRouter, advertiser: Advertiser, outcomes: RecentOutcomes) -> DebugInfo:
    """What ``/debug/web`` shows, read from the live components at each request."""
    from spegel_py.debug.web import Advertised, AdvertisedImage, DebugInfo

    def advertised() -> Advertised:
        counts = advertiser.counts().values()
        # distinct over registries (images in two registries share their blobs' keys)
        digests = sum(1 for key in advertiser.advertised() if key.startswith(("sha256:", "sha512:")))
        return Advertised(
            images=[AdvertisedImage(name, str(root)) for name, root in advertiser.images()],
            tags=sum(c.image_tags for c in counts),
            image_digests=sum(c.image_digests for c in counts),
            content_digests=digests,
        )

    return DebugInfo(
        peer_id=lambda: router.peer_id, peers=router.peers, advertised=advertised, outcomes=outcomes
    )


def cgroup_cache_bytes() -> float | None:
    """Page cache charged to this process's memory cgroup, or None where it cannot be read."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates: list[tuple[str, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append((f"/sys/fs/cgroup{path}/memory.stat", "file"))
        elif "memory" in controllers.split(","):
            candidates.append((f"/sys/fs/cgroup/memory{path}/memory.stat", "total_cache"))
    for stat, key in candidates:
        try:
            with open(stat, encoding="ascii") as f:
                for row in f:
                    name, _, value = row.partition(" ")
                    if name == key:
                        return float(value)
        except OSError:
            continue
    return None


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then shut down gracefully (bounded by ``shutdown_timeout``)."""
    from spegel_py.debug.outcomes import RecordingHealth, RecordingMirror, recording_hook
    from spegel_py.debug.web import RecentOutcomes, debug_routes
    from spegel_py.oci.filters import RegistryFilter
    from spegel_py.relay.bufferpool import BufferPool
    from spegel_py.relay.mirror import Mirror
    from spegel_py.relay.peerclient import PeerClient
    from spegel_py.relay.peerhealth import PeerHealth
    from spegel_py.relay.settings import MirrorSettings
    from spegel_py.routing.advertiser import Advertiser
    from spegel_py.serving.seam import MissHandler

    metrics = Metrics()
    ProcessCollector(registry=metrics.registry)  # process_resident_memory_bytes and friends
    filters = RegistryFilter.from_flags(
        mirrored_registries=settings.mirrored_registries, registry_filters=settings.registry_filters
    )
    coordinator = PageCacheCoordinator(
        enabled=settings.page_cache_eviction,
        lag=settings.page_cache_eviction_lag,
        on_evict=metrics.page_cache_evicted.inc,
    )
    supervisor = Supervisor(stop)
    async with AsyncExitStack() as stack:
        stack.callback(coordinator.close)
        store = await build_store(settings)
        stack.push_async_callback(store.close)
        libp2p = await build_router(
            settings, on_reprovide=lambda _keys, seconds: metrics.reprovide_duration.observe(seconds)
        )
        stack.push_async_callback(libp2p.close)
        await libp2p.start()
        router = TimedRouter(libp2p, metrics.resolve_duration.labels("libp2p").observe)
        pool = BufferPool(count=settings.relay_buffers, size=settings.relay_buffer_size)
        # /debug/web's recent outcomes: the mirror's result hook and peer health, noted per request
        outcomes = RecentOutcomes() if settings.debug_web_enabled else None
        mirror = Mirror(
            router,
            client=PeerClient(),
            pool=pool,
            health=PeerHealth() if outcomes is None else RecordingHealth(),
            settings=MirrorSettings(
                first_provider_timeout=settings.mirror_resolve_timeout,
                lookup_limit=max(1, settings.mirror_resolve_retries),
                resolve_latest=settings.resolve_latest_tag,
                hash_threads=settings.relay_hash_threads,
            ),
            filters=filters,
            on_result=metrics.mirror_result if outcomes is None else recording_hook(metrics.mirror_result),
        )
        stack.push_async_callback(mirror.close)
        advertiser = Advertiser(
            store, router, registry_filter=filters, on_batch=metrics.advertise_duration.observe
        )
        stack.push_async_callback(supervisor.close, settings.shutdown_timeout)
        supervisor.spawn("advertiser", advertiser.run())
        metrics.registry.register(
            StateCollector(state_metrics(router=libp2p, advertiser=advertiser, mirror=mirror, pool=pool))
        )
        on_miss: MissHandler = mirror if outcomes is None else RecordingMirror(mirror, outcomes)
        server = RegistryServer(
            store,
            metrics=metrics,
            coordinator=coordinator,
            on_miss=on_miss,
            router=router,
            store_timeout=settings.store_timeout,
        )
        registry_app = server.application()
        if outcomes is not None:
            # aiohttp (3.10 and later) tries the most specific path first: this exact route wins
            # over the server's catch-all; disabled, /debug/web is an unknown path there (404).
            info = debug_info(router=libp2p, advertiser=advertiser, outcomes=outcomes)
            registry_app.router.add_routes(debug_routes(info))
        # Registered after the store: cleanup runs in reverse, so servers drain before it closes.
        registry = await _start(stack, registry_app, settings.registry_addr)
        await _start(stack, metrics_application(metrics), settings.metrics_addr)
        if settings.http_bootstrap_addr:
            await _start(stack, id_application(libp2p, settings), settings.http_bootstrap_addr)
        addresses = {
            "registry_addr": settings.registry_addr,
            "metrics_addr": settings.metrics_addr,
            "router_addrs": libp2p.listen_multiaddrs(),
            "peer_id": libp2p.peer_id,
        }
        log.info("serving", extra={**addresses, "content_store": settings.content_store})
        await stop.wait()
        log.info("shutting down", extra={"drain_timeout_s": settings.shutdown_timeout})
        for site in list(registry.sites):  # stop accepting first, then drain what is in flight
            await site.stop()
        try:
            await server.drain(settings.shutdown_timeout)
        except asyncio.CancelledError:  # a second signal: cancel what is in flight right away
            await server.drain(0)
            raise
    if supervisor.failure is not None:
        raise supervisor.failure


async def _until_signalled(body: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run ``body(stop)``: the first SIGTERM/SIGINT sets ``stop``, a second cancels ``body``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
            stop.set()
        elif main is not None:
            log.warning("second signal, forcing exit", extra={"signal": signal.Signals(signum).name})
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await body(stop)
    except asyncio.CancelledError:
        return EXIT_FORCED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def _run(body: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run a daemon body to completion; returns the process exit status."""
    try:
        return asyncio.run(_until_signalled(body))
    except ConfigurationError as exc:
        log.error("configuration error", extra={"error": str(exc)})
        return EXIT_CONFIG
    except SpegelError as exc:
        log.error("stopped on error", extra={"error": str(exc)})
        return EXIT_FAILURE
    except Exception:  # a bug: report it as one JSON log line (with its traceback), exit 1
        log.exception("crashed")
        return EXIT_FAILURE


def run_registry(settings: RegistrySettings) -> int:
    """Run ``spegel-py registry`` to completion; returns the process exit status."""

    async def body(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    return _run(body)


def run_configuration(settings: ConfigurationSettings) -> int:
    """``spegel-py configuration``: write certs.d, then say what containerd will make of it."""
    from spegel_py.hosts import check_containerd_config, configure_mirrors

    try:
        warnings = configure_mirrors(
            settings.containerd_registry_config_path,
            settings.mirrored_registries,
            settings.mirror_targets,
            resolve_tags=settings.resolve_tags,
            prepend_existing=settings.prepend_existing,
            dial_timeout=settings.dial_timeout,
        )
        certs_dir = settings.containerd_registry_config_path
        findings = check_containerd_config(settings.containerd_config, certs_dir)
    except ConfigurationError as exc:
        log.error("configuration error", extra={"error": str(exc)})
        return EXIT_CONFIG
    except SpegelError as exc:
        log.error("configuration failed", extra={"error": str(exc)})
        return EXIT_FAILURE
    for warning in warnings:
        log.warning(warning)
    for finding in findings:
        log.warning(str(finding), extra={"problem": finding.problem.value})
    return EXIT_OK


def run_cleanup(settings: CleanupSettings) -> int:
    """``spegel-py cleanup``: restore certs.d, then answer ``/healthz`` until signalled."""
    from spegel_py.cleanup import run_cleanup as restore_and_report

    async def body(stop: asyncio.Event) -> None:
        await restore_and_report(settings.containerd_registry_config_path, settings.addr, stop)

    return _run(body)


def run_cleanup_wait(settings: CleanupWaitSettings) -> int:
    """``spegel-py cleanup-wait``: return once every cleanup pod reported success (or on a signal)."""
    from spegel_py.cleanup import wait_for_cleanup

    async def body(stop: asyncio.Event) -> None:
        waiting = asyncio.create_task(
            wait_for_cleanup(settings.probe_endpoint, period=settings.period, threshold=settings.threshold),
            name="cleanup-wait",
        )
        stopping = asyncio.create_task(stop.wait(), name="cleanup-wait-stop")
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)
        failure = waiting.exception() if waiting.done() and not waiting.cancelled() else None
        if failure is not None:
            raise failure

    return _run(body)

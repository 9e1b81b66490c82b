"""Composition root: the only module that names concrete components and wires them together.

:func:`serve` builds the content store chosen in the settings (imported lazily, so the
registry's idle memory holds no client it does not use), the libp2p router, the relay, the
advertiser, the registry server and the metrics and ``/id`` endpoints, and runs the background
tasks under a :class:`~spegel_py.supervise.Supervisor`. The ``run_*`` functions are the CLI's
subcommands; signals, shutdown and exit statuses are :mod:`spegel_py.supervise`'s.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from spegel_py import endpoints, swarm
from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.flagvalues import split_address
from spegel_py.metrics import Metrics
from spegel_py.routing.base import RECORD_LIFETIME, Router
from spegel_py.routing.timed import TimedRouter
from spegel_py.settings import (
    CleanupSettings,
    CleanupWaitSettings,
    ConfigurationSettings,
    RegistrySettings,
)
from spegel_py.store.base import ContentStore, IngestSource
from spegel_py.supervise import EXIT_OK, Supervisor, exit_status, run

if TYPE_CHECKING:
    from spegel_py.debug.web import DebugInfo, RecentOutcomes
    from spegel_py.routing.advertiser import Advertiser
    from spegel_py.routing.libp2p.router import Libp2pRouter

log = logging.getLogger(__name__)


class NodeRouter(Router, Protocol):
    """The router the daemon runs: a :class:`Router` that is started, can fail in the background,
    and tells ``/id``, ``/debug/web`` and the metrics about itself (``Libp2pRouter``)."""

    @property
    def peer_id(self) -> str: ...

    async def start(self) -> None: ...

    async def wait_failed(self) -> BaseException:
        """The exception that stopped the router; never returns while it runs."""
        ...

    def listen_multiaddrs(self) -> list[str]: ...

    def peer_count(self) -> int: ...

    def peers(self) -> list[str]: ...

    def provider_records(self) -> int: ...

    def provider_refusals(self) -> Mapping[str, int]: ...

    def stream_refusals(self) -> Mapping[str, int]: ...


class RouterBuilder(Protocol):
    """Builds (does not start) the daemon's router: :func:`build_router`, or a test's."""

    async def __call__(
        self, settings: RegistrySettings, *, on_reprovide: Callable[[int, float], None] | None = None
    ) -> NodeRouter: ...


# Where Spegel v0.7 reads its registry credentials (the chart's basicAuthSecretName).
BASIC_AUTH_DIR = "/etc/secrets/basic-auth"


def basic_auth() -> str | None:
    """The ``Authorization`` value of Spegel's registry basic auth: the files ``username`` and
    ``password`` of :data:`BASIC_AUTH_DIR`, taken as they are (no newline stripped), as Spegel
    takes them; ``None`` when both are absent or empty (no auth, as in Spegel)."""
    parts = []
    for name in ("username", "password"):
        try:
            parts.append(Path(BASIC_AUTH_DIR, name).read_bytes())
        except FileNotFoundError:
            parts.append(b"")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {BASIC_AUTH_DIR}/{name}: {exc.strerror or exc}") from exc
    if not any(parts):
        return None
    return "Basic " + base64.b64encode(parts[0] + b":" + parts[1]).decode("ascii")


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


async def build_router(
    settings: RegistrySettings, *, on_reprovide: Callable[[int, float], None] | None = None
) -> Libp2pRouter:
    """The libp2p router with the bootstrapper ``--bootstrap-kind`` names (started by the caller).

    ``on_reprovide(keys, seconds)``: called on this loop after each periodic reprovide.
    """
    from spegel_py.routing.bootstrap import bootstrap_url, build_bootstrapper
    from spegel_py.routing.libp2p.router import Libp2pRouter

    _, router_port = split_address(settings.router_addr)
    bootstrap = build_bootstrapper(
        settings.bootstrap_kind,
        router_port=router_port,
        static_peers=settings.static_bootstrap_peers,
        dns_domain=settings.dns_bootstrap_domain,
        http_url=bootstrap_url(url=settings.http_bootstrap_url, peer=settings.http_bootstrap_peer),
        http_cert_dir=settings.http_bootstrap_cert_dir,
        kubernetes_namespace=settings.pod_namespace,
        kubernetes_selector=settings.kubernetes_bootstrap_selector,
        pod_name=settings.pod_name or None,
    )
    from spegel_py.routing.libp2p import psk

    key = psk.load(settings.router_psk_file)
    if key is not None:
        log.info("private network: router connections need the pre-shared key",
                 extra={"fingerprint": key.fingerprint})
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
        psk=key,
    )


async def watch_router(router: NodeRouter) -> None:
    """The supervised task "router": ends the daemon when the router stops on a failure."""
    exc = await router.wait_failed()
    raise RoutingError(f"router stopped: {exc!r}")


def debug_info(*, router: NodeRouter, advertiser: Advertiser, outcomes: RecentOutcomes) -> DebugInfo:
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


async def serve(
    settings: RegistrySettings, stop: asyncio.Event, *, router_builder: RouterBuilder = build_router
) -> None:
    """Run until ``stop`` is set, then shut down gracefully (bounded by ``shutdown_timeout``).

    The first supervised task to fail sets ``stop`` too, makes ``/readyz`` answer 503 from then
    on, and is raised (a :class:`~spegel_py.errors.TaskFailedError`) once the daemon has drained.
    """
    from spegel_py.debug.outcomes import RecordingHealth, RecordingMirror, recording_hook
    from spegel_py.debug.web import RecentOutcomes, debug_routes
    from spegel_py.oci.filters import RegistryFilter
    from spegel_py.relay.bufferpool import BufferPool
    from spegel_py.relay.mirror import Mirror
    from spegel_py.relay.peerclient import PeerClient
    from spegel_py.relay.peerhealth import PeerHealth
    from spegel_py.relay.settings import MirrorSettings, multi_peer_flags
    from spegel_py.routing.advertiser import Advertiser
    from spegel_py.routing.inprogress import InProgressAdvertiser
    from spegel_py.routing.inprogresslookup import InProgressLookup
    from spegel_py.serving.content import WriteBounds
    from spegel_py.serving.growing import FollowBounds
    from spegel_py.serving.pagecache import PageCacheCoordinator
    from spegel_py.serving.seam import MissHandler
    from spegel_py.serving.server import RegistryServer

    authorization = basic_auth()
    filters = RegistryFilter.from_flags(
        mirrored_registries=settings.mirrored_registries, registry_filters=settings.registry_filters
    )
    metrics = Metrics(mirrored_registries=filters.registries)
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
        node = await router_builder(
            settings, on_reprovide=lambda _keys, seconds: metrics.reprovide_duration.observe(seconds)
        )
        stack.push_async_callback(node.close)
        await node.start()
        # What the mirror and /readyz use: not ready from the moment a supervised task failed.
        router = TimedRouter(
            node, metrics.resolve_duration.labels("libp2p").observe, healthy=lambda: supervisor.healthy
        )
        pool = BufferPool(count=settings.relay_buffers, size=settings.relay_buffer_size)
        # /debug/web's recent outcomes: the mirror's result hook and peer health, noted per request
        outcomes = RecentOutcomes() if settings.debug_web_enabled else None
        # --serve-in-progress: the relay also finds peers still pulling a blob (issue 12)
        mirror = Mirror(
            InProgressLookup(router) if settings.serve_in_progress else router,
            client=(client := PeerClient(authorization=authorization)),  # the coordinator's probes too
            pool=pool,
            health=PeerHealth() if outcomes is None else RecordingHealth(),
            settings=MirrorSettings(
                first_provider_timeout=settings.mirror_resolve_timeout,
                lookup_limit=max(1, settings.mirror_resolve_retries),
                resolve_latest=settings.resolve_latest_tag,
                hash_threads=settings.relay_hash_threads,
                min_throughput=settings.mirror_min_throughput,
                throughput_window=settings.mirror_throughput_window,
                deadline_allowance=settings.mirror_deadline_allowance, **multi_peer_flags(settings),
            ),
            filters=filters,
            on_result=metrics.mirror_result if outcomes is None else recording_hook(metrics.mirror_result),
            coordinator=await swarm.pull_coordinator(settings, node, client, metrics),
        )
        stack.push_async_callback(mirror.close)
        advertiser = Advertiser(
            store, router, registry_filter=filters, on_batch=metrics.advertise_duration.observe
        )
        # Registered after the router's close: the tasks are cancelled before the router closes.
        stack.push_async_callback(supervisor.close, settings.shutdown_timeout)
        supervisor.spawn("router", watch_router(node))
        supervisor.spawn("advertiser", advertiser.run())
        ingests = store if settings.serve_in_progress and isinstance(store, IngestSource) else None
        if ingests is not None:  # blobs being pulled: advertised under their in-progress key
            in_progress = InProgressAdvertiser(
                ingests, store, router, settled=advertiser.advertised, linger=settings.in_progress_linger,
                stall=settings.in_progress_stall_timeout, interval=settings.in_progress_poll_interval,
                on_count=metrics.in_progress_advertised.set)  # fmt: skip
            supervisor.spawn("in-progress-advertiser", in_progress.run())
        metrics.watch(router=node, advertiser=advertiser, relay=mirror, pool=pool)
        on_miss: MissHandler = mirror if outcomes is None else RecordingMirror(mirror, outcomes)
        server = RegistryServer(
            store,
            metrics=metrics,
            coordinator=coordinator,
            on_miss=on_miss,
            router=router,
            store_timeout=settings.store_timeout,
            authorization=authorization,
            filters=filters,
            write_bounds=WriteBounds(settings.write_timeout, settings.serve_min_throughput),
            ingests=ingests,
            follow=FollowBounds(stall_timeout=settings.in_progress_stall_timeout),
        )
        registry_app = server.application()
        # /debug/web/ goes on the metrics listener, as in Spegel: the registry port is open to
        # every client of the cluster (NodePort); there /debug/web is an unknown path (404).
        debug = () if outcomes is None else debug_routes(
            debug_info(router=node, advertiser=advertiser, outcomes=outcomes)
        )
        # Registered after the store: cleanup runs in reverse, so servers drain before it closes.
        bounds = endpoints.Bounds(
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            write_timeout=settings.write_timeout,
        )
        registry = await endpoints.start(stack, registry_app, settings.registry_addr, bounds=bounds)
        metrics_app = endpoints.metrics_application(metrics.registry, routes=debug)
        await endpoints.start(stack, metrics_app, settings.metrics_addr, bounds=endpoints.METRICS_BOUNDS)
        if settings.http_bootstrap_addr:
            id_app = endpoints.id_application(
                node, router_port=split_address(settings.router_addr)[1], pod_ip=settings.pod_ip
            )
            await endpoints.start(
                stack, id_app, settings.http_bootstrap_addr, bounds=endpoints.METRICS_BOUNDS
            )
        addresses = {
            "registry_addr": settings.registry_addr,
            "metrics_addr": settings.metrics_addr,
            "router_addrs": node.listen_multiaddrs(),
            "peer_id": node.peer_id,
        }
        log.info("serving", extra={**addresses, "content_store": settings.content_store})
        await stop.wait()
        failed = {"failed_task": supervisor.failure.task} if supervisor.failure is not None else {}
        log.info("shutting down", extra={"drain_timeout_s": settings.shutdown_timeout, **failed})
        for site in list(registry.sites):  # stop accepting first, then drain what is in flight
            await site.stop()
        try:
            await server.drain(settings.shutdown_timeout)
        except asyncio.CancelledError:  # a second signal: cancel what is in flight right away
            await server.drain(0)
            raise
    if supervisor.failure is not None:
        raise supervisor.failure


def run_registry(settings: RegistrySettings) -> int:
    """Run ``spegel-py registry`` to completion; returns the process exit status."""
    return run(lambda stop: serve(settings, stop))


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
            authorization=basic_auth(),
        )
        certs_dir = settings.containerd_registry_config_path
        findings = check_containerd_config(settings.containerd_config, certs_dir)
    except Exception as exc:
        return exit_status(exc)
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

    return run(body)


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

    return run(body)

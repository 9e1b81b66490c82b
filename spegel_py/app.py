"""Composition root: the only module that names concrete components and wires them together.

``run_registry`` builds the content store chosen in the settings (imported lazily, so the
registry's idle memory holds no client it does not use), the registry server and the metrics
server, runs them with every background task named and supervised, and shuts down in bounded
time: the first SIGTERM/SIGINT stops accepting and drains in-flight requests for up to
``--shutdown-timeout``, a second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest

from spegel_py.errors import ConfigurationError, SpegelError
from spegel_py.metrics import Metrics
from spegel_py.registry.pagecache import PageCacheCoordinator
from spegel_py.registry.server import RegistryServer
from spegel_py.settings import (
    CleanupSettings,
    CleanupWaitSettings,
    ConfigurationSettings,
    RegistrySettings,
    split_address,
)
from spegel_py.store.base import ContentStore

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


async def serve(settings: RegistrySettings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then shut down gracefully (bounded by ``shutdown_timeout``)."""
    metrics = Metrics()
    ProcessCollector(registry=metrics.registry)  # process_resident_memory_bytes and friends
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
        stack.push_async_callback(supervisor.close, settings.shutdown_timeout)
        server = RegistryServer(
            store, metrics=metrics, coordinator=coordinator, store_timeout=settings.store_timeout
        )
        # Registered after the store: cleanup runs in reverse, so servers drain before it closes.
        registry = await _start(stack, server.application(), settings.registry_addr)
        await _start(stack, metrics_application(metrics), settings.metrics_addr)
        addresses = {"registry_addr": settings.registry_addr, "metrics_addr": settings.metrics_addr}
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

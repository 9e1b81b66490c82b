"""Kubernetes bootstrap: the Running pods of this DaemonSet, listed through the API server.

spegel-py's addition to Spegel's kinds: no headless service or bootstrap URL to maintain, the
DaemonSet's own label selector finds the peers. The pod needs RBAC ``list`` on ``pods`` in its
namespace. The ``kubernetes`` client is synchronous (urllib3), so each listing runs in a worker
thread, and it is imported here only, lazily, so no other kind pays its import time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.bootstrap._addr import tcp_multiaddr


class KubernetesBootstrapper:
    """Lists pods matching ``label_selector`` in ``namespace`` and answers their router multiaddrs.

    ``configuration`` is a ``kubernetes.client.Configuration``; ``None`` loads the in-cluster
    one (service-account token and CA) on each call. ``self_name`` (this pod's name) is left out.
    ``port`` is the router port (equal on every pod of a DaemonSet); ``limit`` caps the answer
    (0 = every pod), taking pods in name order so all nodes start from the same few;
    ``timeout`` bounds one API request in seconds.
    """

    def __init__(
        self,
        *,
        namespace: str,
        label_selector: str,
        port: int,
        configuration: Any | None = None,
        self_name: str | None = None,
        limit: int = 0,
        timeout: float = 10.0,
    ) -> None:
        self._namespace = namespace
        self._selector = label_selector
        self._port = port
        self._configuration = configuration
        self._self_name = self_name
        self._limit = limit
        self._timeout = timeout

    async def peers(self) -> list[str]:
        return await asyncio.to_thread(self._list_sync)

    def _list_sync(self) -> list[str]:
        import kubernetes  # lazy: only nodes configured for this kind import the client
        import urllib3

        configuration = self._configuration
        if configuration is None:
            configuration = kubernetes.client.Configuration()
            try:
                # The kubernetes package ships no annotations for its config loaders.
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except kubernetes.config.ConfigException as exc:
                raise ConfigurationError(f"no in-cluster Kubernetes configuration: {exc}") from exc
        try:
            with kubernetes.client.ApiClient(configuration) as api:
                pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(
                    self._namespace, label_selector=self._selector, _request_timeout=self._timeout
                )
        except kubernetes.client.ApiException as exc:
            where = f"pods {self._selector!r} in {self._namespace!r}"
            raise RoutingError(f"listing {where}: HTTP {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:  # unreachable, or a bad body
            raise RoutingError(f"listing pods in {self._namespace!r}: {exc!r}") from exc
        return self._addresses(pods.items or [])

    def _addresses(self, pods: list[Any]) -> list[str]:
        out: list[str] = []
        for pod in sorted(pods, key=lambda p: p.metadata.name or ""):
            status = pod.status
            if pod.metadata.name == self._self_name or pod.metadata.deletion_timestamp is not None:
                continue
            if status is None or status.phase != "Running":
                continue
            ips = [entry.ip for entry in status.pod_ips or [] if entry.ip] or [status.pod_ip]
            addrs = [tcp_multiaddr(ip, self._port) for ip in ips if ip]
            if not addrs:
                continue
            out.extend(addrs)
            if self._limit and len(out) >= self._limit:
                break
        return out

"""TEST DOUBLE: a fake Kubernetes API server, the one stand-in the project allows.

No kube-apiserver can run on these machines, so the Kubernetes bootstrap is tested against this
small aiohttp server that answers ``GET /api/v1/namespaces/<ns>/pods?labelSelector=...`` with
PodList JSON shaped like a real API server's (the official ``kubernetes`` client deserializes
it), checks the bearer token, and applies equality-based label selectors (``a=b``, ``a==b``,
``a!=b``, ``a``, ``!a``) the way the API server does. Everything else answers a 404 ``Status``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

_counter = itertools.count(1000)


def make_pod(
    name: str,
    *,
    ip: str | None,
    phase: str = "Running",
    namespace: str = "spegel",
    labels: Mapping[str, str] | None = None,
    node: str | None = None,
    deleting: bool = False,
    extra_ips: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One pod of a DaemonSet as the API server returns it (fields the client models require)."""
    labels = dict(labels if labels is not None else {"app.kubernetes.io/name": "spegel"})
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": str(uuid.uuid4()),
        "resourceVersion": str(next(_counter)),
        "creationTimestamp": "2026-11-23T20:00:00Z",
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": "spegel",
                "uid": "6f1c1b7e-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-23T20:05:00Z"
        metadata["deletionGracePeriodSeconds"] = 30
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "10.0.0.1",
        "startTime": "2026-11-23T20:00:01Z",
        "conditions": [
            {"type": "Ready", "status": "True" if phase == "Running" else "False",
             "lastTransitionTime": "2026-11-23T20:00:05Z"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}, *({"ip": extra} for extra in extra_ips)]
    return {
        "metadata": metadata,
        "spec": {
            "nodeName": node or f"node-{name}",
            "containers": [
                {"name": "registry", "image": "ghcr.io/spegel-org/spegel:v0.7.4",
                 "ports": [{"name": "router", "containerPort": 5001, "protocol": "TCP"}]}
            ],
        },
        "status": status,
    }


def _matches(selector: str, labels: Mapping[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


class FakeKubeApiServer:
    """Serves ``pods`` (a list of :func:`make_pod` dicts, mutable between requests) on ``host``.

    ``requests`` records ``(namespace, labelSelector)`` of every pod listing, so a test can check
    what the client asked for. Use as an async context manager.
    """

    def __init__(self, *, host: str = "127.0.0.1", token: str = "test-token") -> None:
        self.host = host
        self.token = token
        self.pods: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.forbidden = False  # answer 403, as the API server does without RBAC
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` pointing at this server with its token."""
        import kubernetes

        cfg = kubernetes.client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    async def _list_pods(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        namespace = request.match_info["namespace"]
        selector = request.query.get("labelSelector", "")
        self.requests.append((namespace, selector))
        if self.forbidden:
            message = f'pods is forbidden: cannot list resource "pods" in the namespace "{namespace}"'
            return _status(403, "Forbidden", message)
        items = [
            pod for pod in self.pods
            if pod["metadata"]["namespace"] == namespace and _matches(selector, pod["metadata"]["labels"])
        ]
        return web.json_response({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(next(_counter))},
            "items": items,
        })

    async def _not_found(self, request: web.Request) -> web.Response:
        return _status(404, "NotFound", "the server could not find the requested resource")

    async def __aenter__(self) -> FakeKubeApiServer:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._list_pods)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server's sockets
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

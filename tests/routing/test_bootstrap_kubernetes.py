"""Kubernetes bootstrap against the fake API server (tests/fakes/kube_apiserver.py, a test double)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fakes.kube_apiserver import FakeKubeApiServer, make_pod
from support.poll import eventually

from spegel_py.errors import ConfigurationError, RoutingError
from spegel_py.routing.bootstrap import Bootstrapper, KubernetesBootstrapper

SELECTOR = "app.kubernetes.io/name=spegel,app.kubernetes.io/instance=spegel"
LABELS = {"app.kubernetes.io/name": "spegel", "app.kubernetes.io/instance": "spegel"}


def cluster() -> list[dict[str, object]]:
    return [
        make_pod("spegel-c", ip="10.0.0.12", labels=LABELS),
        make_pod("spegel-a", ip="10.0.0.10", labels=LABELS),
        make_pod("spegel-b", ip="10.0.0.11", labels=LABELS, extra_ips=("fd00::11",)),
        make_pod("spegel-pending", ip=None, phase="Pending", labels=LABELS),
        make_pod("spegel-failed", ip="10.0.0.13", phase="Failed", labels=LABELS),
        make_pod("spegel-leaving", ip="10.0.0.14", labels=LABELS, deleting=True),
        make_pod("other-app", ip="10.0.0.20", labels={"app.kubernetes.io/name": "other"}),
        make_pod("spegel-elsewhere", ip="10.0.0.30", labels=LABELS, namespace="kube-system"),
    ]


@pytest.mark.parametrize(
    ("self_name", "limit", "expected"),
    [
        (
            None,
            0,
            [
                "/ip4/10.0.0.10/tcp/5001",
                "/ip4/10.0.0.11/tcp/5001",
                "/ip6/fd00::11/tcp/5001",
                "/ip4/10.0.0.12/tcp/5001",
            ],
        ),
        ("spegel-a", 0, ["/ip4/10.0.0.11/tcp/5001", "/ip6/fd00::11/tcp/5001", "/ip4/10.0.0.12/tcp/5001"]),
        (None, 1, ["/ip4/10.0.0.10/tcp/5001"]),
    ],
)
async def test_running_pods_of_the_daemonset(self_name: str | None, limit: int, expected: list[str]) -> None:
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        api.pods = cluster()
        boot = KubernetesBootstrapper(
            namespace="spegel",
            label_selector=SELECTOR,
            port=5001,
            configuration=api.configuration(),
            self_name=self_name,
            limit=limit,
        )
        assert isinstance(boot, Bootstrapper)
        assert await boot.peers() == expected
        assert api.requests == [("spegel", SELECTOR)]


async def test_sees_pods_that_arrive_later() -> None:
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        boot = KubernetesBootstrapper(
            namespace="spegel", label_selector=SELECTOR, port=5001, configuration=api.configuration()
        )
        assert await boot.peers() == []
        api.pods.append(make_pod("spegel-late", ip="10.0.0.50", labels=LABELS))
        assert await boot.peers() == ["/ip4/10.0.0.50/tcp/5001"]


async def test_forbidden_is_a_routing_error() -> None:
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        api.forbidden = True
        boot = KubernetesBootstrapper(
            namespace="spegel", label_selector=SELECTOR, port=5001, configuration=api.configuration()
        )
        with pytest.raises(RoutingError, match="403"):
            await boot.peers()


async def test_wrong_token_is_a_routing_error() -> None:
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        cfg = api.configuration()
        cfg.api_key = {"authorization": "wrong"}
        boot = KubernetesBootstrapper(
            namespace="spegel", label_selector=SELECTOR, port=5001, configuration=cfg
        )
        with pytest.raises(RoutingError, match="401"):
            await boot.peers()


async def test_unreachable_api_server_is_a_routing_error() -> None:
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        cfg = api.configuration()
    # The server is gone now: nothing listens on that port any more.
    cfg.retries = False
    boot = KubernetesBootstrapper(
        namespace="spegel", label_selector=SELECTOR, port=5001, configuration=cfg, timeout=2
    )
    with pytest.raises(RoutingError):
        await boot.peers()


async def test_outside_a_cluster_in_cluster_config_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    boot = KubernetesBootstrapper(namespace="spegel", label_selector=SELECTOR, port=5001)
    with pytest.raises(ConfigurationError):
        await boot.peers()


async def test_libp2p_routers_meet_through_the_api_server(tmp_path: Path) -> None:
    """Two spegel-py routers on one port (as in a DaemonSet), different IPs: each lists the pods,
    dials the bare addresses (peer ids learned on dial) and finds the other's provider records."""
    from spegel_py.routing.libp2p.router import Libp2pRouter

    ips = ("127.0.0.51", "127.0.0.52")
    port = _free_port_on(ips)
    async with FakeKubeApiServer(host="127.0.0.41") as api:
        api.pods = [make_pod(f"spegel-{i}", ip=ip, labels=LABELS) for i, ip in enumerate(ips)]
        routers = [
            Libp2pRouter(
                listen_addrs=[f"/ip4/{ip}/tcp/{port}"],
                data_dir=tmp_path / str(i),
                registry_port=5000,
                bootstrap=KubernetesBootstrapper(
                    namespace="spegel",
                    label_selector=SELECTOR,
                    port=port,
                    configuration=api.configuration(),
                    self_name=f"spegel-{i}",
                ),
                bootstrap_interval=0.5,
            )
            for i, ip in enumerate(ips)
        ]
        try:
            for router in routers:
                await router.start()
            await eventually(lambda: all(r.ready() for r in routers), within=20.0)
            await routers[0].advertise(["docker.io/library/nginx:1.25"])
            found = [p async for p in routers[1].lookup("docker.io/library/nginx:1.25")]
            assert [(p.peer_id, p.host) for p in found] == [(routers[0].peer_id, ips[0])]
        finally:
            for router in routers:
                await router.close()


def _free_port_on(ips: tuple[str, ...]) -> int:
    """A TCP port free on every address (tried from the kernel's pick on the first)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((ips[0], 0))
            port = int(first.getsockname()[1])
            try:
                for ip in ips[1:]:
                    with socket.socket() as other:
                        other.bind((ip, port))
            except OSError:
                continue
            return port
    pytest.fail("no common free port")

"""The rollout lab: an upstream registry and N nodes, each a network namespace of its own behind a
shaped veth, each node with its own containerd and (unless the way is "none") its own spegel-py.

Why namespaces and not 127.0.0.x: a node's link must be a link. Every namespace hangs off one
bridge (tests/harness/netns.py) and both ends of its veth are capped with htb
(bench/lib/shaping.py ``cap_device``), so a node can receive and send at most ``node_rate``
each way, and the upstream can send at most ``upstream_rate`` in all: the registry's egress is
the shared bottleneck a rollout fights over, as a NAT gateway or a rate-limited registry would
be. Every node listens on the same ports (Spegel's DaemonSet layout). The upstream and the
namespaces live for the whole run; nodes (their processes and content) are made fresh for every
measured pull so no way inherits another's cache.

Byte counts come from two places: the upstream's access log (bytes written per response, by
client address: "served by upstream") and the host ends of the veths (everything a namespace
sent, headers included: "sent by each node").
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    ContainerdNode,
    NetnsNetwork,
    ProcessGroup,
    SpegelRegistry,
    UpstreamRegistry,
    cleanup_mounts,
)
from harness.cluster import configure_hosts, parallel, parse_metrics
from harness.netns import Netns
from support.poll import wait_until

from bench.lib.shaping import cap_device

REGISTRY_PORT = 5000  # the harness's port inside a namespace (tests/harness/spegel.py)
ROUTER_PORT = 5001
UPSTREAM_OCTET = 1


@dataclass(frozen=True)
class Shape:
    """Link rates in tc syntax (``500mbit``)."""

    upstream_rate: str
    node_rate: str


def tx_bytes(dev: str) -> int:
    """Bytes ``dev`` (a host-side veth) received, i.e. what its namespace sent.

    Read from /proc/net/dev, which shows the reader's namespace (/sys shows the mounter's).
    """
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == dev:
            return int(counters.split()[0])
    raise LookupError(f"no interface {dev}")


@dataclass
class Node:
    """One node of one measured pull: its namespace, containerd and maybe spegel-py."""

    index: int
    netns: Netns
    containerd: ContainerdNode
    spegel: SpegelRegistry | None = None
    killed: bool = False

    @property
    def name(self) -> str:
        return self.containerd.name

    def metrics(self) -> dict[str, float]:
        """spegel-py's /metrics, read from inside the namespace ({} without spegel-py)."""
        if self.spegel is None or self.killed:
            return {}
        out = self.netns.run(["curl", "-s", "--max-time", "5", self.spegel.metrics_url], timeout=15)
        return parse_metrics(out.stdout) if out.returncode == 0 else {}


@dataclass
class Lab:
    """The run's network, upstream and up to ``max_nodes`` node namespaces. Call :meth:`start`."""

    workdir: Path
    processes: ProcessGroup
    shape: Shape
    max_nodes: int
    subnet: str = "10.233.0"
    network: NetnsNetwork = field(init=False)
    upstream: UpstreamRegistry = field(init=False)
    namespaces: list[Netns] = field(default_factory=list)

    def start(self) -> None:
        self.network = NetnsNetwork(subnet=self.subnet)
        up_ns = self.network.add(UPSTREAM_OCTET)
        self.upstream = UpstreamRegistry(self.workdir / "upstream", self.processes, netns=up_ns)
        self.namespaces = [self.network.add(UPSTREAM_OCTET + i) for i in range(1, self.max_nodes + 1)]
        # the upstream's cable: capped where its bytes leave (requests to it are tiny)
        cap_device("eth0", self.shape.upstream_rate, netns=up_ns.name)
        cap_device(up_ns.host_veth, self.shape.upstream_rate)
        for ns in self.namespaces:
            cap_device("eth0", self.shape.node_rate, netns=ns.name)  # what the node sends
            cap_device(ns.host_veth, self.shape.node_rate)  # what the node receives
        self.upstream.start()

    @property
    def upstream_dev(self) -> str:
        return self.upstream.netns.host_veth if self.upstream.netns else ""

    def stop(self) -> None:
        self.processes.stop_all()
        cleanup_mounts(self.workdir)
        self.network.destroy()

    # -- nodes of one measured pull ----------------------------------------------------------
    def nodes(
        self, run_dir: Path, size: int, *, spegel_args: Sequence[str] | None, ready_timeout: float = 90.0
    ) -> list[Node]:
        """Fresh containerd (and spegel-py unless ``spegel_args`` is None) on the first ``size``
        namespaces, certs.d written, the DHT connected. The caller tears them down with
        :meth:`drop`."""
        nodes = [
            Node(i, ns, ContainerdNode(i, run_dir / f"n{i}", self.processes, netns=ns))
            for i, ns in enumerate(self.namespaces[:size], start=1)
        ]
        try:
            parallel(lambda n: n.containerd.start(timeout=60), nodes)
            if spegel_args is None:
                for n in nodes:  # no mirror: certs.d names the upstream (plain HTTP) as its host;
                    # a bare ``server`` line is not enough, containerd 1.6 then tries HTTPS
                    n.containerd.write_hosts_toml(self.upstream.addr, self.upstream.url, [self.upstream.url])
                return nodes
            bootstrap = ["--bootstrap-kind", "static", "--static-bootstrap-peers",
                         f"/ip4/{nodes[0].netns.ip}/tcp/{ROUTER_PORT}"]  # fmt: skip
            for n in nodes:
                n.spegel = SpegelRegistry(
                    run_dir / "spegel",
                    self.processes,
                    node=n.containerd,
                    log_level="INFO",
                    extra_args=[*bootstrap, *spegel_args],
                )
            parallel(lambda n: configure_hosts(n.containerd, _spegel(n).url, self.upstream.url), nodes)
            # the bootstrap peer's router listening first: a bootstrap that finds nobody is
            # retried only after the router's bootstrap interval (its /readyz needs a peer)
            first = nodes[0]
            _spegel(first).start(wait=False)
            wait_until(
                lambda: _listening(first, ROUTER_PORT),
                within=ready_timeout,
                what=f"{first.name}'s router on port {ROUTER_PORT}",
            )
            for n in nodes[1:]:
                _spegel(n).start(wait=False)
            parallel(lambda n: _spegel(n).wait_ready(timeout=ready_timeout), nodes)
            self._wait_connected(nodes, ready_timeout)
        except BaseException:
            self.drop(nodes)
            raise
        return nodes

    def _wait_connected(self, nodes: list[Node], timeout: float) -> None:
        """Every node has every other in its routing table (small N: the DHT knows everyone)."""
        want = len(nodes) - 1

        def connected() -> bool:
            return all(n.metrics().get("spegel_router_peers", -1) >= want for n in nodes)

        wait_until(connected, within=timeout, interval=0.5, what=f"every node to see {want} peers")

    def kill(self, node: Node) -> None:
        """SIGKILL the node's spegel-py and containerd, as a node that loses power."""
        node.killed = True
        names = [node.containerd.process_name] + ([node.spegel.name] if node.spegel else [])
        for name in names:
            if name in self.processes:
                self.processes.get(name).popen.kill()

    def drop(self, nodes: list[Node]) -> None:
        """Stop the nodes' processes (by pid), unmount their snapshots, delete their content
        (the logs stay, for a failed rollout's post-mortem)."""
        for n in nodes:
            if n.spegel is not None:
                n.spegel.stop()
        parallel(lambda n: n.containerd.stop(), nodes)
        for n in nodes:
            cleanup_mounts(n.containerd.workdir)
            for content in (n.containerd.root, n.containerd.state):
                shutil.rmtree(content, ignore_errors=True)


def _listening(node: Node, port: int) -> bool:
    assert node.spegel is not None
    node.spegel.processes.check_running(node.spegel.name)
    return bool(node.netns.run(["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout.strip())


def _spegel(node: Node) -> SpegelRegistry:
    assert node.spegel is not None
    return node.spegel

"""A local P2P cluster: one upstream, N containerd nodes, N ``spegel-py registry`` with routing.

Node ``i`` lives on ``127.0.0.1i``: its containerd, and its spegel-py registry, router and
metrics endpoints on that address. Spegel assumes one registry port cluster-wide (a provider
record carries the peer's address, the port is the local one), so every node gets the same
registry port, router port and metrics port, picked free on every node's address. Nodes find
each other through the DHT, bootstrapped statically to node 1's router. Each node's ``certs.d``
is written by the real ``spegel-py configuration`` command, so pulls through ``--hosts-dir``
and through the CRI plugin (the daemon's own ``config_path``) take the production path.

Plain Python (no pytest), shared by the e2e tests and ``scripts/demo.py``. Every process goes
through the caller's :class:`ProcessGroup` and is stopped by pid.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from support.poll import wait_until

from .containerd import ContainerdNode, PullResult, cleanup_mounts
from .images import BuiltImage
from .net import free_port
from .procs import HarnessError, ProcessGroup, run_command
from .spegel import SpegelRegistry, spegel_binary
from .upstream import MANIFEST_TYPES, UpstreamRegistry

MIRRORED_HEADER = "X-Spegel-Mirrored"
N = TypeVar("N")  # a node of any kind, for parallel()


def common_free_port(ips: Sequence[str], *, attempts: int = 50) -> int:
    """A TCP port free on every address in ``ips`` right now (the kernel picks candidates)."""
    for _ in range(attempts):
        port = free_port(ips[0])
        if all(_bindable(ip, port) for ip in ips[1:]):
            return port
    raise HarnessError(f"no port free on all of {', '.join(ips)} after {attempts} tries")


def _bindable(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Probe:
    """One HTTP answer of a spegel-py registry, timed on the client side."""

    status: int
    seconds: float
    body: bytes = b""


def probe(
    url: str, *, method: str = "HEAD", headers: dict[str, str] | None = None, timeout: float = 10.0
) -> Probe:
    """``method url``: status (0 when nothing answers), wall time to the complete answer, body."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return Probe(int(response.status), time.monotonic() - start, body)
    except urllib.error.HTTPError as exc:
        return Probe(int(exc.code), time.monotonic() - start, exc.read())
    except (urllib.error.URLError, OSError):
        return Probe(0, time.monotonic() - start)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> ``{'name{label="v",...}': value}`` (labels in given order)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def process_io(pid: int) -> dict[str, int]:
    """``/proc/PID/io`` (rchar, wchar, ...): sendfile counts in wchar as it goes, unlike metrics
    that are only bumped when a response ends. Empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f if ": " in line)}
    except (FileNotFoundError, ProcessLookupError):
        return {}


@dataclass
class ClusterNode:
    """One node: containerd, its spegel-py registry, and its ``certs.d`` written by ``configuration``."""

    index: int
    containerd: ContainerdNode
    spegel: SpegelRegistry

    @property
    def name(self) -> str:
        return self.containerd.name

    @property
    def ip(self) -> str:
        return self.containerd.ip

    def pull(self, ref: str, *, all_platforms: bool = False, timeout: float = 300.0) -> PullResult:
        """``ctr images pull --hosts-dir certs.d``: hosts.toml as ``configuration`` wrote it."""
        return self.containerd.pull(
            ref, hosts_dir=self.containerd.certs_d, all_platforms=all_platforms, timeout=timeout
        )

    def has_image(self, image: BuiltImage) -> list[str]:
        """Digests of ``image`` (all platforms) missing from this node's content store."""
        return [d for d in image.blobs if not self.containerd.has_blob(d)]

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.spegel.metrics_url, timeout=5) as response:
            return parse_metrics(response.read().decode())

    def served_bytes(self) -> dict[str, float]:
        """Bytes served by source: ``local`` (own content store), ``peer`` (relayed from peers)."""
        try:
            metrics = self.metrics()
        except OSError:
            return {}
        prefix = 'spegel_served_bytes_total{source="'
        return {k[len(prefix) : -2]: v for k, v in metrics.items() if k.startswith(prefix)}

    def head(
        self, path: str, *, ns: str | None = None, mirrored: bool = False, method: str = "HEAD"
    ) -> Probe:
        """Ask this node's spegel-py for ``/v2/...`` as containerd would (``?ns=``), or as a peer."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        if mirrored:
            headers[MIRRORED_HEADER] = "true"
        url = self.spegel.url + path + (f"?ns={ns}" if ns else "")
        return probe(url, method=method, headers=headers)


@dataclass
class Cluster:
    """``size`` nodes wired to ``upstream`` through their own spegel-py. Call :meth:`start`."""

    workdir: Path
    processes: ProcessGroup
    upstream: UpstreamRegistry
    size: int = 3
    extra_args: Sequence[str] = ()
    log_level: str = "INFO"
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        ips = [f"127.0.0.{10 + i}" for i in range(1, self.size + 1)]
        self.registry_port = common_free_port(ips)
        self.router_port = common_free_port(ips)
        self.metrics_port = common_free_port(ips)
        bootstrap = f"/ip4/{ips[0]}/tcp/{self.router_port}"
        for i, ip in enumerate(ips, start=1):
            containerd = ContainerdNode(i, self.workdir / f"n{i}", self.processes, ip=ip)
            args = [
                "--bootstrap-kind",
                "static",
                "--static-bootstrap-peers",
                bootstrap,
                *self.extra_args,
            ]
            spegel = SpegelRegistry(
                self.workdir / "spegel",
                self.processes,
                node=containerd,
                port=self.registry_port,
                log_level=self.log_level,
                extra_args=args,
            )
            spegel.router_port, spegel.metrics_port = self.router_port, self.metrics_port
            self.nodes.append(ClusterNode(i, containerd, spegel))

    def node(self, index: int) -> ClusterNode:
        """Node ``index`` (1-based, as in ``node1``)."""
        return self.nodes[index - 1]

    def start(self, *, timeout: float = 60.0) -> None:
        """containerd everywhere, ``configuration`` everywhere, then every spegel-py until ready."""
        parallel(lambda n: n.containerd.start(), self.nodes)
        parallel(self.configure, self.nodes)  # ~2 s each, mostly the CLI's imports
        # node 1 first, its router listening before the others bootstrap to it: a bootstrap
        # attempt that finds nobody is retried only after the router's bootstrap interval
        first = self.nodes[0]
        first.spegel.start(wait=False)
        wait_until(
            lambda: self._accepts(first.ip, self.router_port),
            within=timeout,
            what=f"{first.name}'s router on {first.ip}:{self.router_port}",
            diagnose=self.tails,
        )
        for node in self.nodes[1:]:
            node.spegel.start(wait=False)
        parallel(lambda n: n.spegel.wait_ready(timeout=timeout), self.nodes)

    def _accepts(self, ip: str, port: int) -> bool:
        self.processes.check_running(self.nodes[0].spegel.name)
        with socket.create_connection((ip, port), timeout=1):
            return True

    def configure(self, node: ClusterNode) -> subprocess.CompletedProcess[str]:
        """Run the real ``spegel-py configuration`` for ``node`` (its certs.d -> its spegel-py)."""
        return configure_hosts(node.containerd, node.spegel.url, self.upstream.url)

    def stop_spegel(self, node: ClusterNode, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) one node's spegel-py by pid."""
        if kill and node.spegel.running():
            self.processes.get(node.spegel.name).popen.kill()
        node.spegel.stop()

    # -- what the cluster knows --------------------------------------------------------------
    def keys(self, image: BuiltImage) -> list[str]:
        """``/v2/`` paths of every manifest and blob of ``image`` (all platforms)."""
        repo = image.repository()
        out = [f"/v2/{repo}/manifests/{image.tag}"]
        for digest in image.blobs:
            out.append(f"/v2/{repo}/blobs/{digest}")
        return out

    def wait_findable(
        self, images: Iterable[BuiltImage], *, by: Sequence[ClusterNode], timeout: float = 60.0
    ) -> float:
        """Poll until every node in ``by`` gets 200 for every key of ``images`` from its own
        spegel-py (so through routing and the mirror); return the seconds it took."""
        paths = [p for image in images for p in self.keys(image)]
        pending = {(n.index, p) for n in by for p in paths}
        start = time.monotonic()

        def done() -> bool:
            for index, path in sorted(pending):
                if self.node(index).head(path, ns=self.upstream.addr).status == 200:
                    pending.discard((index, path))
            return not pending

        wait_until(
            done,
            within=timeout,
            what="every node to find the images through its spegel-py",
            interval=0.2,
            diagnose=lambda: f"still missing (node, path): {sorted(pending)[:6]}\n{self.tails()}",
        )
        return time.monotonic() - start

    def tails(self, lines: int = 20) -> str:
        """Log tails of the nodes' spegel-py processes (containerd's logs are rarely the story)."""
        return "\n".join(
            self.processes.get(n.spegel.name).tail(lines)
            for n in self.nodes
            if n.spegel.name in self.processes
        )


def configure_hosts(
    containerd: ContainerdNode, mirror_url: str, upstream_url: str
) -> subprocess.CompletedProcess[str]:
    """Run the real ``spegel-py configuration``: ``containerd``'s certs.d sends pulls of
    ``upstream_url`` to ``mirror_url`` first."""
    argv = [
        str(spegel_binary()),
        "configuration",
        "--containerd-registry-config-path",
        str(containerd.certs_d),
        "--mirror-targets",
        mirror_url,
        "--mirrored-registries",
        upstream_url,
        "--containerd-config",
        str(containerd.config_path),
    ]
    result = run_command(argv, timeout=60)
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def image_complete(node: ClusterNode, ref: str, image: BuiltImage) -> list[str]:
    """Problems with ``image`` on ``node`` ('' list when complete): name -> digest, every blob present."""
    problems = []
    got = node.containerd.images().get(ref)
    if got != image.digest:
        problems.append(f"{node.name}: {ref} -> {got}, expected {image.digest}")
    missing = node.has_image(image)
    if missing:
        problems.append(f"{node.name}: {len(missing)} blobs of {image.kind} missing: {missing[:3]}")
    return problems


def parallel(action: Callable[[N], object], nodes: Sequence[N]) -> None:
    """Run ``action`` on every node in threads; re-raise the first failure after all finished."""
    errors: list[BaseException] = []

    def run(node: N) -> None:
        try:
            action(node)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), name=f"cluster-{i}") for i, n in enumerate(nodes, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def started_cluster(
    processes: ProcessGroup, upstream: UpstreamRegistry, *, prefix: str = "p2p-", **options: object
) -> Iterator[Cluster]:
    """A started :class:`Cluster` (``options`` as its fields) in a fresh workdir; on the way out
    every process is stopped by pid, mounts are undone and the workdir is removed."""
    # short: containerd's ttrpc socket path must fit in sun_path (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    built = Cluster(workdir, processes, upstream, **options)  # type: ignore[arg-type]  # Cluster's fields
    try:
        built.start()
        yield built
    finally:
        processes.stop_all()
        cleanup_mounts(workdir)
        shutil.rmtree(workdir, ignore_errors=True)

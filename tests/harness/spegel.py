"""A ``spegel-py registry`` process for one node, started by pid and ready when /readyz says so.

The command line is the product's public one (Spegel's flags, ``spegel_py/settings.py``), so the
harness exercises exactly what a DaemonSet would run. Every listening address is given
explicitly on the node's own IP, so several nodes on one machine never fight over ports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from support.poll import wait_until

from .containerd import ContainerdNode
from .images import repo_root
from .net import free_port, http_status
from .netns import Netns
from .procs import ProcessGroup, log_tail


def spegel_binary() -> Path:
    """The ``spegel-py`` console script of the interpreter's venv (the repo's ``.venv`` otherwise)."""
    sibling = Path(sys.executable).parent / "spegel-py"
    return sibling if sibling.exists() else repo_root() / ".venv" / "bin" / "spegel-py"


class SpegelRegistry:
    """``spegel-py registry`` serving ``node``'s containerd content store (or an OCI layout dir)."""

    def __init__(
        self,
        workdir: Path,
        processes: ProcessGroup,
        *,
        node: ContainerdNode | None = None,
        ip: str | None = None,
        port: int | None = None,
        netns: Netns | None = None,
        content_store: str = "containerd",
        oci_layout_path: Path | None = None,
        log_level: str = "DEBUG",
        extra_args: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.node = node
        self.workdir = workdir
        self.processes = processes
        self.netns = netns if netns is not None else (node.netns if node else None)
        self.ip = ip or (self.netns.ip if self.netns else (node.ip if node else "127.0.0.1"))
        in_ns = self.netns is not None  # a fresh namespace has every port free
        self.port = port or (5000 if in_ns else free_port(self.ip))
        self.router_port = 5001 if in_ns else free_port(self.ip)
        self.metrics_port = 9090 if in_ns else free_port(self.ip)
        self.content_store = content_store
        self.oci_layout_path = oci_layout_path
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.name = name or f"spegel-{node.name if node else 'layout'}"
        self.log_path = workdir / f"{self.name}.log"

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.metrics_port}/metrics"

    def argv(self) -> list[str]:
        argv = [
            str(spegel_binary()),
            "--log-level",
            self.log_level,
            "registry",
            "--registry-addr",
            self.addr,
            "--router-addr",
            f"{self.ip}:{self.router_port}",
            "--metrics-addr",
            f"{self.ip}:{self.metrics_port}",
            "--data-dir",
            str(self.workdir / f"{self.name}-data"),
        ]
        if self.node is not None:
            argv += [
                "--containerd-sock",
                str(self.node.socket),
                "--containerd-namespace",
                self.node.namespace,
                "--containerd-content-path",
                str(self.node.content_path),
            ]
        if self.content_store != "containerd":
            argv += ["--content-store", self.content_store, "--oci-layout-path", str(self.oci_layout_path)]
        return argv + self.extra_args

    def start(self, *, timeout: float = 30.0, wait: bool = True) -> None:
        """Start the process; unless ``wait`` is false, return once /readyz answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.processes.start(
            self.name, self.argv(), log_path=self.log_path, netns=self.netns.name if self.netns else None
        )
        if wait:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        wait_until(
            self._ready,
            within=timeout,
            what=f"{self.name} /readyz on {self.addr}",
            diagnose=lambda: log_tail(self.log_path),
        )

    def _ready(self) -> bool:
        self.processes.check_running(self.name)
        return self.status("/readyz") == 200

    def status(self, path: str, *, method: str = "GET") -> int:
        """HTTP status of ``path`` on this registry (asked from its own namespace)."""
        return http_status(self.url + path, netns=self.netns.name if self.netns else None, method=method)

    def stop(self) -> int | None:
        return self.processes.stop(self.name)

    def running(self) -> bool:
        return self.name in self.processes and self.processes.get(self.name).running()

    @property
    def pid(self) -> int:
        return self.processes.get(self.name).pid

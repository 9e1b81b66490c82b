"""A containerd 1.6 "node": its own root, state, socket, certs.d and log, started by pid.

Each node is a full containerd daemon as on a Kubernetes node, configured as spegel-py needs
(docs/operations.md, containerd prerequisites): the CRI registry ``config_path`` points at the
node's own ``certs.d`` and ``discard_unpacked_layers = false`` keeps layer blobs in the content
store after unpacking. Snapshotters that cannot work here are disabled so the log stays readable.

Pulls use ``ctr images pull``, which fetches in the ctr process itself: run inside a node's
network namespace, that pull can reach only what the namespace can reach. The daemon socket is
a unix socket (a file), so it is usable across namespaces.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from support.poll import wait_until

from . import cri
from .net import free_port
from .netns import Netns
from .procs import HarnessError, ProcessGroup, log_tail, run_command

NAMESPACE = "k8s.io"

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
# snapshotters that cannot work on this machine; overlayfs and native remain
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{debug_socket}"
  level = "info"
[metrics]
  address = "{metrics_addr}"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      # keep layer blobs after unpacking: they are what a P2P mirror serves
      discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{certs_d}"
"""


@dataclass(frozen=True)
class PullResult:
    ref: str
    seconds: float
    output: str


class ContainerdNode:
    """One containerd daemon. ``ip`` is the node's address (a 127.0.0.x, or its netns address)."""

    def __init__(
        self,
        index: int,
        workdir: Path,
        processes: ProcessGroup,
        *,
        ip: str | None = None,
        netns: Netns | None = None,
    ) -> None:
        self.index = index
        self.name = f"node{index}"
        self.workdir = workdir
        self.processes = processes
        self.netns = netns
        self.ip = ip or (netns.ip if netns else f"127.0.0.{10 + index}")
        self.namespace = NAMESPACE
        self.root = workdir / "root"
        self.state = workdir / "state"
        self.socket = workdir / "containerd.sock"
        self.certs_d = workdir / "certs.d"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.content_path = self.root / "io.containerd.content.v1.content"
        if len(f"{self.socket}.ttrpc") >= 108:  # sun_path is 108 bytes; containerd would fail obscurely
            raise HarnessError(f"unix socket path too long: {self.socket} (use a shorter workdir)")
        # inside its own namespace any loopback port is free; on the host ask the kernel
        self.metrics_addr = "127.0.0.1:1338" if netns else f"{self.ip}:{free_port(self.ip)}"

    @property
    def process_name(self) -> str:
        return f"containerd-{self.name}"

    @property
    def netns_name(self) -> str | None:
        return self.netns.name if self.netns else None

    def write_config(self) -> None:
        for d in (self.root, self.state, self.certs_d):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG.format(
                root=self.root,
                state=self.state,
                socket=self.socket,
                debug_socket=self.workdir / "debug.sock",
                metrics_addr=self.metrics_addr,
                opt=self.workdir / "opt",
                certs_d=self.certs_d,
            )
        )

    def start(self, *, timeout: float = 30.0) -> None:
        self.write_config()
        self.processes.start(
            self.process_name,
            ["containerd", "--config", str(self.config_path)],
            log_path=self.log_path,
            netns=self.netns_name,
        )
        wait_until(
            self._answering,
            within=timeout,
            what=f"containerd {self.name} on {self.socket}",
            diagnose=lambda: log_tail(self.log_path),
        )

    def _answering(self) -> bool:
        self.processes.check_running(self.process_name)
        return self.ctr("version", timeout=10, check=False).returncode == 0

    def stop(self) -> None:
        self.processes.stop(self.process_name)

    def restart(self, *, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def running(self) -> bool:
        return self.process_name in self.processes and self.processes.get(self.process_name).running()

    @property
    def pid(self) -> int:
        return self.processes.get(self.process_name).pid

    # -- ctr ---------------------------------------------------------------------------------
    def ctr(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr -a SOCK -n k8s.io ARGS`` (inside the node's netns, if any)."""
        argv: Sequence[str] = [
            "ctr",
            "-a",
            str(self.socket),
            "-n",
            self.namespace,
            "--connect-timeout",
            "5s",
            *args,
        ]
        if self.netns is not None:
            argv = self.netns.argv(argv)
        try:
            result = run_command(argv, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{self.name}: {' '.join(argv)} did not finish within {timeout}s") from exc
        if check and result.returncode != 0:
            raise HarnessError(
                f"{self.name}: {' '.join(argv)} exited {result.returncode}\n"
                f"{result.stdout[-2000:]}{result.stderr[-4000:]}"
            )
        return result

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path | None = None,
        platform: str | None = None,
        all_platforms: bool = False,
        plain_http: bool | None = None,
        timeout: float = 300.0,
    ) -> PullResult:
        """``ctr images pull``; with ``hosts_dir`` its ``hosts.toml`` files pick the hosts tried.

        ``plain_http`` defaults to true without ``hosts_dir`` (the upstream speaks plain HTTP).
        Raises :class:`HarnessError` with ctr's output when the pull fails.
        """
        args = ["images", "pull"]
        if hosts_dir is not None:
            args += ["--hosts-dir", str(hosts_dir)]
        if plain_http if plain_http is not None else hosts_dir is None:
            args.append("--plain-http")
        if all_platforms:
            args.append("--all-platforms")
        elif platform:
            args += ["--platform", platform]
        start = time.monotonic()
        result = self.ctr(*args, ref, timeout=timeout)
        return PullResult(ref, time.monotonic() - start, result.stdout)

    def cri_pull(self, ref: str, *, timeout: float = 300.0) -> PullResult:
        """Pull through the CRI plugin, as the kubelet does: the daemon applies its own
        ``config_path`` (this node's ``certs.d``) and fetches for the node's platform only."""
        start = time.monotonic()
        image_id = cri.pull(self.socket, ref, timeout=timeout)
        return PullResult(ref, time.monotonic() - start, image_id)

    def cri_images(self) -> list[cri.CriImage]:
        return cri.images(self.socket)

    def images(self) -> dict[str, str]:
        """Image name -> target digest, as containerd lists them."""
        out = self.ctr("images", "ls").stdout.splitlines()
        rows = [line.split() for line in out[1:] if line.strip()]
        return {row[0]: row[2] for row in rows if len(row) >= 3}

    def remove_image(self, ref: str, *, only_this_name: bool = False) -> list[str]:
        """Delete an image and let GC free its content (synchronously); return the names removed.

        The CRI plugin adds a digest-named alias (``sha256:<config digest>``) for every image in
        ``k8s.io`` that pins the same content; unless ``only_this_name``, every name pointing at
        the same target is removed too, so the blobs are really gone afterwards.
        """
        images = self.images()
        target = images.get(ref)
        names = [ref] if only_this_name or target is None else [n for n, d in images.items() if d == target]
        self.ctr("images", "rm", "--sync", *names)
        return names

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.content_path / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_hosts_toml(
        self,
        registry_host: str,
        server_url: str,
        mirror_urls: Sequence[str],
        capabilities: Sequence[str] = ("pull", "resolve"),
        *,
        dial_timeout: str | None = None,
        certs_d: Path | None = None,
    ) -> Path:
        """Write ``<certs.d>/<registry_host>/hosts.toml``: try the mirrors in order, then ``server_url``.

        A stand-in for ``spegel-py configuration`` (issue 4) so tests can wire nodes by hand.
        """
        directory = (certs_d or self.certs_d) / registry_host
        directory.mkdir(parents=True, exist_ok=True)
        caps = ", ".join(f"'{c}'" for c in capabilities)
        lines = [f"server = '{server_url}'", ""]
        for url in mirror_urls:
            lines += [f"[host.'{url}']", f"  capabilities = [{caps}]"]
            if dial_timeout:
                lines.append(f"  dial_timeout = '{dial_timeout}'")
            lines.append("")
        path = directory / "hosts.toml"
        path.write_text("\n".join(lines))
        return path


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def cleanup_mounts(workdir: Path) -> None:
    """Unmount anything containerd left mounted under ``workdir`` (overlay snapshots), deepest first."""
    prefix = str(workdir.resolve()) + "/"
    mounts = _mounts_under(prefix)
    for mount in sorted(mounts, reverse=True):
        run_command(["umount", "-l", mount], timeout=30)
    if mounts:
        wait_until(lambda: not _mounts_under(prefix), within=10, what=f"mounts under {workdir} to go")

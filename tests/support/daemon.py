"""A real ``spegel-py registry`` process over an OCI layout, for the tests that need one.

Shared by tests/test_app.py and tests/test_metrics.py: an image layout to serve
(:func:`make_layout`), starting a node on its own loopback address (:func:`start_node`),
waiting for it to be ready, reading its metrics, and stopping it by its pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.poll import wait_until

SPEGEL = os.path.join(os.path.dirname(sys.executable), "spegel-py")
MiB = 1 << 20
REGISTRY = "127.0.0.1:5000"  # the registry layout images are served as (--oci-layout-registry)


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(root: Path, layer_size: int) -> dict[str, str]:
    """One image, ``<root>/test/app`` tagged ``v1``: a config, one layer of ``layer_size`` bytes."""
    layout = root / "test" / "app"
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = _blob(layout, json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode())
    layer = _blob(layout, b"\x1f\x8b" + os.urandom(layer_size - 2))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    manifest = _blob(layout, json.dumps(manifest_doc).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return {"manifest": str(manifest["digest"]), "layer": str(layer["digest"])}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    base: str
    metrics: str
    host: str
    port: int


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (an HTTP error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(daemon: Daemon, within: float = 20.0) -> None:
    """Until ``/readyz`` answers 200; fails at once (with its stderr) if the process exits."""

    def ready_or_exited() -> str:
        if daemon.proc.poll() is not None:
            return "exited"
        return "ready" if get(daemon.base + "/readyz", timeout=1)[0] == 200 else ""

    outcome = wait_until(ready_or_exited, within=within, what="spegel-py ready")
    assert outcome == "ready", daemon.proc.stderr.read() if daemon.proc.stderr else "exited"


def start_node(
    layouts: Path, data: Path, host: str, ports: tuple[int, int, int], *extra: str
) -> tuple[Daemon, str]:
    """``spegel-py registry`` on ``host`` serving ``layouts``; returns it and its router multiaddr.

    Peers are dialled on their router address, but fetched from on the registry port they all
    share (Spegel assumes one port cluster-wide): every node uses the same ports on its own IP.
    """
    port, mport, rport = ports
    argv = [SPEGEL, "registry", "--content-store", "oci-layout", "--oci-layout-path", str(layouts),
            "--oci-layout-registry", REGISTRY, "--registry-addr", f"{host}:{port}",
            "--metrics-addr", f"{host}:{mport}", "--router-addr", f"{host}:{rport}",
            "--data-dir", str(data), "--shutdown-timeout", "3s", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    daemon = Daemon(proc, f"http://{host}:{port}", f"http://{host}:{mport}", host, port)
    return daemon, f"/ip4/{host}/tcp/{rport}"


def stop(daemon: Daemon) -> int:
    """SIGTERM, then its exit status (killed, and the wait re-raised, if it hangs past 10 s)."""
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            return daemon.proc.wait(10)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(10)
            raise
        finally:
            if daemon.proc.stderr:
                daemon.proc.stderr.close()
    return daemon.proc.returncode if daemon.proc.returncode is not None else -1


def kill(daemon: Daemon) -> None:
    """Make sure the process is gone (for a ``finally``: a no-op after :func:`stop`)."""
    if daemon.proc.poll() is None:
        daemon.proc.kill()
    daemon.proc.wait(10)
    if daemon.proc.stderr:
        daemon.proc.stderr.close()


def metric(daemon: Daemon, line_prefix: str) -> float:
    """The sum of the node's ``/metrics`` samples whose line starts with ``line_prefix``."""
    _, body = get(daemon.metrics + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(line_prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total

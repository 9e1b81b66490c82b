"""The real ``spegel-py registry`` process over an OCI layout: serves, drains on SIGTERM, exits.

Every process started here is stopped by its pid in a ``finally``, also when an assertion fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process  # every test runs the spegel-py console script

SPEGEL = os.path.join(os.path.dirname(sys.executable), "spegel-py")
MiB = 1 << 20
REGISTRY = "127.0.0.1:5000"


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


def _free_port(host: str) -> int:
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


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(daemon: Daemon, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, daemon.proc.stderr.read() if daemon.proc.stderr else ""
        try:
            if _get(daemon.base + "/readyz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)  # polling a condition with a deadline
    raise AssertionError("spegel-py never became ready")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "layouts"
    return root, make_layout(root, 64 * MiB)


@pytest.fixture
def daemon(layout: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Daemon]:
    root, _ = layout
    host = "127.0.0.23"
    port, mport, rport = _free_port(host), _free_port(host), _free_port(host)
    argv = [SPEGEL, "registry", "--content-store", "oci-layout", "--oci-layout-path", str(root),
            "--oci-layout-registry", REGISTRY, "--registry-addr", f"{host}:{port}",
            "--metrics-addr", f"{host}:{mport}", "--router-addr", f"{host}:{rport}",
            "--data-dir", str(tmp_path / "data"), "--shutdown-timeout", "3s"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    d = Daemon(proc, f"http://{host}:{port}", f"http://{host}:{mport}", host, port)
    try:
        _wait_ready(d)
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_serves_content_and_metrics(daemon: Daemon, layout: tuple[Path, dict[str, str]]) -> None:
    _, digests = layout
    status, body = _get(f"{daemon.base}/v2/test/app/manifests/v1?ns=127.0.0.1%3A5000")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digests["manifest"].split(":")[1]
    status, body = _get(f"{daemon.base}/v2/test/app/blobs/{digests['layer']}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digests["layer"].split(":")[1]
    status, text = _get(daemon.metrics + "/metrics")
    assert status == 200
    assert b'http_requests_inflight{handler="blob"}' in text
    assert b"process_resident_memory_bytes" in text
    assert _get(daemon.base + "/livez")[0] == 200


def _start_download(daemon: Daemon, digest: str) -> tuple[socket.socket, int]:
    """A GET of the layer whose body is flowing (1 MiB read), left unread from then on."""
    sock = socket.create_connection((daemon.host, daemon.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET /v2/test/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    while got < MiB:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    return sock, got


def _drain(sock: socket.socket) -> int:
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


def test_sigterm_drains_in_flight_requests_and_exits_0(
    daemon: Daemon, layout: tuple[Path, dict[str, str]]
) -> None:
    _, digests = layout
    sock, first = _start_download(daemon, digests["layer"])
    try:
        daemon.proc.send_signal(signal.SIGTERM)
        # new connections are refused once draining begins
        deadline = time.monotonic() + 5
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                socket.create_connection((daemon.host, daemon.port), timeout=1).close()
                time.sleep(0.02)
            except OSError:
                refused = True
        assert refused
        assert daemon.proc.poll() is None  # still sending the in-flight body
        received = _drain(sock) + first
    finally:
        sock.close()
    assert received > 64 * MiB  # the whole body plus the headers arrived
    assert daemon.proc.wait(10) == 0


def test_sigterm_with_a_stalled_client_exits_within_the_drain_bound(
    daemon: Daemon, layout: tuple[Path, dict[str, str]]
) -> None:
    _, digests = layout
    sock, _ = _start_download(daemon, digests["layer"])
    try:
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        assert time.monotonic() - started < 3 + 3  # --shutdown-timeout 3s plus start-up slack
    finally:
        sock.close()


def test_second_signal_forces_exit(daemon: Daemon, layout: tuple[Path, dict[str, str]]) -> None:
    _, digests = layout
    sock, _ = _start_download(daemon, digests["layer"])
    try:
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until the drain has begun (listener closed)
            try:
                socket.create_connection((daemon.host, daemon.port), timeout=1).close()
                time.sleep(0.02)
            except OSError:
                break
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(10) == 130
        assert time.monotonic() - started < 2.0  # well before the 3 s drain bound
    finally:
        sock.close()


def test_address_in_use_is_a_clean_error(layout: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, _ = layout
    host = "127.0.0.24"
    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [SPEGEL, "registry", "--content-store", "oci-layout", "--oci-layout-path", str(root),
             "--registry-addr", f"{host}:{port}", "--metrics-addr", f"{host}:{_free_port(host)}",
             "--router-addr", f"{host}:{_free_port(host)}", "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    record = json.loads(out.stderr.strip().splitlines()[-1])
    assert record["level"] == "ERROR" and "cannot listen" in record["error"]


def test_configuration_cleanup_and_cleanup_wait_round_trip(tmp_path: Path) -> None:
    """The three Helm-facing subcommands, as the chart runs them, against a scratch certs.d."""
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    original = "server = 'https://registry-1.docker.io'\n"
    (certs / "docker.io" / "hosts.toml").write_text(original)
    out = subprocess.run(
        [SPEGEL, "configuration", "--log-level=INFO", f"--containerd-registry-config-path={certs}",
         "--mirrored-registries=https://docker.io", "--mirror-targets=http://127.0.0.1:30020",
         "--resolve-tags=false", "--prepend-existing=false", "--dial-timeout=300ms",
         f"--containerd-config={tmp_path / 'absent.toml'}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    written = (certs / "docker.io" / "hosts.toml").read_text()
    assert "http://127.0.0.1:30020" in written and "dial_timeout = '300ms'" in written
    assert "'resolve'" not in written
    assert any(json.loads(line).get("problem") == "config-not-found" for line in out.stderr.splitlines())

    host = "127.0.0.25"
    port = _free_port(host)
    cleanup = subprocess.Popen(
        [SPEGEL, "cleanup", f"--containerd-registry-config-path={certs}", f"--addr={host}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        waited = subprocess.run(
            [SPEGEL, "cleanup-wait", f"--probe-endpoint={host}:{port}", "--threshold=2", "--period=100ms"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        assert (certs / "docker.io" / "hosts.toml").read_text() == original  # restored before /healthz
        cleanup.send_signal(signal.SIGTERM)
        assert cleanup.wait(10) == 0
    finally:
        if cleanup.poll() is None:
            cleanup.kill()
        cleanup.wait(10)


def _node(
    layouts: Path, data: Path, host: str, ports: tuple[int, int, int], *extra: str
) -> tuple[Daemon, str]:
    # Peers are dialled on their router address, but fetched from on the registry port they all
    # share (Spegel assumes one port cluster-wide): every node uses the same ports on its own IP.
    port, mport, rport = ports
    argv = [SPEGEL, "registry", "--content-store", "oci-layout", "--oci-layout-path", str(layouts),
            "--oci-layout-registry", REGISTRY, "--registry-addr", f"{host}:{port}",
            "--metrics-addr", f"{host}:{mport}", "--router-addr", f"{host}:{rport}",
            "--data-dir", str(data), "--shutdown-timeout", "3s", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    daemon = Daemon(proc, f"http://{host}:{port}", f"http://{host}:{mport}", host, port)
    return daemon, f"/ip4/{host}/tcp/{rport}"


def _stop(daemon: Daemon) -> int:
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


def _metric(daemon: Daemon, line_prefix: str) -> float:
    _, body = _get(daemon.metrics + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(line_prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _serving_record(daemon: Daemon, deadline_s: float = 10.0) -> dict[str, Any]:
    """The node's ``serving`` log record (a JSON line on stderr): its addresses and peer id."""
    assert daemon.proc.stderr is not None
    fd = daemon.proc.stderr.fileno()
    pending = b""
    deadline = time.monotonic() + deadline_s
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                record: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("msg") == "serving":
                return record
    raise AssertionError("no 'serving' log line")


def _debug_table(page: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of a ``/debug/web`` table."""
    table = page.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in row] for row in rows if row]


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_debug_web_shows_the_node_or_is_404_when_disabled(tmp_path: Path, enabled: bool) -> None:
    make_layout(tmp_path / "layouts", 1 << 20)
    host = "127.0.0.38"
    ports = (_free_port(host), _free_port(host), _free_port(host))
    extra = () if enabled else ("--debug-web-enabled=false",)
    node, _ = _node(tmp_path / "layouts", tmp_path / "data", host, ports, *extra)
    try:
        _wait_ready(node)
        peer_id = _serving_record(node)["peer_id"]
        missing = f"sha256:{'0' * 64}"
        assert _get(f"{node.base}/v2/x/blobs/{missing}?ns=example.com")[0] == 404  # a mirrored miss
        status, body = _get(node.base + "/debug/web")
        if not enabled:
            assert status == 404
            assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"  # an unknown path
            assert _stop(node) == 0
            return
        assert status == 200
        deadline = time.monotonic() + 15
        while "127.0.0.1:5000/test/app:v1" not in body.decode() and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline: the advertiser's first walk
            status, body = _get(node.base + "/debug/web")
        page = body.decode()
        assert f'<code id="peer-id">{peer_id}</code>' in page
        assert _debug_table(page, "peers") == [["none"]]  # alone: no bootstrap configured
        assert [row[0] for row in _debug_table(page, "images")] == ["127.0.0.1:5000/test/app:v1"]
        ((_, key, peer, result, size, _),) = _debug_table(page, "outcomes")
        assert (key, peer, result, size) == (missing, "-", "miss", "0")
        assert _stop(node) == 0
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)


@pytest.mark.integration
def test_two_nodes_mirror_a_blob_only_one_holds(tmp_path: Path) -> None:
    """B has no content; it finds A through the DHT (static bootstrap) and relays A's blob."""
    digests = make_layout(tmp_path / "a-layouts", 4 * MiB)
    (tmp_path / "b-layouts").mkdir()
    ports = (_free_port("127.0.0.31"), _free_port("127.0.0.31"), _free_port("127.0.0.31"))
    a, a_addr = _node(tmp_path / "a-layouts", tmp_path / "a-data", "127.0.0.31", ports)
    b: Daemon | None = None
    try:
        _wait_ready(a)  # alone: no bootstrap configured
        b, _ = _node(tmp_path / "b-layouts", tmp_path / "b-data", "127.0.0.32", ports,
                     "--bootstrap-kind", "static", "--static-bootstrap-peers", a_addr)  # fmt: skip
        _wait_ready(b)  # ready only once A is in its routing table
        url = f"{b.base}/v2/test/app/blobs/{digests['layer']}?ns=127.0.0.1%3A5000"
        deadline = time.monotonic() + 30
        status, body = 0, b""
        while time.monotonic() < deadline:  # until A's advertisement reached the DHT
            status, body = _get(url, timeout=10)
            if status == 200:
                break
            time.sleep(0.1)  # polling a condition with a deadline
        assert status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digests["layer"]
        assert _metric(b, 'spegel_mirror_requests_total{cache="hit"') >= 1
        assert _metric(b, "spegel_relayed_bytes_total") >= len(body)
        assert _metric(a, 'spegel_served_bytes_total{source="local"}') >= len(body)
        assert _metric(b, "spegel_resolve_duration_seconds_count") >= 1
        assert _metric(b, "spegel_router_peers") >= 1
        assert _metric(a, 'spegel_advertised_content_digests{registry="127.0.0.1:5000"}') == 3
        # B stores A's records: three digests and the tag (A stores none, B advertises nothing)
        deadline = time.monotonic() + 10
        while _metric(b, "spegel_router_provider_records ") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline
        assert _metric(b, "spegel_router_provider_records ") == 4
        assert _metric(a, "spegel_router_provider_records ") == 0
        # B's /debug/web: A in its routing table, and the relayed layer served by A
        a_id, b_id = _serving_record(a)["peer_id"], _serving_record(b)["peer_id"]
        page = _get(b.base + "/debug/web")[1].decode()
        assert f'<code id="peer-id">{b_id}</code>' in page
        assert _debug_table(page, "peers") == [[a_id]]
        hits = [row[1:5] for row in _debug_table(page, "outcomes") if row[3] == "hit"]
        assert hits == [[digests["layer"], a_id, "hit", f"{len(body):,}"]]
        assert _stop(b) == 0
        assert _stop(a) == 0
    finally:
        for node in (a, b):
            if node is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)


def test_readyz_is_503_while_no_peer_is_reachable(tmp_path: Path) -> None:
    """With a bootstrap configured, a node without peers is not ready (containerd skips it)."""
    (tmp_path / "layouts").mkdir()
    host = "127.0.0.35"
    ports = (_free_port(host), _free_port(host), _free_port(host))
    nobody = f"/ip4/127.0.0.36/tcp/{_free_port('127.0.0.36')}"  # nothing listens there
    node, _ = _node(tmp_path / "layouts", tmp_path / "data", host, ports,
                    "--bootstrap-kind", "static", "--static-bootstrap-peers", nobody)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline:  # until the registry answers at all
            try:
                status = _get(node.base + "/readyz", timeout=1)[0]
                break
            except OSError:
                assert node.proc.poll() is None
                time.sleep(0.05)  # polling a condition with a deadline
        assert status == 503
        assert _stop(node) == 0
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)

"""The real ``spegel-py registry`` process over an OCI layout: serves, drains on SIGTERM, exits;
and, in process, the daemon going down when a supervised task (the router's) fails.

Every process started here is stopped by its pid in a ``finally``, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.daemon import (
    SPEGEL,
    Daemon,
    MiB,
    free_port,
    get,
    kill,
    make_layout,
    metric,
    start_node,
    stop,
    wait_ready,
)
from support.poll import eventually, wait_until

from spegel_py import app
from spegel_py.routing.base import Peer
from spegel_py.settings import ConfigurationSettings, RegistrySettings
from spegel_py.supervise import EXIT_FAILURE, run

pytestmark = pytest.mark.process  # most tests run the spegel-py console script


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "layouts"
    return root, make_layout(root, 64 * MiB)


@contextlib.contextmanager
def running(layout: tuple[Path, dict[str, str]], tmp_path: Path, *extra: str) -> Iterator[Daemon]:
    """A ready ``spegel-py registry`` on 127.0.0.23 serving ``layout``, killed on the way out."""
    root, _ = layout
    host = "127.0.0.23"
    ports = (free_port(host), free_port(host), free_port(host))
    d, _ = start_node(root, tmp_path / "data", host, ports, *extra)
    try:
        wait_ready(d)
        yield d
    finally:
        kill(d)


@pytest.fixture
def daemon(layout: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Daemon]:
    with running(layout, tmp_path) as d:
        yield d


def test_serves_content_and_metrics(daemon: Daemon, layout: tuple[Path, dict[str, str]]) -> None:
    _, digests = layout
    status, body = get(f"{daemon.base}/v2/test/app/manifests/v1?ns=127.0.0.1%3A5000")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digests["manifest"].split(":")[1]
    status, body = get(f"{daemon.base}/v2/test/app/blobs/{digests['layer']}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digests["layer"].split(":")[1]
    status, text = get(daemon.metrics + "/metrics")
    assert status == 200
    assert b'http_requests_inflight{handler="blob"}' in text
    assert b"process_resident_memory_bytes" in text
    assert get(daemon.base + "/livez")[0] == 200


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


def _refuses_connections(daemon: Daemon) -> bool:
    """True once the registry's listener is closed (the drain has begun)."""
    try:
        socket.create_connection((daemon.host, daemon.port), timeout=1).close()
    except OSError:
        return True
    return False


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
        wait_until(lambda: _refuses_connections(daemon), within=5, what="listener closed")
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


def test_second_signal_forces_exit(layout: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, digests = layout
    # a drain bound far beyond any start-up or load delay: exiting before it proves the forced exit
    with running(layout, tmp_path, "--shutdown-timeout", "120s") as daemon:
        sock, _ = _start_download(daemon, digests["layer"])
        try:
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: _refuses_connections(daemon), within=30, what="drain begun (listener closed)")
            daemon.proc.send_signal(signal.SIGINT)
            assert daemon.proc.wait(60) == 130
            assert time.monotonic() - started < 60  # the drain alone would take 120 s
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
             "--registry-addr", f"{host}:{port}", "--metrics-addr", f"{host}:{free_port(host)}",
             "--router-addr", f"{host}:{free_port(host)}", "--data-dir", str(tmp_path / "data")],
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
    port = free_port(host)
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


def _body_if_ok(url: str) -> bytes:
    """The body of a 200 answer (else empty: not yet)."""
    status, body = get(url, timeout=10)
    return body if status == 200 else b""


def _debug_page_with(node: Daemon, text: str) -> str:
    """The ``/debug/web`` page once it shows ``text`` (else empty: not yet)."""
    page = get(node.metrics + "/debug/web/")[1].decode()
    return page if text in page else ""


def _debug_table(page: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of a ``/debug/web`` table."""
    table = page.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in row] for row in rows if row]


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_debug_web_shows_the_node_or_is_404_when_disabled(tmp_path: Path, enabled: bool) -> None:
    make_layout(tmp_path / "layouts", 1 << 20)
    host = "127.0.0.38"
    ports = (free_port(host), free_port(host), free_port(host))
    extra = () if enabled else ("--debug-web-enabled=false",)
    node, _ = start_node(tmp_path / "layouts", tmp_path / "data", host, ports, *extra)
    try:
        wait_ready(node)
        peer_id = _serving_record(node)["peer_id"]
        missing = f"sha256:{'0' * 64}"
        assert get(f"{node.base}/v2/x/blobs/{missing}?ns=example.com")[0] == 404  # a mirrored miss
        # on the metrics port, as in Spegel; never on the registry port, which every client reaches
        status, body = get(node.base + "/debug/web")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"  # unknown path
        status, body = get(node.metrics + "/debug/web/metadata")
        if not enabled:
            assert status == 404 and get(node.metrics + "/debug/web/")[0] == 404
            assert stop(node) == 0
            return
        assert status == 200 and json.loads(body) == {"libp2p": {"id": peer_id}}
        # the advertiser's first walk is asynchronous
        page = wait_until(lambda: _debug_page_with(node, "127.0.0.1:5000/test/app:v1"), within=15,
                          what="the layout's image on /debug/web")  # fmt: skip
        assert f'<code id="peer-id">{peer_id}</code>' in page
        assert _debug_table(page, "peers") == [["none"]]  # alone: no bootstrap configured
        assert [row[0] for row in _debug_table(page, "images")] == ["127.0.0.1:5000/test/app:v1"]
        ((_, key, peer, result, size, _),) = _debug_table(page, "outcomes")
        assert (key, peer, result, size) == (missing, "-", "miss", "0")
        assert stop(node) == 0
    finally:
        kill(node)


@pytest.mark.integration
def test_two_nodes_mirror_a_blob_only_one_holds(tmp_path: Path) -> None:
    """B has no content; it finds A through the DHT (static bootstrap) and relays A's blob."""
    digests = make_layout(tmp_path / "a-layouts", 4 * MiB)
    (tmp_path / "b-layouts").mkdir()
    ports = (free_port("127.0.0.31"), free_port("127.0.0.31"), free_port("127.0.0.31"))
    a, a_addr = start_node(tmp_path / "a-layouts", tmp_path / "a-data", "127.0.0.31", ports)
    b: Daemon | None = None
    try:
        wait_ready(a)  # alone: no bootstrap configured
        b, _ = start_node(tmp_path / "b-layouts", tmp_path / "b-data", "127.0.0.32", ports,
                          "--bootstrap-kind", "static", "--static-bootstrap-peers", a_addr)  # fmt: skip
        wait_ready(b)  # ready only once A is in its routing table
        url = f"{b.base}/v2/test/app/blobs/{digests['layer']}?ns=127.0.0.1%3A5000"
        # until A's advertisement reached the DHT
        body = wait_until(lambda: _body_if_ok(url), within=30, what="B relays A's layer")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digests["layer"]
        assert metric(b, 'spegel_mirror_requests_total{cache="hit"') >= 1
        assert metric(b, "spegel_relayed_bytes_total") >= len(body)
        assert metric(b, 'spegel_served_bytes_total{source="peer"}') >= len(body)  # the same bytes
        assert metric(a, 'spegel_served_bytes_total{source="local"}') >= len(body)
        assert metric(b, "spegel_resolve_duration_seconds_count") >= 1
        assert metric(b, "spegel_router_peers") >= 1
        assert metric(a, 'spegel_advertised_content_digests{registry="127.0.0.1:5000"}') == 3
        # B stores A's records: three digests and the tag (A stores none, B advertises nothing)
        wait_until(lambda: metric(b, "spegel_router_provider_records ") >= 4, within=10,
                   what="B stores A's four records")  # fmt: skip
        assert metric(b, "spegel_router_provider_records ") == 4
        assert metric(a, "spegel_router_provider_records ") == 0
        # B's /debug/web: A in its routing table, and the relayed layer served by A
        a_id, b_id = _serving_record(a)["peer_id"], _serving_record(b)["peer_id"]
        page = get(b.metrics + "/debug/web/")[1].decode()
        assert f'<code id="peer-id">{b_id}</code>' in page
        assert _debug_table(page, "peers") == [[a_id]]
        hits = [row[1:5] for row in _debug_table(page, "outcomes") if row[3] == "hit"]
        assert hits == [[digests["layer"], a_id, "hit", f"{len(body):,}"]]
        assert stop(b) == 0
        assert stop(a) == 0
    finally:
        for node in (a, b):
            if node is not None:
                kill(node)


def test_readyz_is_503_while_no_peer_is_reachable(tmp_path: Path) -> None:
    """With a bootstrap configured, a node without peers is not ready (containerd skips it)."""
    (tmp_path / "layouts").mkdir()
    host = "127.0.0.35"
    ports = (free_port(host), free_port(host), free_port(host))
    nobody = f"/ip4/127.0.0.36/tcp/{free_port('127.0.0.36')}"  # nothing listens there
    node, _ = start_node(tmp_path / "layouts", tmp_path / "data", host, ports,
                         "--bootstrap-kind", "static", "--static-bootstrap-peers", nobody)  # fmt: skip
    try:
        # until the registry answers at all (wait_until retries while the connection is refused)
        status = wait_until(lambda: get(node.base + "/readyz", timeout=1)[0], within=20, what="an answer")
        assert status == 503
        assert node.proc.poll() is None
        assert stop(node) == 0
    finally:
        kill(node)


# -- supervision, in process -------------------------------------------------------------------
class FailingRouter:
    """A router (``app.NodeRouter``) that is ready until told to fail, and then does not say so:
    ``ready()`` stays True, so a 503 from ``/readyz`` is the app's doing, not the router's."""

    peer_id = "12D3KooWFailingRouter"

    def __init__(self) -> None:
        self.fail = asyncio.Event()
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    def ready(self) -> bool:
        return True

    async def advertise(self, keys: Iterable[str]) -> None:
        pass

    async def withdraw(self, keys: Iterable[str]) -> None:
        pass

    async def lookup(self, key: str, *, limit: int = 3) -> AsyncIterator[Peer]:
        nobody: tuple[Peer, ...] = ()
        for peer in nobody:
            yield peer

    async def wait_failed(self) -> BaseException:
        await self.fail.wait()
        return RuntimeError("libp2p main task died")

    def listen_multiaddrs(self) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/1/p2p/{self.peer_id}"]

    def peer_count(self) -> int:
        return 0

    def peers(self) -> list[str]:
        return []

    def provider_records(self) -> int:
        return 0

    def provider_refusals(self) -> dict[str, int]:
        return {}

    def stream_refusals(self) -> dict[str, int]:
        return {}


async def _readyz(session: aiohttp.ClientSession, base: str) -> int:
    """``/readyz``'s status; 0 while nothing listens yet."""
    try:
        async with session.get(base + "/readyz") as response:
            await response.read()
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def _hold_download(host: str, port: int, path: str) -> asyncio.StreamWriter:
    """A GET whose body is left unread once its head arrived: the request stays in flight (so the
    daemon's drain waits) until the returned writer is closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    return writer


def test_a_failed_router_makes_the_node_not_ready_and_exits_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The router's background work dies: ``/readyz`` answers 503 at once, in-flight requests
    still drain, and the daemon exits 1 with one error line naming the task."""
    digests = make_layout(tmp_path / "layouts", 32 * MiB)  # more than the socket buffers hold
    host = "127.0.0.39"
    settings = RegistrySettings(
        registry_addr=f"{host}:{free_port(host)}",
        metrics_addr=f"{host}:{free_port(host)}",
        router_addr=f"{host}:{free_port(host)}",
        content_store="oci-layout",
        oci_layout_path=str(tmp_path / "layouts"),
        data_dir=str(tmp_path / "data"),
        shutdown_timeout=30.0,  # the held download ends the drain, not this bound
    )
    router = FailingRouter()

    async def build_router(
        settings: RegistrySettings, *, on_reprovide: Callable[[int, float], None] | None = None
    ) -> FailingRouter:
        return router  # injected through serve()'s builder parameter, no global patched

    base = f"http://{settings.registry_addr}"
    statuses: list[int] = []

    async def body(stop: asyncio.Event) -> None:
        serving = asyncio.create_task(app.serve(settings, stop, router_builder=build_router))
        # one connection, kept alive: it can still ask /readyz after the listener has closed
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses.append(await eventually(lambda: _readyz(session, base), what="registry up"))
            held = await _hold_download(host, int(settings.registry_addr.rsplit(":", 1)[1]),
                                        f"/v2/test/app/blobs/{digests['layer']}?ns=localhost")  # fmt: skip
            try:
                router.fail.set()
                await eventually(stop.is_set, what="the supervisor stops the daemon")
                statuses.append(await _readyz(session, base))
                assert not serving.done()  # still draining the held download
            finally:
                held.close()
        await serving

    with caplog.at_level(logging.INFO):
        assert run(body) == EXIT_FAILURE
    assert statuses == [200, 503]
    assert router.closed
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.getMessage(), getattr(r, "task", None)) for r in errors] == [("stopped on error", "router")]
    assert errors[0].error == (  # type: ignore[attr-defined]  # an extra= field of the record
        "task router failed: router stopped: RuntimeError('libp2p main task died')"
    )
    shutting_down = [r for r in caplog.records if r.getMessage() == "shutting down"]
    assert [getattr(r, "failed_task", None) for r in shutting_down] == ["router"]


@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        (b"spegel", b"s3cret", "Basic c3BlZ2VsOnMzY3JldA=="),
        (b"spegel\n", b"s3cret", "Basic c3BlZ2VsCjpzM2NyZXQ="),  # taken as it is, as Spegel does
        (b"", b"", None),  # empty files: no auth, as in Spegel
        (None, None, None),  # no secret mounted
    ],
)
def test_spegels_basic_auth_secret_reaches_hosts_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, username: bytes | None, password: bytes | None,
    expected: str | None,
) -> None:  # fmt: skip
    """The credentials Spegel v0.7 reads from /etc/secrets/basic-auth become the Authorization
    header: checked by the registry (tests/serving), sent to peers (tests/relay) and written into
    hosts.toml for containerd by ``configuration`` (here)."""
    secret = tmp_path / "basic-auth"
    secret.mkdir()
    for name, value in (("username", username), ("password", password)):
        if value is not None:
            (secret / name).write_bytes(value)
    monkeypatch.setattr(app, "BASIC_AUTH_DIR", str(secret))
    assert app.basic_auth() == expected
    certs = tmp_path / "certs.d"
    configuration = ConfigurationSettings(
        containerd_registry_config_path=str(certs), mirror_targets=("http://127.0.0.1:30020",),
        containerd_config=str(tmp_path / "absent.toml"),
    )  # fmt: skip
    assert app.run_configuration(configuration) == 0
    hosts = (certs / "_default" / "hosts.toml").read_text()
    assert (expected is not None and f"Authorization = '{expected}'" in hosts) or "Authorization" not in hosts

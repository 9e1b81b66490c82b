"""containerd 1.6 really uses the hosts.toml that `configuration` writes, and stops after `cleanup`.

A real containerd node pulls an image from a real docker-registry with ``ctr images pull
--hosts-dir``. A mirror on its own loopback address logs every request and answers 404: containerd
must ask it first (``HEAD .../manifests/<tag>?ns=<registry>``), then fall back to the upstream and
complete the pull. After cleanup the mirror must see nothing more.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import ContainerdNode, ImageSet, UpstreamRegistry

from spegel_py.hosts import check_containerd_config, cleanup_mirrors, configure_mirrors

pytestmark = pytest.mark.integration

MIRROR_ADDRESS = "127.0.0.42"
# sorts before ours: the order containerd follows must come from the file, not from the names
THEIR_MIRROR_ADDRESS = "127.0.0.41"
Seen = tuple[str, str, dict[str, list[str]]]


class LoggingMirror(ThreadingHTTPServer):
    """Answers every request with an OCI 404 and remembers (method, path, query), also in a
    ``journal`` shared between mirrors (name first) to see the order containerd tries hosts in."""

    daemon_threads = False  # server_close joins the request threads: nothing outlives the test

    def __init__(self, address: str, journal: list[tuple[str, Seen]] | None = None) -> None:
        self.address = address
        self.requests: list[Seen] = []
        self.journal = journal if journal is not None else []
        self.lock = threading.Lock()
        super().__init__((address, 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.server_address[1]}"

    def seen(self) -> list[Seen]:
        with self.lock:
            return list(self.requests)

    def record(self, entry: Seen) -> None:
        with self.lock:
            self.requests.append(entry)
            self.journal.append((self.address, entry))  # list.append is atomic across threads


class _Handler(BaseHTTPRequestHandler):
    server: LoggingMirror

    def _answer(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        self.server.record((self.command, parts.path, urllib.parse.parse_qs(parts.query)))
        body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not here"}]}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads .requests
        pass


@contextlib.contextmanager
def running(server: LoggingMirror) -> Iterator[LoggingMirror]:
    thread = threading.Thread(target=server.serve_forever, name=f"logging-mirror-{server.address}")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def journal() -> list[tuple[str, Seen]]:
    return []


@pytest.fixture
def mirror(journal: list[tuple[str, Seen]]) -> Iterator[LoggingMirror]:
    with running(LoggingMirror(MIRROR_ADDRESS, journal)) as server:
        yield server


@pytest.fixture
def their_mirror(journal: list[tuple[str, Seen]]) -> Iterator[LoggingMirror]:
    with running(LoggingMirror(THEIR_MIRROR_ADDRESS, journal)) as server:
        yield server


@pytest.mark.parametrize("wildcard", [False, True], ids=["registry-directory", "default-wildcard"])
def test_containerd_asks_the_mirror_first_then_falls_back(
    wildcard: bool, mirror: LoggingMirror, upstream: UpstreamRegistry,
    containerd_node: Callable[..., ContainerdNode], test_images: ImageSet,
) -> None:
    node = containerd_node(1)
    image = test_images.small
    certs = node.certs_d
    ref = upstream.ref(image)

    # the node's own containerd config reads this certs.d and keeps layers
    assert check_containerd_config(node.config_path, certs) == []

    assert configure_mirrors(certs, [] if wildcard else [upstream.url], [mirror.url]) == []
    mark = upstream.mark()
    # with only the wildcard, nothing says the upstream speaks plain HTTP: ctr must be told
    node.pull(ref, hosts_dir=certs, plain_http=wildcard)

    assert ref in node.images()
    seen = mirror.seen()
    assert seen, "containerd never asked the mirror"
    method, path, _ = seen[0]
    assert (method, path) == ("HEAD", f"/v2/{image.repository()}/manifests/{image.tag}")
    assert all(q.get("ns") == [upstream.addr] for _, _, q in seen)
    assert {m for m, _, _ in seen} <= {"HEAD", "GET"}
    # every request went on to the upstream after the mirror's 404
    upstream_paths = {r.path for r in upstream.requests(mark)}
    assert f"/v2/{image.repository()}/manifests/{image.tag}" in upstream_paths
    assert any(p.startswith(f"/v2/{image.repository()}/blobs/") for p in upstream_paths)

    # after cleanup containerd no longer knows the mirror
    cleanup_mirrors(certs)
    assert list(certs.iterdir()) == []
    node.remove_image(ref)
    before = len(mirror.seen())
    node.pull(ref, hosts_dir=certs, plain_http=True)
    assert len(mirror.seen()) == before


def test_prepended_configuration_is_tried_after_ours(
    mirror: LoggingMirror, their_mirror: LoggingMirror, journal: list[tuple[str, Seen]],
    upstream: UpstreamRegistry, containerd_node: Callable[..., ContainerdNode], test_images: ImageSet,
) -> None:
    """--prepend-existing: containerd tries our mirror, then the operator's, then the upstream."""
    node = containerd_node(1)
    image = test_images.small
    operator_dir = node.certs_d / upstream.addr
    operator_dir.mkdir(parents=True)
    (operator_dir / "hosts.toml").write_text(
        f'server = "{upstream.url}"\n\n[host."{their_mirror.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    configure_mirrors(node.certs_d, [upstream.url], [mirror.url], prepend_existing=True)
    node.pull(upstream.ref(image), hosts_dir=node.certs_d)

    tag_path = f"/v2/{image.repository()}/manifests/{image.tag}"
    heads = [address for address, (method, path, _) in journal if (method, path) == ("HEAD", tag_path)]
    assert heads[:2] == [MIRROR_ADDRESS, THEIR_MIRROR_ADDRESS]
    cleanup_mirrors(node.certs_d)
    assert (operator_dir / "hosts.toml").read_text().startswith(f'server = "{upstream.url}"')

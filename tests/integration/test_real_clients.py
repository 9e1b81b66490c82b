"""Real clients pull from spegel-py serving a real containerd content store (issue 2, point 6).

Node 1 pulls the test images from the upstream registry; node 1's ``spegel-py registry`` serves
node 1's containerd content store. Then the upstream is stopped and node 2 (a second containerd)
pulls every image through spegel-py with ``ctr images pull --hosts-dir``; skopeo copies through
a ``registries.conf`` mirror. One test puts node 2 in its own network namespace, where the only
thing it can reach is node 1's spegel-py through a veth. Upstream requests are counted from the
upstream's own access log, so "0 upstream requests" is a fact about the upstream.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import (
    BuiltImage,
    ContainerdNode,
    ImageSet,
    NetnsNetwork,
    ProcessGroup,
    SpegelRegistry,
    UpstreamRegistry,
    cleanup_mounts,
    http_status,
)
from harness.images import MT_INDEX, MT_MANIFEST, verify_layout
from harness.require import require, require_cluster, require_spegel

pytestmark = pytest.mark.integration

KINDS = ("small", "multi", "big")
MANIFEST_ACCEPT = ", ".join(
    (
        MT_INDEX,
        MT_MANIFEST,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


@dataclass
class Served:
    """Node 1 holding every test image, and its spegel-py serving them."""

    node: ContainerdNode
    spegel: SpegelRegistry
    images: dict[str, BuiltImage]
    upstream: UpstreamRegistry

    def ref(self, kind: str) -> str:
        return self.upstream.ref(self.images[kind])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    _upstream_session: UpstreamRegistry,
    _big_pushed: BuiltImage,
    test_images: ImageSet,
) -> Iterator[Served]:
    require_cluster()
    require_spegel()
    upstream = _upstream_session
    if not upstream.running():
        upstream.start()
    workdir = tmp_path_factory.mktemp("served")
    group = ProcessGroup()
    node = ContainerdNode(1, workdir / "node1", group)
    try:
        node.start()
        images = {kind: test_images.get(kind) for kind in KINDS}
        for kind, image in images.items():
            node.pull(upstream.ref(image), all_platforms=kind == "multi")
        spegel = SpegelRegistry(workdir, group, node=node)
        spegel.start()
        yield Served(node, spegel, images, upstream)
    finally:
        group.stop_all()
        cleanup_mounts(workdir)


def test_node1_holds_every_blob(served: Served) -> None:
    """The premise: node 1's content store has all blobs of every image, all platforms."""
    for kind, image in served.images.items():
        assert served.node.images()[served.ref(kind)] == image.digest
        assert [d for d in image.blobs if not served.node.has_blob(d)] == [], kind


@pytest.mark.parametrize("kind", KINDS)
def test_containerd_pulls_through_spegel_with_upstream_stopped(
    served: Served, upstream: UpstreamRegistry, containerd_node: Callable[..., ContainerdNode], kind: str
) -> None:
    image = served.images[kind]
    ref = served.ref(kind)
    upstream.stop()
    mark = upstream.mark()
    node2 = containerd_node(2)
    node2.write_hosts_toml(upstream.addr, upstream.url, [served.spegel.url], ["pull", "resolve"])
    node2.pull(ref, hosts_dir=node2.certs_d, all_platforms=kind == "multi", timeout=600)
    assert node2.images()[ref] == image.digest
    assert [d for d in image.blobs if not node2.has_blob(d)] == []
    assert upstream.requests(mark) == []


@pytest.mark.parametrize("kind", ["small", "multi"])
def test_cri_pull_through_the_daemons_config_path_with_upstream_stopped(
    served: Served, upstream: UpstreamRegistry, containerd_node: Callable[..., ContainerdNode], kind: str
) -> None:
    """The kubelet's path: the daemon itself reads certs.d and pulls its platform from spegel-py."""
    image = served.images[kind]
    ref = served.ref(kind)
    upstream.stop()
    mark = upstream.mark()
    node2 = containerd_node(2)
    node2.write_hosts_toml(upstream.addr, upstream.url, [served.spegel.url], ["pull", "resolve"])
    node2.cri_pull(ref, timeout=300)
    assert node2.images()[ref] == image.digest
    platform_manifest = image.platforms["linux/amd64"]
    manifest = json.loads(image.blob_path(platform_manifest).read_bytes())
    wanted = [
        image.digest,
        platform_manifest,
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
    ]
    assert [d for d in wanted if not node2.has_blob(d)] == []
    assert upstream.requests(mark) == []


def test_upstream_running_receives_no_request_during_a_mirrored_pull(
    served: Served, upstream: UpstreamRegistry, containerd_node: Callable[..., ContainerdNode]
) -> None:
    """With the upstream up, containerd could fall back to it: it must not need to."""
    image = served.images["multi"]
    ref = served.ref("multi")
    node2 = containerd_node(2)
    node2.write_hosts_toml(upstream.addr, upstream.url, [served.spegel.url], ["pull", "resolve"])
    mark = upstream.mark()
    node2.pull(ref, hosts_dir=node2.certs_d, all_platforms=True)
    upstream.stop()  # its access log is complete once it has exited
    assert upstream.requests(mark) == []
    assert node2.images()[ref] == image.digest


def _registries_conf(path: Path, upstream: UpstreamRegistry, mirror: SpegelRegistry) -> Path:
    path.write_text(
        "unqualified-search-registries = []\n\n"
        "[[registry]]\n"
        f'location = "{upstream.addr}"\n'
        "insecure = true\n\n"
        "[[registry.mirror]]\n"
        f'location = "{mirror.addr}"\n'
        "insecure = true\n"
    )
    return path


def _skopeo_copy(conf: Path, source: str, dest: Path, tag: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "skopeo",
        "--registries-conf",
        str(conf),
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        f"docker://{source}",
        f"oci:{dest}:{tag}",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("kind", ["small", "multi"])
def test_skopeo_copies_by_digest_through_a_registries_conf_mirror(
    served: Served, upstream: UpstreamRegistry, tmp_path: Path, kind: str
) -> None:
    require("skopeo")
    image = served.images[kind]
    conf = _registries_conf(tmp_path / "registries.conf", upstream, served.spegel)
    upstream.stop()
    mark = upstream.mark()
    dest = tmp_path / "copy"
    result = _skopeo_copy(conf, f"{upstream.addr}/{image.repository()}@{image.digest}", dest, image.tag)
    assert result.returncode == 0, result.stderr
    index = json.loads((dest / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.digest]
    assert verify_layout(dataclasses.replace(image, layout=dest)) == []
    assert upstream.requests(mark) == []


def test_skopeo_tag_without_ns_is_refused_promptly_and_falls_back_to_upstream(
    served: Served, upstream: UpstreamRegistry, tmp_path: Path
) -> None:
    """containers/image sends no ``ns``, so the mirror cannot know which registry a tag is of:
    it refuses with MANIFEST_UNKNOWN (a 404), and skopeo goes on to the upstream."""
    require("skopeo")
    image = served.images["small"]
    conf = _registries_conf(tmp_path / "registries.conf", upstream, served.spegel)
    mark = upstream.mark()
    result = _skopeo_copy(conf, upstream.ref(image), tmp_path / "copy", image.tag)
    assert result.returncode == 0, result.stderr
    upstream.stop()
    manifest_gets = [r for r in upstream.requests(mark) if "/manifests/" in r.path]
    assert manifest_gets and manifest_gets[0].path == f"/v2/test/small/manifests/{image.tag}"


# -- the HTTP surface as seen by a raw client, over a real containerd store ------------------------
def _request(
    spegel: SpegelRegistry, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(spegel.ip, spegel.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_head_and_get_manifest_by_tag_and_digest(served: Served) -> None:
    image = served.images["small"]
    body = image.blob_path(image.digest).read_bytes()
    ns = served.upstream.addr
    for method, ref in [
        ("HEAD", image.tag),
        ("GET", image.tag),
        ("HEAD", image.digest),
        ("GET", image.digest),
    ]:
        status, headers, got = _request(
            served.spegel, method, f"/v2/test/small/manifests/{ref}?ns={ns}", {"Accept": MANIFEST_ACCEPT}
        )
        assert status == 200, (method, ref)
        assert headers["docker-content-digest"] == image.digest
        assert int(headers["content-length"]) == len(body)
        assert headers["content-type"] == MT_MANIFEST
        assert got == (b"" if method == "HEAD" else body)


def test_blob_range_returns_206_with_the_exact_bytes(served: Served) -> None:
    image = served.images["small"]
    digest = max(image.blobs, key=image.blobs.__getitem__)
    data = image.blob_path(digest).read_bytes()
    status, headers, got = _request(
        served.spegel, "GET", f"/v2/test/small/blobs/{digest}", {"Range": "bytes=100-4195"}
    )
    assert status == 206
    assert got == data[100:4196]
    assert headers["content-range"] == f"bytes 100-4195/{len(data)}"
    status, headers, got = _request(served.spegel, "GET", f"/v2/test/small/blobs/{digest}")
    assert status == 200 and got == data and headers["docker-content-digest"] == digest


@pytest.mark.parametrize(
    ("path", "codes"),
    [
        (f"/v2/test/small/blobs/sha256:{'0' * 64}", {404}),  # well-formed, absent
        ("/v2/test/small/blobs/sha256:../../../../etc/passwd", {400, 404}),
        ("/v2/test/small/blobs/sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd", {400, 404}),
        ("/v2/../../etc/passwd", {400, 404}),
        ("/v2/test/small/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", {400, 404}),
        ("/v2/Test/UPPER/manifests/v1", {400, 404}),
        (f"/v2/test/small/manifests/{'a' * 200}", {400, 404}),
    ],
)
def test_bad_input_is_an_oci_error_never_a_500(served: Served, path: str, codes: set[int]) -> None:
    status, _headers, body = _request(served.spegel, "GET", path)
    assert status in codes
    assert b"root:" not in body
    if status in (400, 404) and body:
        assert "errors" in json.loads(body)


# -- real isolation: node 2 in its own network namespace -------------------------------------------
def test_node_in_its_own_netns_pulls_through_a_veth_from_node1(
    served: Served,
    upstream: UpstreamRegistry,
    netns_network: NetnsNetwork,
    processes: ProcessGroup,
    containerd_node: Callable[..., ContainerdNode],
    spegel_registry: Callable[..., SpegelRegistry],
) -> None:
    ns1, ns2 = netns_network.add(1), netns_network.add(2)
    # a second spegel-py over node 1's content store, listening only inside node 1's namespace
    peer = spegel_registry(served.node, netns=ns1, name="spegel-node1-netns")
    assert peer.url == f"http://{ns1.ip}:5000"
    node2 = containerd_node(2, netns=ns2)
    # the upstream runs, but node 2's namespace cannot reach it: the mirror is all it has
    assert http_status(f"{upstream.url}/v2/") == 200
    assert http_status(f"{upstream.url}/v2/", netns=ns2.name) == 0
    node2.write_hosts_toml(upstream.addr, upstream.url, [peer.url], ["pull", "resolve"])
    mark = upstream.mark()
    for kind in ("small", "multi"):
        node2.pull(served.ref(kind), hosts_dir=node2.certs_d, all_platforms=kind == "multi")
        assert node2.images()[served.ref(kind)] == served.images[kind].digest
    upstream.stop()
    assert upstream.requests(mark) == []

"""The local-cluster harness itself works: images are deterministic, processes stop by pid and
nothing is left running, the upstream survives a restart, network namespaces come and go.

These come first so that a failure in a real-client test points at spegel-py, not the harness.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from harness import (
    ContainerdNode,
    HarnessError,
    ImageSet,
    NetnsNetwork,
    ProcessGroup,
    UpstreamRegistry,
    build_image,
    http_status,
    list_namespaces,
    pid_alive,
)
from harness.images import verify_layout
from harness.netns import link_exists
from harness.require import require
from support.poll import wait_until

pytestmark = pytest.mark.integration

MIB = 1 << 20


# -- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "platforms", "min_blobs"),
    [
        ("small", {"linux/amd64"}, 5),  # manifest, config, 3 layers
        ("multi", {"linux/amd64", "linux/arm64/v8"}, 9),  # index + 2 x (manifest, config, 2 layers)
    ],
)
def test_images_are_deterministic_and_complete(
    tmp_path: Path, kind: str, platforms: set[str], min_blobs: int
) -> None:
    first = build_image(kind, cache_dir=tmp_path / "a")
    second = build_image(kind, cache_dir=tmp_path / "b")
    assert first.digest == second.digest
    assert first.blobs == second.blobs
    assert set(first.platforms) == platforms
    assert len(first.blobs) == min_blobs
    assert verify_layout(first) == []
    index = json.loads((first.layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == first.digest
    # the cache answers the second call for the same directory without rebuilding
    again = build_image(kind, cache_dir=tmp_path / "a")
    assert again.layout == first.layout and again.digest == first.digest


def test_big_image_is_at_least_300_mib(test_images: ImageSet) -> None:
    big = test_images.big
    layers = [size for digest, size in big.blobs.items() if size > MIB]
    assert len(layers) == 3
    assert big.total_size >= 300 * MIB
    assert verify_layout(big) == []


def test_verify_layout_detects_a_corrupt_blob(tmp_path: Path) -> None:
    image = build_image("small", cache_dir=tmp_path)
    victim = max(image.blobs, key=image.blobs.__getitem__)
    path = image.blob_path(victim)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify_layout(image) == [victim]


# -- processes ---------------------------------------------------------------------------------
IGNORES_SIGTERM = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); signal.pause()"
)


@pytest.mark.parametrize(
    ("code", "stop_timeout"),
    [
        ("import signal; print('up', flush=True); signal.pause()", 10.0),  # stops on SIGTERM
        (IGNORES_SIGTERM, 0.5),  # needs the SIGKILL escalation
    ],
)
def test_process_group_stops_by_pid(tmp_path: Path, code: str, stop_timeout: float) -> None:
    group = ProcessGroup(stop_timeout=stop_timeout)
    log = tmp_path / "p.log"
    popen = group.start("p", [sys.executable, "-c", code], log_path=log)
    wait_until(lambda: "up" in log.read_text(), within=10, what="the child to start")
    assert pid_alive(popen.pid)
    group.stop_all()
    assert not pid_alive(popen.pid)
    assert popen.returncode is not None
    group.stop_all()  # idempotent
    assert group.pids == {}


def test_process_group_reports_an_early_exit(tmp_path: Path) -> None:
    group = ProcessGroup()
    log = tmp_path / "x.log"
    popen = group.start("x", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], log_path=log)
    popen.wait(10)
    with pytest.raises(HarnessError, match="status 3") as info:
        group.check_running("x")
    assert "boom" in str(info.value)
    group.stop_all()


# -- upstream and nodes ------------------------------------------------------------------------
def test_upstream_restart_keeps_data_and_counts_requests(
    upstream: UpstreamRegistry, test_images: ImageSet
) -> None:
    small = test_images.small
    assert upstream.has(small)
    upstream.stop()
    assert http_status(f"{upstream.url}/v2/") == 0
    upstream.start()
    mark = upstream.mark()
    assert upstream.has(small)
    upstream.stop()  # the access log is complete once the process has exited
    seen = upstream.requests(mark)
    assert [(r.method, r.path, r.status) for r in seen] == [
        ("HEAD", f"/v2/test/small/manifests/{small.tag}", 200)
    ]


def test_nodes_start_stop_restart_by_pid(
    containerd_node: Callable[..., ContainerdNode],
    processes: ProcessGroup,
    upstream: UpstreamRegistry,
    test_images: ImageSet,
) -> None:
    one, two = containerd_node(1), containerd_node(2)
    assert (one.ip, two.ip) == ("127.0.0.11", "127.0.0.12")
    assert one.socket != two.socket and one.content_path != two.content_path
    config = one.config_path.read_text()
    assert "discard_unpacked_layers = false" in config and f'config_path = "{one.certs_d}"' in config

    small = test_images.small
    one.pull(upstream.ref(small))
    assert one.images()[upstream.ref(small)] == small.digest
    assert all(one.has_blob(d) for d in small.blobs)  # layers kept after unpack
    assert not any(two.has_blob(d) for d in small.blobs)  # nodes share nothing

    first_pid = one.pid
    one.restart()
    assert one.pid != first_pid and not pid_alive(first_pid)
    assert one.images()[upstream.ref(small)] == small.digest  # state survives the restart

    pids = list(processes.pids.values())
    one.stop()
    two.stop()
    assert not any(pid_alive(p) for p in pids)
    with pytest.raises(HarnessError):
        one.ctr("version", timeout=5)


def test_remove_image_frees_its_content(
    containerd_node: Callable[..., ContainerdNode], upstream: UpstreamRegistry, test_images: ImageSet
) -> None:
    node, small = containerd_node(5), test_images.small
    ref = upstream.ref(small)
    node.pull(ref)
    # the CRI plugin adds its alias in reaction to the image event, so possibly after the pull
    wait_until(
        lambda: list(node.images().values()).count(small.digest) == 2, within=10, what="the CRI's alias"
    )
    removed = node.remove_image(ref)
    assert ref in removed and len(removed) == 2  # the name and the CRI's sha256:<config> alias
    assert not any(d == small.digest for d in node.images().values())
    assert not any(node.has_blob(d) for d in small.blobs)


def test_cri_pull_applies_the_daemons_config_path(
    containerd_node: Callable[..., ContainerdNode],
    upstream: UpstreamRegistry,
    test_images: ImageSet,
    processes: ProcessGroup,
    tmp_path: Path,
) -> None:
    """hosts.toml in the node's certs.d names an (empty) mirror; a CRI pull asks it first, gets
    404, and falls back to the upstream: the daemon applied its own config_path."""
    empty_mirror = UpstreamRegistry(tmp_path / "mirror", processes, host="127.0.0.31", name="empty-mirror")
    empty_mirror.start()
    node, small = containerd_node(6), test_images.small
    ref = upstream.ref(small)
    node.write_hosts_toml(upstream.addr, upstream.url, [empty_mirror.url])
    mark = upstream.mark()
    result = node.cri_pull(ref, timeout=120)
    assert result.output.startswith("sha256:")  # the CRI image id (the config digest)
    assert any(ref in image.repo_tags for image in node.cri_images())
    assert node.images()[ref] == small.digest
    assert all(node.has_blob(d) for d in small.blobs)
    empty_mirror.stop()
    upstream.stop()
    asked = [r for r in empty_mirror.requests() if r.user_agent.startswith("containerd/")]
    assert asked and asked[0].method == "HEAD" and asked[0].status == 404
    assert asked[0].path == f"/v2/test/small/manifests/{small.tag}?ns={quote(upstream.addr, safe='')}"
    assert any(r.path == f"/v2/test/small/manifests/{small.tag}" for r in upstream.requests(mark))


def test_pull_failure_raises_with_ctr_output(
    containerd_node: Callable[..., ContainerdNode], upstream: UpstreamRegistry
) -> None:
    node = containerd_node(3)
    with pytest.raises(HarnessError, match="not found"):
        node.pull(f"{upstream.addr}/test/absent:v1", timeout=60)


def test_hosts_toml_helper(tmp_path: Path, processes: ProcessGroup) -> None:
    node = ContainerdNode(4, tmp_path, processes)
    path = node.write_hosts_toml(
        "127.0.0.1:5000",
        "http://127.0.0.1:5000",
        ["http://127.0.0.11:30020", "http://127.0.0.12:30020"],
        ["pull"],
        dial_timeout="200ms",
    )
    assert path == node.certs_d / "127.0.0.1:5000" / "hosts.toml"
    text = path.read_text()
    assert text.index("127.0.0.11:30020") < text.index("127.0.0.12:30020")
    assert "server = 'http://127.0.0.1:5000'" in text and "capabilities = ['pull']" in text
    assert text.count("dial_timeout = '200ms'") == 2


# -- network namespaces ------------------------------------------------------------------------
def test_netns_isolated_hosts_reach_each_other_and_are_removed(
    netns_network: NetnsNetwork, processes: ProcessGroup, tmp_path: Path
) -> None:
    require("curl")
    server_ns, client_ns = netns_network.add(1), netns_network.add(2)
    assert {server_ns.name, client_ns.name} <= list_namespaces()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello").write_text("from the other namespace")
    processes.start(
        "http",
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            server_ns.ip,
            "8080",
            "--directory",
            str(tmp_path / "www"),
        ],
        log_path=tmp_path / "http.log",
        netns=server_ns.name,
    )
    url = f"http://{server_ns.ip}:8080/hello"
    wait_until(
        lambda: http_status(url, netns=client_ns.name) == 200,
        within=15,
        what="the server in the other namespace",
    )
    assert client_ns.run(["curl", "-sf", url]).stdout == "from the other namespace"
    # the namespace's own loopback is its own: nothing listens there
    assert http_status("http://127.0.0.1:8080/hello", netns=client_ns.name) == 0

    names, links = (
        [server_ns.name, client_ns.name],
        [server_ns.host_veth, client_ns.host_veth, netns_network.bridge],
    )
    processes.stop_all()
    netns_network.destroy()
    assert not set(names) & list_namespaces()
    assert not any(link_exists(link) for link in links)
    netns_network.destroy()  # idempotent

"""End to end: three nodes (containerd + ``spegel-py registry`` with the DHT) pull from each other.

Node ``i`` is ``127.0.0.1i``; its ``certs.d`` is written by the real ``spegel-py configuration``
and points at its own spegel-py, then at the upstream (``tests/harness/cluster.py``). The
upstream is Debian's docker-registry; it counts every request in its access log, so "0 upstream
requests" is a fact read from the upstream, not from a client.

Numbers worth reporting (pull times, 404 latencies) go to the test's ``record_property`` and are
printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    BuiltImage,
    HarnessError,
    ImageSet,
    ProcessGroup,
    PullResult,
    UpstreamRegistry,
)
from harness.cluster import Cluster, image_complete, process_io, started_cluster
from harness.require import require_cluster, require_spegel
from support.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FAST_404 = 1.0  # seconds: containerd must fall back to upstream without noticeable delay


def report(record_property: object, name: str, value: float) -> None:
    print(f"\n[p2p] {name} = {value:.3f}")
    record_property(name, round(value, 4))  # type: ignore[operator]  # pytest's fixture is a callable


@pytest.fixture
def cluster(processes: ProcessGroup, upstream: UpstreamRegistry) -> Iterator[Cluster]:
    """Three started nodes wired to ``upstream``; every process stopped by pid afterwards."""
    require_cluster()
    require_spegel()
    with started_cluster(processes, upstream) as built:
        yield built


def digest_ref(upstream: UpstreamRegistry, image: BuiltImage) -> str:
    return f"{upstream.addr}/{image.repository()}@{image.digest}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def largest_layer(image: BuiltImage) -> str:
    return max(image.blobs, key=lambda d: image.blobs[d])


def test_upstream_stopped_every_byte_comes_from_peers(
    cluster: Cluster,
    upstream: UpstreamRegistry,
    test_images: ImageSet,
    big_image: BuiltImage,
    record_property: object,
) -> None:
    n1, n2, n3 = cluster.nodes
    small, multi = test_images.small, test_images.multi
    images = [small, multi, big_image]
    for image in images:
        result = n1.pull(upstream.ref(image), all_platforms=image is multi)
        if image is big_image:
            report(record_property, "big_pull_from_upstream_s", result.seconds)
    report(record_property, "findable_s", cluster.wait_findable(images, by=[n2, n3]))

    mark = upstream.mark()
    upstream.stop()
    seconds: dict[str, float] = {}
    for image in images:  # node 2 by tag, node 3 by digest; multi with every platform
        multi_arch = image is multi
        seconds[f"n2_{image.kind}"] = n2.pull(upstream.ref(image), all_platforms=multi_arch).seconds
        seconds[f"n3_{image.kind}"] = n3.pull(digest_ref(upstream, image), all_platforms=multi_arch).seconds
    for name, value in seconds.items():
        report(record_property, f"{name}_p2p_pull_s", value)

    assert upstream.requests(mark) == []
    problems = []
    for image in images:
        problems += image_complete(n2, upstream.ref(image), image)
        problems += image_complete(n3, digest_ref(upstream, image), image)
    assert problems == []
    for node in (n2, n3):  # ctr's own completeness check, every platform
        check = node.containerd.ctr("images", "check").stdout
        rows = [line for line in check.splitlines()[1:] if line.strip()]
        assert rows and all("complete" in row for row in rows), check
    # the bytes containerd received on nodes 2 and 3 were relayed by their own spegel-py
    blob_bytes = sum(image.total_size for image in images)
    for node in (n2, n3):
        assert node.served_bytes().get("peer", 0) >= blob_bytes, (node.name, node.served_bytes())
    assert n1.served_bytes().get("local", 0) > 0


def test_image_no_node_has_falls_back_to_upstream_fast(
    cluster: Cluster, upstream: UpstreamRegistry, test_images: ImageSet, record_property: object
) -> None:
    n2 = cluster.node(2)
    multi = test_images.multi
    manifest = n2.head(f"/v2/{multi.repository()}/manifests/{multi.tag}", ns=upstream.addr)
    blob = n2.head(f"/v2/{multi.repository()}/blobs/{largest_layer(multi)}", ns=upstream.addr)
    report(record_property, "miss_manifest_404_s", manifest.seconds)
    report(record_property, "miss_blob_404_s", blob.seconds)
    assert (manifest.status, blob.status) == (404, 404)
    assert manifest.seconds < FAST_404 and blob.seconds < FAST_404

    mark = upstream.mark()
    result = n2.pull(upstream.ref(multi), all_platforms=True)
    report(record_property, "miss_pull_via_upstream_s", result.seconds)
    assert image_complete(n2, upstream.ref(multi), multi) == []
    fetched = {r.path.rsplit("/", 1)[-1] for r in upstream.requests(mark) if r.method == "GET"}
    assert set(multi.blobs) - {multi.digest} <= fetched  # the bytes came from upstream


def test_peer_killed_mid_transfer_the_pull_completes_from_another_peer(
    cluster: Cluster, upstream: UpstreamRegistry, big_image: BuiltImage, record_property: object
) -> None:
    n1, n2, n3 = cluster.nodes
    ref = upstream.ref(big_image)
    n1.pull(ref)
    n2.pull(ref)
    cluster.wait_findable([big_image], by=[n3])
    mark = upstream.mark()
    upstream.stop()

    peers = {n.name: n for n in (n1, n2)}
    pids = {name: n.spegel.pid for name, n in peers.items()}
    base = {name: process_io(pid).get("wchar", 0) for name, pid in pids.items()}
    outcome: dict[str, object] = {}

    def pull() -> None:
        try:
            outcome["result"] = n3.pull(ref, timeout=180)
        except HarnessError as exc:
            outcome["error"] = exc

    puller = threading.Thread(target=pull, name="n3-pull")
    puller.start()
    try:
        # bytes are flowing once a peer has written 16 MiB more than before (sendfile counts
        # in /proc/PID/io as it goes); kill that peer then, mid-image
        def serving() -> str | None:
            for name, pid in pids.items():
                if process_io(pid).get("wchar", 0) - base[name] >= 16 << 20:
                    return name
            return None

        victim = str(
            wait_until(serving, within=60, what="a peer to start serving the big image", interval=0.005)
        )
        sent_at_kill = process_io(pids[victim]).get("wchar", 0) - base[victim]
        cluster.stop_spegel(peers[victim], kill=True)
    finally:
        puller.join(200)
    report(record_property, "killed_peer_sent_mib", sent_at_kill / (1 << 20))
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert isinstance(result, PullResult)
    report(record_property, "pull_with_peer_killed_s", result.seconds)
    assert sent_at_kill < big_image.total_size  # it really was killed mid-transfer
    assert image_complete(n3, ref, big_image) == []
    assert upstream.requests(mark) == []
    survivor = next(n for name, n in peers.items() if name != victim)
    assert survivor.served_bytes().get("local", 0) > 0
    # node 3's spegel-py continued the cut stream(s) from the survivor (a single-provider stream
    # resumed with Range from the offset already sent; a multi-provider fetch of a big layer
    # asked the survivor for the killed peer's range) and never had to kill a response to
    # containerd mid-body
    metrics = n3.metrics()
    resumed = metrics.get("spegel_mirror_resumed_streams_total", 0)
    retried = metrics.get('spegel_multi_peer_ranges_total{outcome="retried"}', 0)
    report(record_property, "resumed_streams", resumed)
    report(record_property, "multi_peer_ranges_retried", retried)
    multi = metrics.get('spegel_multi_peer_fetches_total{outcome="complete"}', 0)
    report(record_property, "multi_peer_fetches", multi)
    assert resumed + retried >= 1
    assert metrics.get("spegel_mirror_aborted_responses_total", -1) == 0


def test_corrupt_peer_is_detected_and_bad_content_never_committed(
    cluster: Cluster, upstream: UpstreamRegistry, test_images: ImageSet, record_property: object
) -> None:
    n1, n2, n3 = cluster.nodes
    small = test_images.small
    ref, layer = upstream.ref(small), largest_layer(small)
    n1.pull(ref)
    n2.pull(ref)
    cluster.wait_findable([small], by=[n3])
    # node 1's containerd now holds garbage of the right length under the layer's digest
    path = n1.containerd.blob_path(layer)
    with path.open("r+b") as f:  # the blob is 0444; root may still write it
        f.write(os.urandom(small.blobs[layer]))
    served = n1.head(f"/v2/{small.repository()}/blobs/{layer}", mirrored=True, method="GET")
    assert served.status == 200 and len(served.body) == small.blobs[layer]
    assert f"sha256:{hashlib.sha256(served.body).hexdigest()}" != layer  # node 1 serves corrupt bytes

    mark = upstream.mark()
    upstream.stop()
    # only the corrupt peer left: the pull must fail, promptly, without committing the layer
    cluster.stop_spegel(n2)
    sent_before = n1.served_bytes().get("local", 0)
    start = time.monotonic()
    with pytest.raises(HarnessError):
        n3.pull(ref, timeout=120)
    report(record_property, "corrupt_pull_failed_after_s", time.monotonic() - start)
    assert time.monotonic() - start < 60
    assert not n3.containerd.has_blob(layer)
    # the corrupt bytes did reach node 3's spegel-py (so it is its check that stopped them)
    assert n1.served_bytes().get("local", 0) - sent_before >= small.blobs[layer]
    assert n3.metrics().get("spegel_mirror_integrity_failures_total", 0) > 0  # detected and counted

    # a good peer again: the pull completes with the right bytes
    n2.spegel.start()
    cluster.wait_findable([small], by=[n3])
    n3.pull(ref)
    assert image_complete(n3, ref, small) == []
    assert sha256_of(n3.containerd.blob_path(layer)) == layer
    assert upstream.requests(mark) == []


def test_image_deleted_on_the_only_peer_falls_back_fast(
    cluster: Cluster, upstream: UpstreamRegistry, test_images: ImageSet, record_property: object
) -> None:
    n1, n2 = cluster.node(1), cluster.node(2)
    small = test_images.small
    ref, layer = upstream.ref(small), largest_layer(small)
    n1.pull(ref)
    cluster.wait_findable([small], by=[n2])
    n1.containerd.remove_image(ref)
    wait_until(
        lambda: not n1.containerd.has_blob(layer), within=30, what="node 1's content GC to remove the layer"
    )

    stale = n2.head(f"/v2/{small.repository()}/blobs/{layer}", ns=upstream.addr)
    again = n2.head(f"/v2/{small.repository()}/blobs/{layer}", ns=upstream.addr)
    report(record_property, "stale_404_first_s", stale.seconds)
    report(record_property, "stale_404_again_s", again.seconds)
    assert (stale.status, again.status) == (404, 404)
    assert stale.seconds < FAST_404 and again.seconds < FAST_404

    mark = upstream.mark()
    result = n2.pull(ref)
    report(record_property, "stale_pull_via_upstream_s", result.seconds)
    assert image_complete(n2, ref, small) == []
    fetched = {r.path.rsplit("/", 1)[-1] for r in upstream.requests(mark) if r.method == "GET"}
    assert layer in fetched


def test_cri_pull_through_the_daemons_config_path_is_served_by_peers(
    cluster: Cluster, upstream: UpstreamRegistry, test_images: ImageSet
) -> None:
    n1, n2 = cluster.node(1), cluster.node(2)
    small = test_images.small
    ref = upstream.ref(small)
    n1.pull(ref)
    cluster.wait_findable([small], by=[n2])
    mark = upstream.mark()
    upstream.stop()
    n2.containerd.cri_pull(ref, timeout=120)
    assert upstream.requests(mark) == []
    assert n2.has_image(small) == []
    assert any(ref in image.repo_tags for image in n2.containerd.cri_images())
    assert n2.served_bytes().get("peer", 0) >= small.total_size - small.blobs[small.digest]

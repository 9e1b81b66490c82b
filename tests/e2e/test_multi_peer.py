"""End to end, real containerd: a layer fetched from two providers at once, one of which lies.

Three nodes as in test_p2p_pull.py (``tests/harness/cluster.py``), every spegel-py run with a
small ``--multi-peer-min-size`` so the small image's 4 MiB layer is fetched from several
providers (the default, 64 MiB, is for real layers). The killed-provider case runs on the big
image in test_p2p_pull.py (``test_peer_killed_mid_transfer_the_pull_completes_from_another_peer``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from harness import HarnessError, ImageSet, ProcessGroup, UpstreamRegistry
from harness.cluster import Cluster, ClusterNode, image_complete, started_cluster
from harness.require import require_cluster, require_spegel
from support.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# 500 ms to find a provider: on the shared machine a DHT lookup can take longer than the default
# 20 ms, and a pull whose mirror answers 404 goes to the (stopped) upstream (as in test_in_progress.py)
MULTI_ARGS = (
    "--multi-peer-min-size", "1MiB", "--multi-peer-range-size", "512KiB", "--mirror-resolve-timeout", "500ms",
)  # fmt: skip


@pytest.fixture
def cluster(processes: ProcessGroup, upstream: UpstreamRegistry) -> Iterator[Cluster]:
    require_cluster()
    require_spegel()
    with started_cluster(processes, upstream, extra_args=MULTI_ARGS) as built:
        yield built


def test_a_corrupt_provider_never_gets_its_bytes_committed(
    cluster: Cluster, upstream: UpstreamRegistry, test_images: ImageSet, record_property: object
) -> None:
    n1, n2, n3 = cluster.nodes
    small = test_images.small
    ref = upstream.ref(small)
    layer = max(small.blobs, key=lambda d: small.blobs[d])  # 4 MiB: fetched from n1 and n2 at once
    n1.pull(ref)
    n2.pull(ref)
    cluster.wait_findable([small], by=[n3])
    with n1.containerd.blob_path(layer).open("r+b") as f:  # 0444, but root may write it
        f.write(os.urandom(small.blobs[layer]))
    mark = upstream.mark()
    upstream.stop()

    # A pull that fails is asked again, as a kubelet would after its back-off: by then containerd
    # has dropped the failed pull's ingest (a retry at once would resume the wrong prefix with
    # Range and fail the same way; a client Range is not verified, docs/operations.md).
    failures = 0
    for _ in range(6):
        try:
            n3.pull(ref, timeout=120)
            break
        except HarnessError as exc:
            failures += 1
            reason = [line for line in str(exc).splitlines() if "ctr:" in line][-1:]
            print(f"\n[multi] pull {failures} failed: {reason}")
            assert not n3.containerd.has_blob(layer) or _sha256(n3, layer) == layer
            wait_until(lambda: not _ingesting(n3, layer), within=60, what="the failed ingest to be dropped")
    print(f"\n[multi] pulls failed before one completed: {failures}")
    record_property("failed_pulls", failures)  # type: ignore[operator]  # pytest's fixture is a callable
    assert image_complete(n3, ref, small) == []
    assert _sha256(n3, layer) == layer  # the committed layer is the right one
    assert upstream.requests(mark) == []  # from the honest peer, not upstream
    metrics = n3.metrics()
    assert metrics.get('spegel_multi_peer_fetches_total{outcome="failed"}', 0) >= 1
    assert metrics.get("spegel_mirror_integrity_failures_total", 0) >= 1  # detected and counted


def _sha256(node: ClusterNode, digest: str) -> str:
    return "sha256:" + hashlib.sha256(node.containerd.blob_path(digest).read_bytes()).hexdigest()


def _ingesting(node: ClusterNode, digest: str) -> bool:
    """True while containerd on ``node`` holds an ingest (a partial download) of ``digest``."""
    ingest = node.containerd.content_path / "ingest"
    refs = ingest.glob("*/ref") if ingest.is_dir() else []
    return any(digest in path.read_text(errors="replace") for path in refs if path.is_file())

"""End to end: two nodes (containerd + ``spegel-py registry``) miss the same image at the same moment.

With pull coordination (the default) the blobs' rendezvous tells one node to fetch each blob
from upstream and the other to stream it from that node, so upstream serves one request per
blob; the upstream is Debian's docker-registry and the count is read from its access log. The
same pulls with ``--coordinate-pulls=false`` (Spegel's behaviour) are the anchor: each node
fetches every blob itself. Manifests are not coordinated (a tag is resolved upstream, and
manifests are small), so only ``/blobs/`` requests are counted.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from harness import BuiltImage, HarnessError, ImageSet, ProcessGroup, PullResult, UpstreamRegistry
from harness.cluster import Cluster, ClusterNode, image_complete, started_cluster
from harness.require import require_cluster, require_spegel
from support.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


WAIT = 2.0  # --coordination-wait of the nodes that test a winner that never serves


@contextmanager
def two_nodes(processes: ProcessGroup, upstream: UpstreamRegistry, *args: str) -> Iterator[Cluster]:
    """Two started nodes wired to ``upstream`` with spegel-py flags ``args``."""
    require_cluster()
    require_spegel()
    with started_cluster(processes, upstream, prefix="coord-", size=2, extra_args=list(args)) as built:
        yield built


@pytest.fixture(params=[True, False], ids=["coordinated", "uncoordinated"])
def pair(
    request: pytest.FixtureRequest, processes: ProcessGroup, upstream: UpstreamRegistry
) -> Iterator[tuple[Cluster, bool]]:
    """Two started nodes, and whether pull coordination is on."""
    with two_nodes(processes, upstream, "--coordinate-pulls", "true" if request.param else "false") as built:
        yield built, request.param


def blob_gets(upstream: UpstreamRegistry, mark: int) -> Counter[str]:
    """Upstream GETs of blobs since ``mark``, by digest (stops the upstream: its log is final)."""
    upstream.stop()
    logged = upstream.requests(mark)
    return Counter(r.path.rsplit("/", 1)[-1] for r in logged if r.method == "GET" and "/blobs/" in r.path)


def coordination(cluster: Cluster) -> dict[str, float]:
    """``spegel_pull_coordination_total`` by outcome, summed over the nodes."""
    metrics = [n.metrics() for n in cluster.nodes if n.spegel.running()]
    return {
        outcome: sum(m.get(f'spegel_pull_coordination_total{{outcome="{outcome}"}}', 0) for m in metrics)
        for outcome in ("won", "waited", "timed_out")
    }


def pull_together(nodes: list[ClusterNode], ref: str) -> list[PullResult]:
    """Start ``ctr images pull`` on every node at the same moment; wait for all of them."""
    start = threading.Barrier(len(nodes))
    results: dict[int, PullResult | BaseException] = {}

    def pull(node: ClusterNode) -> None:
        start.wait()
        try:
            results[node.index] = node.pull(ref, timeout=120)
        except HarnessError as exc:
            results[node.index] = exc

    threads = [threading.Thread(target=pull, args=(n,), name=f"pull-{n.name}") for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    failed = [r for r in results.values() if isinstance(r, BaseException)]
    assert not failed and len(results) == len(nodes), results
    return [r for r in results.values() if isinstance(r, PullResult)]


def test_two_nodes_missing_at_once_send_one_upstream_request_per_blob(
    pair: tuple[Cluster, bool], upstream: UpstreamRegistry, test_images: ImageSet, record_property: object
) -> None:
    cluster, coordinated = pair
    image = test_images.small
    ref = upstream.ref(image)
    blobs = set(image.blobs) - {image.digest}  # config and layers (the manifest is not a blob)
    mark = upstream.mark()
    results = pull_together(cluster.nodes, ref)
    gets = blob_gets(upstream, mark)
    for node in cluster.nodes:
        assert image_complete(node, ref, image) == []
    copies = sum(gets[d] for d in blobs) / len(blobs)
    outcomes = coordination(cluster)
    print(f"\n[coord] coordinated={coordinated} upstream blob GETs={dict(gets)} copies={copies:.2f} "
          f"outcomes={outcomes} pulls_s={[round(r.seconds, 2) for r in results]}")
    record_property("upstream_copies", copies)  # type: ignore[operator]  # pytest's fixture is a callable
    assert set(gets) <= blobs
    if coordinated:
        assert all(gets[d] == 1 for d in blobs), gets
        assert outcomes["waited"] >= 1 and outcomes["timed_out"] == 0, outcomes
    else:
        assert all(gets[d] >= 1 for d in blobs), gets  # the anchor: each node on its own
        assert sum(outcomes.values()) == 0


@pytest.mark.parametrize("winner", ["stalled", "dead"])
def test_a_winner_that_never_serves_costs_at_most_the_wait(
    processes: ProcessGroup, upstream: UpstreamRegistry, test_images: ImageSet, winner: str
) -> None:
    """Node 1 wins every blob of the image (its mirror is asked for each one, and its containerd
    never fetches them); node 2 then pulls. A stalled winner (alive, serving nothing) costs each
    of node 2's blobs the wait and a 404; a dead one (its spegel-py killed) is seen refusing
    connections and hands its claims over, so node 2 fetches at once. Either way node 2's pull
    completes with one upstream request per blob."""
    image = test_images.small
    ref = upstream.ref(image)
    blobs = set(image.blobs) - {image.digest}
    with two_nodes(processes, upstream, "--coordination-wait", f"{WAIT}s") as cluster:
        n1, n2 = cluster.nodes
        for digest in blobs:
            claimed = n1.head(f"/v2/{image.repository()}/blobs/{digest}", ns=upstream.addr, method="GET")
            assert claimed.status == 404  # won: "fetch it upstream yourself"
        assert coordination(cluster)["won"] == len(blobs)
        if winner == "dead":
            cluster.stop_spegel(n1, kill=True)
        mark = upstream.mark()
        result = n2.pull(ref, timeout=120)
        gets = blob_gets(upstream, mark)
        outcomes = coordination(cluster)
        print(f"\n[coord] winner={winner} pull_s={result.seconds:.2f} outcomes={outcomes} gets={dict(gets)}")
        assert image_complete(n2, ref, image) == []
        assert all(gets[d] == 1 for d in blobs), gets
        if winner == "stalled":
            assert outcomes["timed_out"] == len(blobs)
        else:  # node 2 won every blob itself: the handover, or a rendezvous that was node 1
            assert outcomes == {"won": len(blobs), "waited": 0, "timed_out": 0}


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.environ.get("SWARM_BIG_IMAGE"), reason="a >= 300 MiB image: SWARM_BIG_IMAGE=1")
@pytest.mark.parametrize("coordinated", [True, False], ids=["coordinated", "uncoordinated"])
def test_big_image_two_nodes_at_once(
    processes: ProcessGroup, upstream: UpstreamRegistry, big_image: BuiltImage, coordinated: bool
) -> None:
    """A measurement more than a check (docs/benchmarks.md, "Pull coordination"): the big image
    (three ~110 MiB layers) pulled by two nodes at once, upstream on loopback and not capped."""
    ref = upstream.ref(big_image)
    blobs = set(big_image.blobs) - {big_image.digest}
    flag = "true" if coordinated else "false"
    with two_nodes(processes, upstream, "--coordinate-pulls", flag) as cluster:
        mark = upstream.mark()
        results = pull_together(cluster.nodes, ref)
        served = [n.served_bytes() for n in cluster.nodes]
        outcomes = coordination(cluster)
        gets = blob_gets(upstream, mark)
    size = sum(big_image.blobs[d] for d in blobs)
    copies = sum(gets[d] * big_image.blobs[d] for d in blobs) / size
    print(f"\n[coord-big] coordinated={coordinated} upstream_copies={copies:.2f} "
          f"pulls_s={sorted(round(r.seconds, 2) for r in results)} outcomes={outcomes} "
          f"served_mib={[{k: round(v / 2**20) for k, v in s.items()} for s in served]}")
    if coordinated:  # one upstream GET per blob, plus one per waiter whose wait ran out
        assert sum(gets[d] for d in blobs) == len(blobs) + outcomes["timed_out"], (gets, outcomes)


def largest_ingest(node: ClusterNode) -> int:
    """Bytes of the largest blob this node's containerd is writing right now (0: none)."""
    sizes = [0]
    for data in (node.containerd.content_path / "ingest").glob("*/data"):
        try:
            sizes.append(data.stat().st_size)
        except FileNotFoundError:  # committed or aborted meanwhile
            continue
    return max(sizes)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.environ.get("SWARM_BIG_IMAGE"), reason="a >= 300 MiB image: SWARM_BIG_IMAGE=1")
def test_big_image_the_node_pulling_most_loses_its_spegel_mid_pull(
    processes: ProcessGroup, upstream: UpstreamRegistry, big_image: BuiltImage
) -> None:
    """Both nodes pull the big image at once; once a layer is 32 MiB into a node's content store,
    that node's spegel-py is killed (a winner, or a waiter streaming from one). Both pulls
    complete, and upstream serves at most two copies."""
    ref = upstream.ref(big_image)
    blobs = set(big_image.blobs) - {big_image.digest}
    with two_nodes(processes, upstream) as cluster:
        mark = upstream.mark()
        outcome: dict[str, object] = {}
        puller = threading.Thread(target=lambda: outcome.update(r=pull_together(cluster.nodes, ref)))
        puller.start()
        try:
            victim = wait_until(
                lambda: next((n for n in cluster.nodes if largest_ingest(n) >= 32 << 20), None),
                within=120, interval=0.01, what="a layer 32 MiB into a node's pull",
            )
            cluster.stop_spegel(victim, kill=True)
        finally:
            puller.join(300)
        results = outcome.get("r")
        assert isinstance(results, list), outcome
        survivor = next(n for n in cluster.nodes if n is not victim)
        outcomes = coordination(cluster)
        served = {k: round(v / 2**20) for k, v in survivor.served_bytes().items()}
        gets = blob_gets(upstream, mark)
        for node in cluster.nodes:
            assert image_complete(node, ref, big_image) == []
    size = sum(big_image.blobs[d] for d in blobs)
    copies = sum(gets[d] * big_image.blobs[d] for d in blobs) / size
    print(f"\n[coord-kill] victim={victim.name} upstream_copies={copies:.2f} "
          f"pulls_s={sorted(round(r.seconds, 2) for r in results)} survivor_outcomes={outcomes} "
          f"survivor_served_mib={served}")
    assert copies <= 2.0, gets

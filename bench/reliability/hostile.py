"""Row "hostile": containerd pulls while one advertising peer misbehaves in every way we know.

Three real nodes. Node 1 is honest and holds ``test/small``. Node 2 is the hostile one: its
containerd holds ``test/small`` and ``test/multi`` and its spegel-py advertises them on the DHT,
but that spegel-py listens on another port, and the cluster's registry port on node 2's address
is a :class:`~bench.reliability.hostilepeer.HostilePeer` (Spegel uses one registry port
cluster-wide, so that is where other nodes fetch node 2's content). Node 3 pulls through its
own spegel-py (``certs.d`` by ``spegel-py configuration``: the mirror first, then upstream).

For every misbehaviour, node 3 pulls ``test/small`` (an honest and a hostile provider: the pull
should complete from the honest peer or upstream) and ``test/multi`` (the hostile peer is the
only provider: it must complete from upstream; skipped for ``tag-disagrees``, where a single
provider is trusted as in Spegel, see docs/operations.md). Node 3's spegel-py is restarted and
its images removed between misbehaviours, so no memory of the last one helps.

Held to: every pull completes within :data:`PULL_BOUND` seconds, the image names the right
digest with every blob present, and every blob containerd committed hashes to its name.
"""

from __future__ import annotations

import time
from typing import Any

from harness import BuiltImage, HarnessError
from harness.cluster import Cluster, ClusterNode, image_complete
from harness.net import free_port

from . import common
from .common import Row, Scale
from .hostilepeer import MODES, HostilePeer
from .lab import Lab, lab

PULL_BOUND = 60.0  # seconds a pull may take with a hostile provider
PULL_TIMEOUT = PULL_BOUND + 30  # seconds before ctr is killed (a hung pull)
READY_WITHIN = 120.0  # seconds for a restarted spegel-py to be ready (generous: a shared machine)


def _move_registry_port(cluster: Cluster) -> None:
    """Node 2's own spegel-py answers elsewhere; the cluster port on its address is hostile."""
    node = cluster.node(2)
    node.spegel.port = free_port(node.ip)


def _layout_blobs(*images: BuiltImage) -> dict[str, bytes]:
    return {d: image.blob_path(d).read_bytes() for image in images for d in image.blobs}


def _pull(lab_: Lab, node: ClusterNode, image: BuiltImage) -> dict[str, Any]:
    ref = lab_.ref(image)
    mark = lab_.upstream.mark()
    started = time.monotonic()
    try:
        node.pull(ref, all_platforms=bool(image.platforms and len(image.platforms) > 1), timeout=PULL_TIMEOUT)
        error = ""
    except HarnessError as exc:
        error = str(exc)[-500:]
    seconds = time.monotonic() - started
    problems = image_complete(node, ref, image) if not error else [error]
    wrong = common.wrong_blobs(node.containerd.content_path)
    upstream_gets = sum(1 for r in lab_.upstream.requests(mark) if r.method == "GET" and "/blobs/" in r.path)
    return {
        "seconds": round(seconds, 1),
        "problems": problems,
        "wrong_blobs": wrong,
        "upstream_blob_gets": upstream_gets,
    }


def _reset(lab_: Lab, node: ClusterNode) -> None:
    for image in (lab_.images.small, lab_.images.multi):
        if lab_.ref(image) in node.containerd.images():
            node.containerd.remove_image(lab_.ref(image))
    # a pull that failed leaves committed blobs behind, and containerd never fetches what it has
    left = node.containerd.ctr("content", "ls", "-q").stdout.split()
    if left:
        node.containerd.ctr("content", "rm", *left)
    node.spegel.stop()
    node.spegel.start(timeout=READY_WITHIN)


def run(scale: Scale) -> Row:
    results: dict[str, dict[str, Any]] = {}
    with lab(size=3, before_start=_move_registry_port) as lab_:
        n1, n2, n3 = lab_.cluster.nodes
        small, multi = lab_.images.small, lab_.images.multi
        n1.containerd.pull(lab_.ref(small))
        n2.containerd.pull(lab_.ref(small))
        n2.containerd.pull(lab_.ref(multi), all_platforms=True)
        tags = {f"{i.repository()}:{i.tag}": i.digest for i in (small, multi)}
        peer = HostilePeer(n2.ip, lab_.cluster.registry_port, _layout_blobs(small, multi), tags)
        peer.start()
        try:
            lab_.cluster.wait_findable([small, multi], by=[n3])
            for mode in MODES[1:]:
                _reset(lab_, n3)
                peer.mode = mode
                result: dict[str, Any] = {"small": _pull(lab_, n3, small)}
                if mode != "tag-disagrees":
                    result["multi"] = _pull(lab_, n3, multi)
                result["hostile_requests"] = peer.requests[mode]
                result["alive"] = n3.spegel.running()
                results[mode] = result
                print(f"  hostile {mode}: {result}", flush=True)
        finally:
            peer.stop()
    pulls = [(m, k, p) for m, r in results.items() for k, p in r.items() if isinstance(p, dict)]
    slowest = max((p["seconds"] for _, _, p in pulls), default=0.0)
    wrong = sorted({b for _, _, p in pulls for b in p["wrong_blobs"]})
    failed = [f"{m}/{k}" for m, k, p in pulls if p["problems"]]
    return Row.judged(
        "hostile",
        "one advertising peer: " + ", ".join(MODES[1:]) + "; node 3 pulls test/small (honest peer "
        "beside it) and test/multi (hostile peer only) through its spegel-py",
        f"{len(pulls) - len(failed)}/{len(pulls)} pulls complete, slowest {slowest:.1f} s, "
        f"{len(wrong)} wrong blobs committed; hostile peer asked "
        f"{sum(r['hostile_requests'] for r in results.values())} times",
        f"every pull complete within {PULL_BOUND:.0f} s, 0 wrong blobs",
        results,
        (not failed, f"pulls failed: {failed}"),
        (slowest <= PULL_BOUND, f"slowest pull {slowest:.1f} s"),
        (not wrong, f"wrong blobs committed: {wrong[:3]}"),
        (all(r["alive"] for r in results.values()), "node 3's spegel-py exited"),
    )

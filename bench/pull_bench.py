"""Issue-4 pull benchmark: containerd pulls an image from a peer through spegel-py, next to the
same pull straight from the upstream registry, in one run; and how fast stale records become 404s.

A real 3-node cluster of the project's harness (tests/harness: Debian's docker-registry as the
upstream, containerd 1.6 per node, ``spegel-py registry`` with the DHT per node, ``certs.d``
written by ``spegel-py configuration``). Node 1 pulls the images from the upstream; then, in
interleaved rounds (the order flips every round), node 2 pulls the big image

  * ``p2p``: ``ctr images pull --hosts-dir certs.d`` (its own spegel-py first, as configured),
    every byte relayed from node 1; the upstream's access log must show 0 requests;
  * ``direct``: ``ctr images pull --plain-http`` straight from the upstream;

and deletes it again (``ctr images rm --sync``: GC removes the blobs) before the next pull. Both
sources serve page-cached blobs (node 1's were just written by its pull, the upstream's by the
push), and node 2 writes and unpacks the same bytes either way, so the ratio is the cost of the
peer path. Then the stale-record scenarios, each on keys no request has asked for yet (so no
negative cache helps the first answer), timed from node 2 with the HEAD containerd sends:

  * ``lost``: node 1 deleted the image (GC) but its provider records live on in the DHT;
  * ``killed``: node 1's spegel-py was SIGKILLed (its records live on; dials are refused).

Run as root from the repository root (needs containerd, docker-registry; ``make deps``):
    .venv/bin/python -m bench.pull_bench [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the harness package lives with the tests

from harness import BuiltImage, ImageSet, ProcessGroup, UpstreamRegistry, cleanup_mounts  # noqa: E402
from harness.cluster import Cluster, ClusterNode, image_complete  # noqa: E402

from bench.lib import runner  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved p2p/direct rounds")
    ap.add_argument("--out", default=str(REPO / ".work" / "bench" / "pull_bench.json"))
    ap.add_argument("--keep", action="store_true", help="keep the working directory (logs)")
    return ap.parse_args(argv)


def _pull_round(
    mode: str, node: ClusterNode, upstream: UpstreamRegistry, image: BuiltImage
) -> dict[str, Any]:
    ref = upstream.ref(image)
    mark = upstream.mark()
    if mode == "p2p":
        result = node.pull(ref, timeout=600)
    else:
        result = node.containerd.pull(ref, timeout=600)
    problems = image_complete(node, ref, image)
    if problems:
        raise RuntimeError(f"{mode} pull incomplete: {problems}")
    upstream_requests = len(upstream.requests(mark))
    node.containerd.remove_image(ref)
    left = [d for d in image.blobs if node.containerd.has_blob(d)]
    if left:
        raise RuntimeError(f"GC left {len(left)} blobs of {image.kind} on {node.name}")
    return {"mode": mode, "seconds": result.seconds, "upstream_requests": upstream_requests}


def _stale_answers(cluster: Cluster, node: ClusterNode, image: BuiltImage) -> list[dict[str, Any]]:
    """Time node's answer to every key of ``image`` (manifest first, as containerd asks)."""
    out = []
    for path in cluster.keys(image):
        answer = node.head(path, ns=cluster.upstream.addr)
        out.append({"path": path, "status": answer.status, "ms": answer.seconds * 1000})
    return out


def run(a: argparse.Namespace, workdir: Path, group: ProcessGroup) -> dict[str, Any]:
    images = ImageSet()
    big, small, multi = images.big, images.small, images.multi
    upstream = UpstreamRegistry(workdir / "upstream", group)
    upstream.start()
    for image in (big, small, multi):
        upstream.push(image)
    cluster = Cluster(workdir, group, upstream, size=3)
    cluster.start()
    n1, n2 = cluster.node(1), cluster.node(2)
    for image in (big, small, multi):
        n1.pull(upstream.ref(image), all_platforms=image.kind == "multi", timeout=600)
    findable_s = cluster.wait_findable([big, small, multi], by=[n2], timeout=120)
    print(f"node 2 finds node 1's content after {findable_s:.1f}s", flush=True)

    rounds: list[dict[str, Any]] = []
    for r in range(a.rounds):
        for mode in ("p2p", "direct") if r % 2 == 0 else ("direct", "p2p"):
            rec = _pull_round(mode, n2, upstream, big)
            rec["round"] = r + 1
            rounds.append(rec)
            print(
                f"  round {r + 1} {mode:<6} {rec['seconds']:6.2f} s  upstream requests "
                f"{rec['upstream_requests']}",
                flush=True,
            )
    p2p = statistics.median(x["seconds"] for x in rounds if x["mode"] == "p2p")
    direct = statistics.median(x["seconds"] for x in rounds if x["mode"] == "direct")
    result: dict[str, Any] = {
        "image": {"kind": big.kind, "bytes": big.total_size, "blobs": len(big.blobs)},
        "rounds": rounds,
        "p2p_median_s": p2p,
        "direct_median_s": direct,
        "ratio_p2p_vs_direct": p2p / direct,
        "p2p_upstream_requests": sum(x["upstream_requests"] for x in rounds if x["mode"] == "p2p"),
    }

    # lost: node 1 deletes small (GC); its records stay in the DHT until they expire
    n1.containerd.remove_image(upstream.ref(small))
    lost = _stale_answers(cluster, n2, small)
    # killed: node 1's spegel-py dies; the records of multi (and big) still name it
    cluster.stop_spegel(n1, kill=True)
    killed = _stale_answers(cluster, n2, multi) + _stale_answers(cluster, n2, big)
    for name, answers in (("lost", lost), ("killed", killed)):
        bad = [x for x in answers if x["status"] != 404]
        if bad:
            raise RuntimeError(f"{name}: expected 404 for every key, got {bad}")
        ms = sorted(x["ms"] for x in answers)
        result[f"stale_{name}"] = {
            "keys": len(ms),
            "first_ms": answers[0]["ms"],
            "median_ms": statistics.median(ms),
            "max_ms": ms[-1],
            "answers": answers,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("pull_bench: needs root (containerd)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pull-bench-", dir=REPO / ".work"))
    group = ProcessGroup()
    started = runner.machine()  # before the run, so loadavg_start is the idle machine's
    try:
        result = {"machine": started, **run(a, workdir, group)}
    finally:
        group.stop_all()
        cleanup_mounts(workdir)
    runner.write_result(a.out, result)
    print(
        f"\nbig image ({result['image']['bytes'] / (1 << 20):.0f} MiB): p2p median "
        f"{result['p2p_median_s']:.2f} s, direct from upstream {result['direct_median_s']:.2f} s, "
        f"ratio {result['ratio_p2p_vs_direct']:.2f}; upstream requests during p2p pulls: "
        f"{result['p2p_upstream_requests']}"
    )
    for name in ("lost", "killed"):
        s = result[f"stale_{name}"]
        print(
            f"stale ({name}): {s['keys']} keys, first 404 in {s['first_ms']:.1f} ms, median "
            f"{s['median_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
        )
    print(f"written to {a.out}")
    if not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

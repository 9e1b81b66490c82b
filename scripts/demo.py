#!/usr/bin/env python3
"""``make demo``: three nodes pull images from each other through spegel-py, upstream stopped.

Story: an upstream registry (Debian's docker-registry) holds three test images; three nodes
(127.0.0.11, .12, .13) each run containerd and ``spegel-py registry`` (peers found through the
DHT, bootstrapped to node 1), and each node's ``certs.d`` is written by ``spegel-py
configuration`` (its own spegel-py first, then the upstream). Node 1 pulls every image from the
upstream; once nodes 2 and 3 can find node 1's content through their own spegel-py, the upstream
is stopped and nodes 2 and 3 pull every image. The demo prints where the bytes came from (each
node's ``spegel_served_bytes_total`` by source: ``local``, from its own content store, vs
``peer``, relayed from peers), pull times, and the upstream's request count during those pulls
(from its own access log).

Every process it starts is stopped by pid on exit, on failure and on Ctrl-C. Exit status 0
means every check held. Needs root (containerd). Options: ``--no-big`` skips the 330 MiB image,
``--keep`` keeps the working directory (logs) even on success.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the harness package lives with the tests

from harness import (  # noqa: E402  (needs the path above)
    BuiltImage,
    HarnessError,
    ImageSet,
    ProcessGroup,
    UpstreamRegistry,
    cleanup_mounts,
    spegel_binary,
)
from harness.cluster import Cluster, ClusterNode, image_complete  # noqa: E402
from support.poll import ConditionTimeout  # noqa: E402  (the harness's waits raise it)

BOLD, DIM, GREEN, RED, RESET = (
    ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5
)


def say(step: str, text: str) -> None:
    print(f"{BOLD}[{step}]{RESET} {text}", flush=True)


def detail(text: str) -> None:
    print(f"      {DIM}{text}{RESET}", flush=True)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def preflight() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (containerd needs it)")
    for binary in ("containerd", "ctr", "docker-registry", "skopeo", "curl"):
        if shutil.which(binary) is None:
            problems.append(f"{binary} is missing (make deps)")
    if not spegel_binary().exists():
        problems.append(f"{spegel_binary()} is missing (make venv)")
    if problems:
        raise HarnessError("cannot run the demo: " + "; ".join(problems))


def run(workdir: Path, group: ProcessGroup, *, with_big: bool) -> bool:
    kinds = ["small", "multi", *(["big"] if with_big else [])]

    say("1/7", "test images (deterministic OCI layouts, cached under .work/cache/images)")
    images = ImageSet()
    built: dict[str, BuiltImage] = {}
    for kind in kinds:
        start = time.monotonic()
        built[kind] = images.get(kind)
        image = built[kind]
        detail(
            f"{kind:5}  {human(image.total_size):>10}  {len(image.blobs):2} blobs  "
            f"platforms {', '.join(image.platforms)}  ({time.monotonic() - start:.1f}s)"
        )

    say("2/7", "upstream registry (docker-registry)")
    upstream = UpstreamRegistry(workdir / "upstream", group)
    upstream.start()
    for kind in kinds:
        upstream.push(built[kind])
    detail(
        f"{upstream.url}  pid {group.get(upstream.name).pid}  holds "
        + ", ".join(upstream.ref(built[k]).split("/", 1)[1] for k in kinds)
    )

    say("3/7", "three nodes: containerd, `spegel-py configuration`, `spegel-py registry` (DHT)")
    cluster = Cluster(workdir, group, upstream)
    cluster.start()
    for node in cluster.nodes:
        detail(
            f"{node.name} {node.ip}: containerd pid {node.containerd.pid}, spegel-py pid {node.spegel.pid} "
            f"{node.spegel.url}, certs.d -> {node.spegel.url} then {upstream.url}"
        )
    detail(f"DHT bootstrap: every node -> /ip4/{cluster.node(1).ip}/tcp/{cluster.router_port}")

    times: dict[tuple[int, str], float] = {}
    say("4/7", "node 1: containerd pulls every image from the upstream")
    n1 = cluster.node(1)
    for kind in kinds:
        result = n1.pull(upstream.ref(built[kind]), all_platforms=kind == "multi", timeout=600)
        times[(1, kind)] = result.seconds
        detail(f"{kind:5}  {human(built[kind].total_size):>10} in {result.seconds:5.2f}s from the upstream")

    say("5/7", "nodes 2 and 3 find node 1's content through their own spegel-py (DHT lookup + mirror)")
    others = cluster.nodes[1:]
    seconds = cluster.wait_findable([built[k] for k in kinds], by=others, timeout=120)
    keys = sum(len(cluster.keys(built[k])) for k in kinds)
    detail(f"all {keys} manifests and blobs answer 200 on nodes 2 and 3 after {seconds:.1f}s")

    say("6/7", "the upstream registry is STOPPED")
    mark = upstream.mark()
    stopped_pid = group.get(upstream.name).pid
    upstream.stop()
    detail(f"pid {stopped_pid} stopped; {upstream.url}/v2/ refuses connections")

    say("7/7", "nodes 2 and 3 pull every image (multi: all platforms) through their own spegel-py")
    before = {node.index: node.served_bytes() for node in cluster.nodes}
    ok = True
    for node in others:
        for kind in kinds:
            image, ref = built[kind], upstream.ref(built[kind])
            result = node.pull(ref, all_platforms=kind == "multi", timeout=600)
            times[(node.index, kind)] = result.seconds
            problems = image_complete(node, ref, image)
            ok &= not problems
            rate = image.total_size / result.seconds / (1 << 20)
            status = f"{GREEN}ok{RESET}" if not problems else f"{RED}FAILED: {'; '.join(problems)}{RESET}"
            detail(
                f"{node.name} {kind:5}  {human(image.total_size):>10} in {result.seconds:5.2f}s "
                f"({rate:6.1f} MiB/s)  all {len(image.blobs)} blobs present  {status}"
            )
    detail("(a pull's time includes containerd writing, verifying and unpacking what it receives)")
    upstream_requests = upstream.requests(mark)
    after = {node.index: node.served_bytes() for node in cluster.nodes}
    print()
    say("result", "where the bytes came from while the upstream was stopped (spegel-py /metrics)")
    print_table(cluster.nodes, kinds, before, after, times)
    print()
    detail(f"upstream requests during the pulls of nodes 2 and 3: {len(upstream_requests)} (its access log)")
    ok &= not upstream_requests
    wanted = sum(built[k].total_size for k in kinds)
    served = sum(after[n.index].get("local", 0) - before[n.index].get("local", 0) for n in cluster.nodes)
    if served >= wanted * len(others):
        detail(f"peers served {human(served)} from their content stores (>= {len(others)} x {human(wanted)})")
    else:
        ok = False
        detail(f"{RED}peers served {human(served)} < {len(others)} x {human(wanted)}{RESET}")
    # spegel_served_bytes_total{source="peer"}: what each node relayed from peers to its containerd
    relayed = [after[n.index].get("peer", 0) - before[n.index].get("peer", 0) for n in others]
    if all(value >= wanted for value in relayed):
        detail(f"nodes 2 and 3 each relayed >= {human(wanted)} from peers to their containerd")
    else:
        ok = False
        detail(f"{RED}relayed bytes {[human(v) for v in relayed]} < {human(wanted)} per node{RESET}")
    return ok


def print_table(
    nodes: list[ClusterNode],
    kinds: list[str],
    before: dict[int, dict[str, float]],
    after: dict[int, dict[str, float]],
    times: dict[tuple[int, str], float],
) -> None:
    """Per node: bytes its spegel-py served from its own content store (to peers) and relayed
    from peers (to its containerd) during the upstream-stopped pulls, and its pull times."""
    header = f"{'node':6} {'address':11} {'served locally':>15} {'relayed from peers':>19}"
    header += "".join(f" {kind + ' pull':>11}" for kind in kinds)
    print(f"      {BOLD}{header}{RESET}")
    for node in nodes:
        local = after[node.index].get("local", 0) - before[node.index].get("local", 0)
        peer = after[node.index].get("peer", 0) - before[node.index].get("peer", 0)
        row = f"{node.name:6} {node.ip:11} {human(local):>15} {human(peer):>19}"
        for kind in kinds:
            seconds = times.get((node.index, kind))
            row += f" {f'{seconds:.2f}s' if seconds is not None else '-':>11}"
        print(f"      {row}")
    detail("node 1's pull times are from the upstream (before it stopped); nodes 2 and 3 pulled from peers")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-big", action="store_true", help="skip the 330 MiB image")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs) on success")
    args = parser.parse_args()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds into the cleanup below

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    print(
        f"{BOLD}spegel-py demo{RESET}: three nodes pull from each other through spegel-py, upstream stopped\n"
    )
    workdir = Path(tempfile.mkdtemp(prefix="spegel-py-demo-"))
    group = ProcessGroup()
    ok = False
    try:
        preflight()
        ok = run(workdir, group, with_big=not args.no_big)
    except KeyboardInterrupt:
        print(f"\n{RED}interrupted{RESET}")
    except (HarnessError, ConditionTimeout, TimeoutError) as exc:
        print(f"\n{RED}demo failed:{RESET} {exc}")
        # spegel-py's and the upstream's logs tell the story; containerd's boot log would bury them
        print("\n".join(group.get(n).tail(15) for n in group.pids if not n.startswith("containerd")))
    finally:
        count = len(group.pids)
        group.stop_all()
        cleanup_mounts(workdir)
        print(f"\ncleanup: stopped {count} processes by pid")
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs and state kept in {workdir}")
    print(f"{GREEN}demo passed{RESET}" if ok else f"{RED}demo FAILED{RESET}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

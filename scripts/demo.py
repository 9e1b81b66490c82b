#!/usr/bin/env python3
"""``make demo``: one node's spegel-py serves its containerd content store to another node's
containerd while the upstream registry is stopped.

Story: an upstream registry (Debian's docker-registry) holds three test images; containerd on
node 1 (127.0.0.11) pulls them; node 1's ``spegel-py registry`` starts on node 1's content
store; the upstream is stopped; containerd on node 2 (127.0.0.12), whose ``hosts.toml`` names
node 1's spegel-py as a mirror, pulls every image. The demo prints what moved, how fast, and
that the upstream received no request during node 2's pulls (from its own access log).

Every process it starts is stopped by pid on exit, on failure and on Ctrl-C. Exit status 0
means every check held. Needs root (containerd). Options: ``--no-big`` skips the 330 MiB image,
``--keep`` keeps the working directory (logs) even on success.
"""

from __future__ import annotations

import argparse
import os
import re
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
    ContainerdNode,
    HarnessError,
    ImageSet,
    ProcessGroup,
    SpegelRegistry,
    UpstreamRegistry,
    cleanup_mounts,
    spegel_binary,
)

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


def served_bytes(spegel: SpegelRegistry) -> float | None:
    """``spegel_served_bytes_total`` summed over sources, from spegel-py's /metrics (None if absent)."""
    import urllib.request

    try:
        with urllib.request.urlopen(spegel.metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = [
        float(m[1]) for m in re.finditer(r"^spegel_served_bytes_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    ]
    return sum(values) if values or "# TYPE spegel_served_bytes_total counter" in text else None


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

    say("1/6", "test images (deterministic OCI layouts, cached under .work/cache/images)")
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

    say("2/6", "upstream registry (docker-registry)")
    upstream = UpstreamRegistry(workdir / "upstream", group)
    upstream.start()
    for kind in kinds:
        upstream.push(built[kind])
    detail(
        f"{upstream.url}  pid {group.get(upstream.name).pid}  holds "
        + ", ".join(upstream.ref(built[k]).split("/", 1)[1] for k in kinds)
    )

    say("3/6", "node 1: containerd pulls from the upstream")
    node1 = ContainerdNode(1, workdir / "node1", group)
    node1.start()
    detail(f"containerd pid {node1.pid}, root {node1.root}")
    for kind in kinds:
        result = node1.pull(upstream.ref(built[kind]), all_platforms=kind == "multi")
        detail(f"{kind:5}  {human(built[kind].total_size):>10} in {result.seconds:5.2f}s from the upstream")

    say("4/6", "node 1: spegel-py registry serves node 1's containerd content store")
    spegel = SpegelRegistry(workdir, group, node=node1, log_level="INFO")
    spegel.start()
    detail(f"{spegel.url}  pid {spegel.pid}  content {node1.content_path}")

    say("5/6", "the upstream registry is STOPPED")
    mark = upstream.mark()
    stopped_pid = group.get(upstream.name).pid
    upstream.stop()
    detail(f"pid {stopped_pid} stopped; {upstream.url}/v2/ refuses connections")

    say("6/6", "node 2: containerd pulls every image, hosts.toml -> node 1's spegel-py")
    node2 = ContainerdNode(2, workdir / "node2", group)
    node2.start()
    hosts = node2.write_hosts_toml(upstream.addr, upstream.url, [spegel.url], ["pull", "resolve"])
    detail(
        f"containerd pid {node2.pid}; {hosts.relative_to(workdir)}: mirror {spegel.url}, then {upstream.url}"
    )
    before = served_bytes(spegel)
    ok = True
    total_bytes, total_seconds = 0, 0.0
    for kind in kinds:
        image, ref = built[kind], upstream.ref(built[kind])
        result = node2.pull(ref, hosts_dir=node2.certs_d, all_platforms=kind == "multi", timeout=600)
        got = node2.images().get(ref)
        missing = [d for d in image.blobs if not node2.has_blob(d)]
        good = got == image.digest and not missing
        ok &= good
        total_bytes += image.total_size
        total_seconds += result.seconds
        rate = image.total_size / result.seconds / (1 << 20)
        mark_text = (
            f"{GREEN}ok{RESET}" if good else f"{RED}FAILED (digest {got}, missing {len(missing)}){RESET}"
        )
        detail(
            f"{kind:5}  {human(image.total_size):>10} in {result.seconds:5.2f}s  ({rate:6.1f} MiB/s)  "
            f"{image.digest[:19]}  all {len(image.blobs)} blobs present  {mark_text}"
        )

    detail("(a pull's time includes containerd writing, verifying and unpacking what it receives)")
    upstream_requests = upstream.requests(mark)
    after = served_bytes(spegel)
    print()
    say(
        "result",
        f"node 2 pulled {len(kinds)} images, {human(total_bytes)} in {total_seconds:.1f}s, "
        f"from node 1's spegel-py",
    )
    if before is not None and after is not None:
        detail(
            f"spegel-py's /metrics: {human(after - before)} of manifests and blobs served during the pulls"
        )
    detail(f"upstream requests during node 2's pulls: {len(upstream_requests)} (its access log)")
    ok &= not upstream_requests
    return ok


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
        f"{BOLD}spegel-py demo{RESET}: a node pulls images from another node's spegel-py, upstream stopped\n"
    )
    workdir = Path(tempfile.mkdtemp(prefix="spegel-py-demo-"))
    group = ProcessGroup()
    ok = False
    try:
        preflight()
        ok = run(workdir, group, with_big=not args.no_big)
    except KeyboardInterrupt:
        print(f"\n{RED}interrupted{RESET}")
    except (HarnessError, TimeoutError) as exc:
        print(f"\n{RED}demo failed:{RESET} {exc}")
        print(group.tails(15))
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

"""Rollout benchmark (issue 12 item 4): N nodes pull a new image at once, three ways in one run.

    # as root, from the repository root, PYTHONPATH=$PWD
    .venv/bin/python -m bench.rollout --sizes 4,8 --scenarios all,batches,kill

Ways, each on fresh nodes, interleaved per scenario (the order rotates every round):
  * ``none``: no mirror; containerd pulls straight from the upstream;
  * ``off``: spegel-py with ``--serve-in-progress=false --coordinate-pulls=false
    --multi-peer-fetch=false`` (Spegel's behaviour), or those of the three this checkout has (the
    JSON records the arguments used); on a checkout with none it is left out (naming it in
    ``--ways`` makes that an error);
  * ``shipped``: spegel-py with its defaults.

The image is the harness's deterministic "big" image (three gzip-level-0 layers of
``--layer-mib`` MiB, a config and a manifest), built locally into an OCI layout and pushed with
skopeo into the upstream (tests/harness/images.py). Output: a markdown table on stdout and every
number in JSON (``--out``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the harness lives with the tests

from harness import ImageSet, ProcessGroup  # noqa: E402

from bench.lib import runner  # noqa: E402
from bench.rollout.lab import Lab, Shape  # noqa: E402
from bench.rollout.report import table  # noqa: E402
from bench.rollout.rollout import SCENARIOS, Plan, run_dir, run_rollout, swarm_flags  # noqa: E402

WAY_NAMES = ("none", "off", "shipped")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,8", help="node counts, comma-separated")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"from {', '.join(SCENARIOS)}")
    ap.add_argument("--ways", default="", help="from none, off, shipped (default: all the checkout has)")
    ap.add_argument("--rounds", type=int, default=1, help="repeats of every (size, scenario, way)")
    ap.add_argument("--image", default="big", choices=("big", "small"), help="small: the smoke test's")
    ap.add_argument("--layer-mib", type=int, default=110, help="MiB per layer of the big image")
    ap.add_argument("--upstream-rate", default="500mbit", help="the upstream's link (tc rate)")
    ap.add_argument("--node-rate", default="1gbit", help="each node's link, each way (tc rate)")
    ap.add_argument("--batch-gap", type=float, default=2.0, help="seconds between batches")
    ap.add_argument("--kill-at", type=float, default=0.3, help="kill: share of the largest blob")
    ap.add_argument("--subnet", default="10.233.0", help="first three octets of the private subnet")
    ap.add_argument("--out", default=str(REPO / ".work" / "bench" / "rollout.json"))
    ap.add_argument("--keep", action="store_true", help="keep every rollout's logs (failed ones are kept)")
    return ap.parse_args(argv)


def choose_ways(requested: str) -> dict[str, list[str] | None]:
    """Way -> spegel-py's extra arguments (None: no spegel-py at all)."""
    flags = swarm_flags()
    table: dict[str, list[str] | None] = {
        "none": None, "off": [f"--{f}=false" for f in flags], "shipped": []
    }
    names = [w for w in requested.split(",") if w] or [w for w in WAY_NAMES if flags or w != "off"]
    unknown = [w for w in names if w not in table]
    if unknown:
        raise SystemExit(f"unknown ways {unknown} (known: {', '.join(WAY_NAMES)})")
    if "off" in names and not flags:
        raise SystemExit("way 'off' needs the swarm flags (--serve-in-progress, ...): this checkout has none")
    return {w: table[w] for w in names}


def run(a: argparse.Namespace, workdir: Path, group: ProcessGroup) -> dict[str, Any]:
    sizes = [int(s) for s in a.sizes.split(",")]
    scenarios = a.scenarios.split(",")
    chosen = choose_ways(a.ways)
    ways = list(chosen)
    images = ImageSet(big_layer_mib=a.layer_mib)
    image = images.get(a.image)
    lab = Lab(workdir, group, Shape(a.upstream_rate, a.node_rate), max(sizes), subnet=a.subnet)
    runs: list[dict[str, Any]] = []
    try:
        lab.start()
        lab.upstream.push(image)
        for size in sizes:
            for scenario in scenarios:
                plan = Plan(scenario, batch_gap=a.batch_gap, kill_at=a.kill_at)
                for rnd in range(1, a.rounds + 1):
                    shift = (rnd - 1) % len(ways)
                    for way in ways[shift:] + ways[:shift]:
                        where = run_dir(workdir, size, scenario, way, rnd)
                        nodes = lab.nodes(where, size, spegel_args=chosen[way])
                        try:
                            result = run_rollout(lab, nodes, image, plan)
                        finally:
                            lab.drop(nodes)
                        if result["all_ok"] and not a.keep:
                            shutil.rmtree(where, ignore_errors=True)
                        else:  # the logs of a failed rollout survive the run
                            result["logs"] = str(where)
                        runs.append({"way": way, "round": rnd, **result})
                        print(
                            f"N={size} {scenario:<8} {way:<8} last node {result['last_done_s']} s, "
                            f"upstream {result['upstream_copies']:.2f} copies, all ok: {result['all_ok']}",
                            flush=True,
                        )
                        for p in result["per_node"]:
                            if p["error"]:
                                print(f"  {p['node']}: {p['error']}", flush=True)
                        if "logs" in result and not result["all_ok"]:
                            print(f"  logs: {result['logs']}", flush=True)
    finally:
        lab.stop()
    return {
        "image": {"kind": image.kind, "bytes": image.total_size, "blobs": len(image.blobs)},
        "shape": {"upstream_rate": a.upstream_rate, "node_rate": a.node_rate},
        "ways": {w: args or [] for w, args in chosen.items()},
        "runs": runs,
        "table": table(runs),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("rollout: needs root (network namespaces, containerd)", file=sys.stderr)
        return 2
    (REPO / ".work").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rollout-", dir=REPO / ".work"))
    group = ProcessGroup()
    started = runner.machine()
    try:
        argv_used = sys.argv[1:] if argv is None else argv
        result = {"machine": started, "argv": argv_used, **run(a, workdir, group)}
    except BaseException:
        print(f"rollout: logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        group.stop_all()
    if not a.keep and not any("logs" in r for r in result["runs"]):
        shutil.rmtree(workdir, ignore_errors=True)
    result["pids"] = list(group.started_pids)  # all stopped by now: the smoke test checks
    runner.write_result(a.out, result)
    print("\n" + result["table"])
    print(f"\nimage {result['image']['bytes'] / (1 << 20):.0f} MiB in {result['image']['blobs']} blobs; "
          f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

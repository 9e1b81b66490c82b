"""One measured rollout: N fresh nodes pull the image through the CRI (as the kubelet does) on a
schedule, optionally losing the node that is fetching from upstream mid-pull; what it cost.

Schedules (``scenario``):
  * ``all``: every node starts at the same moment (a DaemonSet rollout, a node pool replaced);
  * ``batches``: a quarter of the nodes (at least one) every ``batch_gap`` seconds;
  * ``kill``: as ``all``, and once the upstream has sent one node ``kill_at`` of the image's
    largest blob's size, that node (its containerd and spegel-py) is SIGKILLed: the node fetching
    from upstream dies mid-pull; the others must still finish.

The sleeps in the schedule are the scenario itself, not synchronisation. Time until the last
node has the image is measured from the first pull's start to the last surviving pull's end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BuiltImage, spegel_binary
from harness.cri import pull as cri_pull
from harness.procs import HarnessError, run_command

from bench.rollout.lab import Lab, Node, tx_bytes

SCENARIOS = ("all", "batches", "kill")
# metrics worth keeping per node (prefixes): what each node served and how the swarm behaved
METRIC_PREFIXES = (
    "spegel_served_bytes_total",
    "spegel_relayed_bytes_total",
    "spegel_mirror_resumed_streams_total",
    "spegel_mirror_integrity_failures_total",
    "spegel_in_progress_",
    "spegel_pull_coordination_total",
    "spegel_multi_peer_",
)


@dataclass(frozen=True)
class Plan:
    scenario: str
    batch_gap: float = 2.0
    # the victim: the first node to have received this share of the image's largest blob from
    # upstream (with coordination each blob may have a fetcher of its own)
    kill_at: float = 0.3
    pull_timeout: float = 900.0

    def delays(self, size: int) -> list[float]:
        if self.scenario != "batches":
            return [0.0] * size
        per_batch = max(1, size // 4)
        return [self.batch_gap * (i // per_batch) for i in range(size)]


@dataclass
class PullRecord:
    node: str
    start: float = 0.0
    end: float = 0.0
    error: str = ""


def upstream_bytes_by_client(lab: Lab) -> dict[str, int]:
    """Bytes the upstream is sending right now, per client address, from its sockets
    (``ss -ti``: ``bytes_acked`` of every connection on the registry port)."""
    assert lab.upstream.netns is not None
    out = lab.upstream.netns.run(["ss", "-tniH", "state", "established"], timeout=10).stdout
    sent: Counter[str] = Counter()
    peer = ""
    for line in out.splitlines():
        fields = line.split()
        if not line.startswith((" ", "\t")) and len(fields) >= 4:
            local, remote = fields[-2], fields[-1]
            peer = remote.rpartition(":")[0] if local.endswith(f":{lab.upstream.port}") else ""
            continue
        for item in fields:
            if peer and item.startswith("bytes_acked:"):
                sent[peer] += int(item.split(":")[1])
    return dict(sent)


def _killer(lab: Lab, nodes: list[Node], threshold: int, stop: threading.Event, log: dict[str, Any]) -> None:
    by_ip = {n.netns.ip: n for n in nodes}
    while not stop.wait(0.1):
        sent = upstream_bytes_by_client(lab)
        ip, got = max(sent.items(), key=lambda kv: kv[1], default=("", 0))
        if got >= threshold and ip in by_ip:
            victim = by_ip[ip]
            log.update(node=victim.name, upstream_bytes_at_kill=got, at=time.monotonic())
            lab.kill(victim)
            return


def run_rollout(lab: Lab, nodes: list[Node], image: BuiltImage, plan: Plan) -> dict[str, Any]:
    """Pull ``image`` on every node per ``plan``; return times and byte counts."""
    ref = lab.upstream.ref(image)
    mark = lab.upstream.mark()
    devs = {n.name: n.netns.host_veth for n in nodes}
    before = {name: tx_bytes(dev) for name, dev in devs.items()}
    up_before = tx_bytes(lab.upstream_dev)
    records = [PullRecord(n.name) for n in nodes]
    t0 = time.monotonic()

    def pull(node: Node, record: PullRecord, delay: float) -> None:
        time.sleep(delay)  # the schedule, not synchronisation
        record.start = time.monotonic()
        try:
            cri_pull(node.containerd.socket, ref, timeout=plan.pull_timeout)
        except (HarnessError, OSError, RuntimeError) as exc:
            record.error = f"{type(exc).__name__}: {str(exc)[-400:]}"
        record.end = time.monotonic()

    stop, kill_log = threading.Event(), {}
    killer = None
    if plan.scenario == "kill":
        threshold = int(plan.kill_at * max(image.blobs.values()))
        killer = threading.Thread(target=_killer, args=(lab, nodes, threshold, stop, kill_log), name="killer")
        killer.start()
    threads = [
        threading.Thread(target=pull, args=(n, r, d), name=f"pull-{n.name}")
        for n, r, d in zip(nodes, records, plan.delays(len(nodes)), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    if killer is not None:
        killer.join()
    metrics = {n.name: _kept(n.metrics()) for n in nodes}
    lab.upstream.stop()  # its access log is complete once it has exited
    lab.upstream.start()
    # manifests and blobs: the image's bytes (the /v2/ pings carry 2 bytes each)
    requests = [r for r in lab.upstream.requests(mark) if r.method == "GET" and _image_path(r.path)]
    ip_name = {n.netns.ip: n.name for n in nodes}
    upstream_by_node: Counter[str] = Counter()
    for r in requests:
        upstream_by_node[ip_name.get(r.client, r.client)] += r.size
    victim = kill_log.get("node", "")
    per_node = []
    for n, r in zip(nodes, records, strict=True):
        missing = [] if n.killed else [d for d in image.blobs if not n.containerd.has_blob(d)]
        ok = not r.error and not missing and not n.killed
        per_node.append({
            "node": n.name,
            "start_s": round(r.start - t0, 3),
            "seconds": round(r.end - r.start, 3),
            "ok": ok,
            "killed": n.killed,
            "error": r.error or (f"{len(missing)} blobs missing" if missing else ""),
            "sent_bytes": tx_bytes(devs[n.name]) - before[n.name],
            "from_upstream_bytes": upstream_by_node.get(n.name, 0),
            "metrics": metrics[n.name],
        })  # fmt: skip
    survivors = [p for p, n in zip(per_node, nodes, strict=True) if not n.killed]
    ends = [r.end for r, n in zip(records, nodes, strict=True) if not n.killed]
    result: dict[str, Any] = {
        "scenario": plan.scenario,
        "nodes": len(nodes),
        "all_ok": all(p["ok"] for p in survivors),
        "last_done_s": round(max(ends) - min(r.start for r in records), 3) if ends else None,
        "upstream_bytes": sum(r.size for r in requests),
        "upstream_requests": len(requests),
        "upstream_wire_bytes": tx_bytes(lab.upstream_dev) - up_before,
        "per_node": per_node,
    }
    result["upstream_copies"] = round(result["upstream_bytes"] / image.total_size, 3)
    if plan.scenario == "kill":
        result["killed"] = victim or None
        result["killed_after_s"] = round(kill_log["at"] - t0, 3) if victim else None
        result["upstream_bytes_at_kill"] = kill_log.get("upstream_bytes_at_kill")
    return result


def _image_path(path: str) -> bool:
    return "/blobs/" in path or "/manifests/" in path


def _kept(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(METRIC_PREFIXES)}


SWARM_FLAGS = ("serve-in-progress", "coordinate-pulls", "multi-peer-fetch")


def swarm_flags() -> list[str]:
    """The swarm flags (issue 12) this checkout's ``spegel-py registry`` has: they land one
    branch at a time, and "off" turns off whichever exist."""
    out = run_command([str(spegel_binary()), "registry", "--help"], timeout=60).stdout
    return [f for f in SWARM_FLAGS if f"--{f}" in out]


def run_dir(base: Path, *parts: object) -> Path:
    path = base.joinpath("-".join(str(p) for p in parts))
    path.mkdir(parents=True)
    return path

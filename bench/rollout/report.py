"""The rollout table: per (size, scenario), one row per way, ratios against "no mirror"."""

from __future__ import annotations

from typing import Any

MIB = 1 << 20


def _ratio(value: float | None, anchor: float | None) -> str:
    if value is None or not anchor:
        return "-"
    return f"{value / anchor:.2f}x"


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: last node done, its ratio vs no mirror, upstream copies and ratio, per-node
    pull times, MiB each node sent (peers' uploads), pulls that failed."""
    head = (
        "| N | scenario | way | last node done (s) | vs no mirror | upstream copies | vs no mirror "
        "| per-node pull s (sorted) | MiB sent per node | failed |"
    )
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    anchors: dict[tuple[int, str, int], dict[str, Any]] = {}
    for run in runs:
        if run["way"] == "none":
            anchors[(run["nodes"], run["scenario"], run.get("round", 1))] = run
    for run in runs:
        anchor = anchors.get((run["nodes"], run["scenario"], run.get("round", 1)), {})
        times = sorted(p["seconds"] for p in run["per_node"] if not p["killed"])
        sent = [round(p["sent_bytes"] / MIB) for p in run["per_node"]]
        failed = [p["node"] + (" (killed)" if p["killed"] else "") for p in run["per_node"] if not p["ok"]]
        broken = sum(1 for p in run["per_node"] if not p["ok"] and not p["killed"])
        # a failed pull never has the image: the rollout did not finish, whatever the clock says
        done = f"{run['last_done_s']}" + (f" ({broken} failed)" if broken else "")
        rows.append(
            f"| {run['nodes']} | {run['scenario']} | {run['way']} | {done} "
            f"| {_ratio(run['last_done_s'], anchor.get('last_done_s'))} | {run['upstream_copies']:.2f} "
            f"| {_ratio(run['upstream_copies'], anchor.get('upstream_copies'))} "
            f"| {', '.join(f'{t:.1f}' for t in times)} | {', '.join(map(str, sent))} "
            f"| {', '.join(failed) or '-'} |"
        )
    return "\n".join(rows)

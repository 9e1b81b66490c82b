"""The chart's Grafana dashboard as data: its PromQL expressions and the metrics they name.

Shared by tests/observability/test_dashboard_live.py (every expression against a real
Prometheus) and tests/observability/test_dashboard_metrics.py (every metric named is one the
product exports), which may not import from each other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "spegel-py" / "dashboards" / "spegel-py.json"

# Metrics that only a kubelet (cAdvisor) exports: nothing here can produce them.
KUBELET_ONLY = ("container_memory_working_set_bytes", "container_memory_cache", "container_memory_rss")

_SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")  # every metric in the dashboard has a selector


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included, in order."""
    out = []
    stack = list(dashboard()["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        out.append(panel)
    return out


def panel_exprs() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every target, rows included."""
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in panels() for t in p.get("targets", [])]


def kubelet_only(expr: str) -> bool:
    return any(re.search(rf"\b{name}\b", expr) for name in KUBELET_ONLY)


def series_names(expr: str) -> set[str]:
    """The series an expression selects (``spegel_x_total`` in ``rate(spegel_x_total{...}[5m])``)."""
    return set(_SERIES.findall(expr))

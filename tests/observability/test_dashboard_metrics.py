"""Every metric the chart's Grafana dashboard plots is one a fresh spegel-py exports.

A renamed or never-registered metric leaves a panel silently empty; the live test
(test_dashboard_live.py) catches that only where Prometheus and a cluster run. This one needs a
single ``spegel-py registry`` process: its /metrics ``# TYPE`` lines name every family the
product defines (labelled families included, before any sample). It also pins the swarm-pulls
row (issue 12): one panel per swarm metric, each labelled family split by its outcomes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.daemon import Daemon, free_port, get, kill, make_layout, start_node, stop, wait_ready
from support.dashboard import kubelet_only, panel_exprs, panels, series_names

SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")
SWARM_ROW = "Swarm pulls (nodes pulling a new image together)"
SWARM_METRICS = {  # issue 12's metrics -> the label their panel splits by ("" for none)
    "spegel_in_progress_serves_total": "outcome",
    "spegel_in_progress_served_bytes_total": "pod",
    "spegel_in_progress_advertised": "pod",
    "spegel_pull_coordination_total": "outcome",
    "spegel_multi_peer_fetches_total": "outcome",
    "spegel_multi_peer_ranges_total": "outcome",
}


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The metric families (``# TYPE`` names) of a fresh node with the default flags."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    make_layout(tmp_path / "layouts", 1 << 10)
    host = "127.0.0.34"
    ports = (free_port(host), free_port(host), free_port(host))
    daemon: Daemon
    daemon, _ = start_node(tmp_path / "layouts", tmp_path / "data", host, ports)
    try:
        wait_ready(daemon)
        status, body = get(daemon.metrics + "/metrics")
        assert status == 200
        yield {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")}
        assert stop(daemon) == 0
    finally:
        kill(daemon)


def family(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


@pytest.mark.process
@pytest.mark.parametrize(("where", "expr"), panel_exprs(), ids=[w for w, _ in panel_exprs()])
def test_every_plotted_metric_is_exported(families: set[str], where: str, expr: str) -> None:
    if kubelet_only(expr):
        pytest.skip("cAdvisor's metric: only a kubelet exports it")
    names = series_names(expr)
    assert names, f"{where}: no metric found in {expr}"
    missing = {n for n in names if n not in families and family(n) not in families}
    assert not missing, f"{where}: plots {sorted(missing)}, which spegel-py does not export"


def test_the_swarm_row_plots_every_swarm_metric() -> None:
    board = panels()
    row = next(i for i, p in enumerate(board) if p["type"] == "row" and p["title"] == SWARM_ROW)
    following = board[row + 1 :]
    end = next((i for i, p in enumerate(following) if p["type"] == "row"), len(following))
    exprs = [t["expr"] for p in following[:end] for t in p["targets"]]
    for name, label in SWARM_METRICS.items():
        (expr,) = [e for e in exprs if name in series_names(e)]
        assert f"by ({label})" in expr, expr
        if name.endswith("_total"):  # counters are plotted as rates or increases, never raw
            assert "rate(" in expr or "increase(" in expr, expr


def test_series_names_finds_the_selected_metric() -> None:
    """The parser the tests above rely on (a test that can fail on a wrong regex)."""
    expr = 'sum by (le) (rate(spegel_x_bucket{job=~"$job"}[$__rate_interval])) / max(up{a="b"})'
    assert series_names(expr) == {"spegel_x_bucket", "up"}
    assert family("spegel_x_bucket") == "spegel_x" and family("spegel_y") == "spegel_y"


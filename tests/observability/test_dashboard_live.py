"""The Grafana dashboard against a real Prometheus scraping a live local cluster during a P2P pull.

Two nodes (containerd + ``spegel-py registry`` with the DHT, ``tests/harness/cluster.py``) and
Debian's Prometheus 2.42 scraping both metrics endpoints every second, with the target labels
a ServiceMonitor would add (``job``, ``namespace``, ``pod``). Node 1 pulls from the upstream,
node 2 pulls the same image through its spegel-py from node 1. Then:

- every PromQL expression of ``helm/spegel-py/dashboards/spegel-py.json``, with its template
  variables filled in, runs through Prometheus's HTTP API and returns data (finite values);
- the template variables' ``label_values`` queries list the scrape's labels;
- expressions over metrics only a kubelet has (cAdvisor's ``container_*``) are listed in
  :data:`KUBELET_ONLY` and checked for syntax with ``promtool check rules``;
- the "Bytes served by source" panel shows both sources, ``local`` (node 1) and ``peer``
  (node 2's relay);
- every metric name of Spegel's is exported and moves during the pull, and
  so do spegel-py's routing metrics (records held, advertise and reprovide durations: the nodes
  reprovide every 2 s here instead of 15 min, so the reprovide panel has data).
"""

from __future__ import annotations

import calendar
import json
import math
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import ImageSet, ProcessGroup, UpstreamRegistry, cleanup_mounts
from harness.cluster import Cluster
from harness.net import free_port
from harness.require import require, require_cluster, require_spegel
from support.dashboard import KUBELET_ONLY, dashboard, kubelet_only, panel_exprs, panels
from support.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROM_HOST = "127.0.0.48"
JOB, NAMESPACE = "spegel-py", "spegel"
# A rate window that spans the whole pull (Grafana's $__rate_interval is >= 4 scrape intervals).
RATE_INTERVAL = "2m"
VARIABLES = {"job": JOB, "namespace": NAMESPACE, "pod": ".*", "__rate_interval": RATE_INTERVAL}

# Spegel's metrics: the series name that must move for each metric users' dashboards query.
SPEGEL_METRICS = {
    "spegel_mirror_requests_total": "spegel_mirror_requests_total",
    "spegel_mirror_last_success_timestamp_seconds": "spegel_mirror_last_success_timestamp_seconds",
    "spegel_resolve_duration_seconds": "spegel_resolve_duration_seconds_count",
    "spegel_advertised_image_tags": "spegel_advertised_image_tags",
    "spegel_advertised_image_digests": "spegel_advertised_image_digests",
    "spegel_advertised_content_digests": "spegel_advertised_content_digests",
    "http_request_duration_seconds": "http_request_duration_seconds_count",
    "http_response_size_bytes": "http_response_size_bytes_sum",
}
# spegel-py's own routing metrics that the dashboard's routing row plots.
ROUTING_METRICS = {
    "spegel_router_provider_records": "spegel_router_provider_records",
    "spegel_advertise_duration_seconds": "spegel_advertise_duration_seconds_count",
    "spegel_reprovide_duration_seconds": "spegel_reprovide_duration_seconds_count",
}
REPROVIDE_INTERVAL = "2s"


# -- the dashboard ---------------------------------------------------------------------------
def substitute(expr: str) -> str:
    """Grafana's template variables, longest name first ($__rate_interval before $pod)."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", VARIABLES[name]).replace(f"${name}", VARIABLES[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


# -- Prometheus --------------------------------------------------------------------------------
@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def scraped_after(self, moment: float) -> bool:
        """Every target is up and its last scrape started after ``moment`` (wall clock)."""
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(
            t["health"] == "up" and _rfc3339(t["lastScrape"]) > moment for t in targets
        )


def _rfc3339(stamp: str) -> float:
    # Prometheus writes nanoseconds; strptime takes microseconds
    head, _, frac = stamp.rstrip("Z").partition(".")
    frac = re.sub(r"[+-]\d\d:\d\d$", "", frac)
    base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))  # UTC
    return base + float(f"0.{frac or 0}")


def start_prometheus(processes: ProcessGroup, workdir: Path, cluster: Cluster) -> Prometheus:
    binary = require("prometheus")
    port = free_port(PROM_HOST)
    targets = "\n".join(
        f"      - targets: ['{node.ip}:{cluster.metrics_port}']\n"
        f"        labels: {{namespace: {NAMESPACE}, pod: spegel-py-{node.name}}}"
        for node in cluster.nodes
    )
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n{targets}\n"
    )
    processes.start(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={PROM_HOST}:{port}",
            "--log.level=warn",
        ],
        log_path=workdir / "prometheus.log",
    )
    prom = Prometheus(f"http://{PROM_HOST}:{port}")
    wait_until(lambda: _ready(prom.url), within=30, what="prometheus ready")
    return prom


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


# -- metrics of the nodes ----------------------------------------------------------------------
def totals(cluster: Cluster) -> dict[str, float]:
    """Every series summed by metric name over the cluster's nodes."""
    out: dict[str, float] = {}
    for node in cluster.nodes:
        for key, value in node.metrics().items():
            name = key.partition("{")[0]
            out[name] = out.get(name, 0.0) + value
    return out


def hold_blob_open(ip: str, port: int, path: str, ns: str) -> socket.socket:
    """A GET whose reader stops after the headers (tiny receive buffer): the request stays in
    flight on the server until the socket closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((ip, port))
    sock.sendall(f"GET {path}?ns={ns} HTTP/1.1\r\nHost: {ip}:{port}\r\n\r\n".encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 200"), "the blob is served"
    return sock


# -- fixtures ----------------------------------------------------------------------------------
@dataclass
class Run:
    cluster: Cluster
    prometheus: Prometheus
    before: dict[str, float]
    after: dict[str, float]
    inflight: float
    done: float
    relayed_at_least: int  # bytes of the image node 2 pulled through its relay (its root aside)


@pytest.fixture(scope="module")
def run(_upstream_session: UpstreamRegistry, test_images: ImageSet) -> Iterator[Run]:
    """Cluster + Prometheus; node 1 pulls from upstream, node 2 from node 1 (upstream stopped)."""
    require_cluster()
    require_spegel()
    require("promtool")
    upstream = _upstream_session  # the session's, holding test/small:v1
    if not upstream.running():
        upstream.start()
    processes = ProcessGroup()
    workdir = Path(tempfile.mkdtemp(prefix="obs-"))  # short: containerd's socket path limit
    try:
        cluster = Cluster(workdir, processes, upstream, size=2,
                          extra_args=["--reprovide-interval", REPROVIDE_INTERVAL])  # fmt: skip
        cluster.start()
        prometheus = start_prometheus(processes, workdir, cluster)
        wait_until(lambda: prometheus.scraped_after(time.time() - 1), within=30, what="both targets scraped")
        n1, n2 = cluster.nodes
        before = totals(cluster)

        small = test_images.small
        n1.pull(upstream.ref(small))
        cluster.wait_findable([small], by=[n2])
        # node 2's lookups above created its mirror and HTTP series; a scrape now gives rate()
        # a first sample, so the pull below shows up as an increase (rate ignores new series)
        findable = time.time()
        wait_until(lambda: prometheus.scraped_after(findable), within=30, what="a scrape before the pull")
        upstream.stop()  # every byte node 2 gets comes through the mirror
        n2.pull(upstream.ref(small))
        # and by digest: an image known by digest only is what spegel_advertised_image_digests counts
        n2.pull(f"{upstream.addr}/{small.repository()}@{small.digest}")
        # node 2's advertiser applies that image record in a debounced batch (tens of ms later):
        # the snapshot below must not race it
        wait_until(lambda: totals(cluster).get("spegel_advertised_image_digests", 0.0) > 0, within=10,
                   what="node 2 advertises the image it pulled by digest")  # fmt: skip

        layer = max(small.blobs, key=lambda d: small.blobs[d])
        held = hold_blob_open(
            n1.ip, cluster.registry_port, f"/v2/{small.repository()}/blobs/{layer}", upstream.addr
        )
        try:
            inflight: list[float] = []

            def seen_inflight() -> bool:
                inflight.append(totals(cluster).get("http_requests_inflight", 0.0))
                return inflight[-1] > 0

            wait_until(seen_inflight, within=10, what="a held request counted in http_requests_inflight")
        finally:
            held.close()
        after = totals(cluster)
        done = time.time()
        wait_until(lambda: prometheus.scraped_after(done), within=30, what="a scrape after the pull")
        relayed = small.total_size - small.blobs[small.digest]
        yield Run(cluster, prometheus, before, after, inflight[-1], done, relayed)
    finally:
        processes.stop_all()
        cleanup_mounts(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        if not upstream.running():  # the next test module finds it as the fixture promises
            upstream.start()


# -- tests -------------------------------------------------------------------------------------
def test_dashboard_shape() -> None:
    """Grafana's bits the chart relies on: schema, the datasource variable, unique panel ids."""
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "namespace", "pod"} <= set(variables)
    ids = []
    for panel in panels():
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert len(ids) == len(set(ids))
    exprs = [e for _, e in panel_exprs()]
    for name in KUBELET_ONLY:  # the exemption list names only metrics the dashboard really uses
        assert any(re.search(rf"\b{name}\b", e) for e in exprs), name


@pytest.mark.parametrize(("where", "expr"), panel_exprs(), ids=[w for w, _ in panel_exprs()])
def test_every_dashboard_expression_returns_data(run: Run, where: str, expr: str) -> None:
    if kubelet_only(expr):
        pytest.skip("kubelet-only metric: syntax checked by promtool in test_kubelet_only_expressions")
    data = run.prometheus.api("query", query=substitute(expr), time=f"{run.done + 1:.3f}")
    assert data["result"], f"{where}: no data for {substitute(expr)}"
    values = [float(s["value"][1]) for s in data["result"]] if data["resultType"] == "vector" else []
    if data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    assert any(math.isfinite(v) for v in values), f"{where}: only NaN/Inf {data['result']}"


def test_template_variables_list_the_scrape_labels(run: Run) -> None:
    """``label_values(metric{sel}, label)`` (Grafana's) answered by Prometheus's series API."""
    expected = {
        "job": {JOB},
        "namespace": {NAMESPACE},
        "pod": {f"spegel-py-{n.name}" for n in run.cluster.nodes},
    }
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector, label = substitute(match.group(1)), match.group(2)
        values = set(run.prometheus.api(f"label/{label}/values", **{"match[]": selector}))
        assert values == expected[variable["name"]], (variable["name"], values)


def test_kubelet_only_expressions_parse(tmp_path: Path) -> None:
    """``promtool check rules`` parses every kubelet-only expression, and rejects a broken one."""
    promtool = require("promtool")
    exprs = [substitute(e) for _, e in panel_exprs() if kubelet_only(e)]
    assert exprs

    def check(expressions: list[str]) -> subprocess.CompletedProcess[str]:
        rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(expressions)],
                }
            ]
        }
        path = tmp_path / "rules.yml"
        path.write_text(json.dumps(rules))  # JSON is YAML
        return subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
        )

    result = check(exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
    broken = check([exprs[0].replace(")", "", 1)])
    assert broken.returncode != 0


def test_bytes_served_by_source_shows_local_and_peer_bytes(run: Run) -> None:
    """The panel's own expression: node 1 served from its content store, node 2 relayed those
    bytes from node 1 (``spegel_served_bytes_total{source="peer"}``)."""
    (expr,) = [e for where, e in panel_exprs() if where.startswith("Bytes served by source /")]
    data = run.prometheus.api("query", query=substitute(expr), time=f"{run.done + 1:.3f}")
    by_source = {s["metric"]["source"]: float(s["value"][1]) for s in data["result"]}
    assert by_source.get("local", 0.0) > 0, by_source
    assert by_source.get("peer", 0.0) > 0, by_source
    # and the counters themselves: node 2 relayed at least the image it pulled through node 1
    n2 = run.cluster.nodes[1]
    served = n2.served_bytes()
    assert served.get("peer", 0.0) >= run.relayed_at_least, served


@pytest.mark.parametrize("name", sorted(SPEGEL_METRICS))
def test_spegel_metric_exported_and_moves_during_p2p_pull(run: Run, name: str) -> None:
    series = SPEGEL_METRICS[name]
    assert series in run.after, f"{series} not exported"
    assert run.after[series] != run.before.get(series, 0.0), f"{series} did not move: {run.after[series]}"


@pytest.mark.parametrize("name", sorted(ROUTING_METRICS))
def test_routing_metric_exported_and_moves_during_the_run(run: Run, name: str) -> None:
    series = ROUTING_METRICS[name]
    assert series in run.after, f"{series} not exported"
    assert run.after[series] != run.before.get(series, 0.0), f"{series} did not move: {run.after[series]}"


def test_inflight_gauge_counts_a_held_request(run: Run) -> None:
    assert run.inflight > 0
    assert "http_requests_inflight" in run.before  # exported from the start (handler labels)

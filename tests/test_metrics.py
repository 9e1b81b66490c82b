"""Every metric spegel-py promises: from :class:`~spegel_py.metrics.Metrics` in process, and on
``/metrics`` of a real ``spegel-py registry`` process.

The process runs with ``--relay-buffers 7 --relay-buffer-size 1MiB --relay-hash-threads 2
--reprovide-interval 1s``, so the flags can be seen reaching the relay pool, the mirror and the
router. That the counters move during a peer transfer is asserted in tests/test_app.py (two
nodes) and against a real Prometheus in tests/observability/test_dashboard_live.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from support.daemon import Daemon, free_port, get, kill, make_layout, metric, start_node, stop, wait_ready
from support.poll import wait_until

from spegel_py.cgroup import page_cache_bytes
from spegel_py.metrics import Metrics, method_label

pytestmark = pytest.mark.process  # one real spegel-py node serves the whole module

NAMES = [
    "http_request_duration_seconds",
    "http_response_size_bytes",
    "http_requests_inflight",
    "spegel_mirror_requests_total",
    "spegel_mirror_last_success_timestamp_seconds",
    "spegel_resolve_duration_seconds",
    "spegel_advertised_images",
    "spegel_advertised_image_tags",
    "spegel_advertised_image_digests",
    "spegel_advertised_content_digests",
    "spegel_advertised_keys",
    "spegel_advertise_failures_total",
    "spegel_advertise_duration_seconds",
    "spegel_reprovide_duration_seconds",
    "spegel_router_peers",
    "spegel_router_provider_records",
    "spegel_router_provider_records_refused_total",
    "spegel_served_bytes_total",
    "spegel_relayed_bytes_total",
    "spegel_page_cache_evicted_bytes_total",
    "spegel_relay_buffers_in_use",
    "spegel_relay_buffers_capacity",
    "spegel_relay_buffers_allocated",
    "spegel_relay_buffer_size_bytes",
    "spegel_relay_hash_threads",
    "spegel_relay_buffer_waits_total",
    "spegel_relay_buffer_timeouts_total",
    "spegel_mirror_resumed_streams_total",
    "spegel_mirror_integrity_failures_total",
    "spegel_mirror_hedged_attempts_total",
    "spegel_mirror_aborted_responses_total",
    "spegel_mirror_tag_disagreements_total",
    "spegel_multi_peer_fetches_total",
    "spegel_multi_peer_ranges_total",
    "process_resident_memory_bytes",
]
HISTOGRAMS = ["spegel_advertise_duration_seconds", "spegel_reprovide_duration_seconds"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp_path = tmp_path_factory.mktemp("metrics")
    digests = make_layout(tmp_path / "layouts", 1 << 20)
    host = "127.0.0.33"
    ports = (free_port(host), free_port(host), free_port(host))
    daemon, _ = start_node(tmp_path / "layouts", tmp_path / "data", host, ports,
                           "--relay-buffers", "7", "--relay-buffer-size", "1MiB", "--relay-hash-threads", "2",
                           "--reprovide-interval", "1s")  # fmt: skip
    try:
        wait_ready(daemon)
        get(f"{daemon.base}/v2/test/app/blobs/{digests['layer']}")  # a local hit
        yield daemon
        assert stop(daemon) == 0
    finally:
        kill(daemon)


def _samples(node: Daemon) -> list[str]:
    status, body = get(node.metrics + "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def test_every_metric_is_exported(node: Daemon) -> None:
    # One mirrored miss and one local hit, so the labelled families have samples.
    get(f"{node.base}/v2/x/blobs/sha256:{'0' * 64}?ns=example.com")

    def missing() -> set[str]:
        return _missing(_samples(node))

    # the advertiser's first walk is asynchronous
    wait_until(lambda: not missing(), within=15, what="every metric exported",
               diagnose=lambda: str(missing()))  # fmt: skip


def _missing(samples: list[str]) -> set[str]:
    """The names of :data:`NAMES` that have no sample among ``samples``."""
    names = {line.split("{")[0].split(" ")[0] for line in samples}
    return {n for n in NAMES if not any(m == n or m.startswith(n + "_") for m in names)}


@pytest.mark.parametrize("name", HISTOGRAMS)
def test_durations_are_histograms_with_buckets(node: Daemon, name: str) -> None:
    samples = _samples(node)
    assert any(line.startswith(f'{name}_bucket{{le="+Inf"}}') for line in samples)
    assert any(line.startswith(f"{name}_sum ") for line in samples)


def test_relay_is_sized_by_the_flags(node: Daemon) -> None:
    assert metric(node, "spegel_relay_buffers_capacity ") == 7
    assert metric(node, "spegel_relay_buffer_size_bytes ") == 1 << 20
    assert metric(node, "spegel_relay_hash_threads ") == 2  # read from the mirror's own settings


def test_advertise_batches_and_reprovides_are_timed(node: Daemon) -> None:
    """The first batch advertised the layout's image; with --reprovide-interval 1s, the router
    re-sends its keys about every second (alone here: it times the work, nothing is sent)."""
    wait_until(lambda: metric(node, "spegel_reprovide_duration_seconds_count ") >= 2, within=20,
               what="two reprovides")  # fmt: skip
    assert metric(node, "spegel_advertise_duration_seconds_count ") >= 1
    assert metric(node, "spegel_advertise_duration_seconds_sum ") > 0


# -- in process: the collectors read the components at scrape time ------------------------------
@dataclass
class Stats:
    bytes_relayed: int = 0
    resumed: int = 1
    corrupt: int = 2
    hedged: int = 3
    aborted: int = 4
    tag_disagreements: int = 5
    multi_fetches: dict[str, int] = field(default_factory=lambda: {"complete": 6, "failed": 7})
    multi_ranges: dict[str, int] = field(default_factory=lambda: {"ok": 8, "retried": 9})


@dataclass
class Tuning:
    hash_threads: int = 2


@dataclass
class Relay:
    stats: Stats = field(default_factory=Stats)
    settings: Tuning = field(default_factory=Tuning)


@dataclass
class Pool:
    in_use: int = 1
    capacity: int = 7
    allocated: int = 3
    size: int = 1 << 20
    waits_total: int = 5
    timeouts_total: int = 6


@dataclass
class Counts:
    images: int = 2
    image_tags: int = 1
    image_digests: int = 1
    content_digests: int = 9


@dataclass
class Advertiser:
    failures: int = 8

    def counts(self) -> dict[str, Counts]:
        return {"docker.io": Counts()}

    def advertised(self) -> frozenset[str]:
        return frozenset({"sha256:a", "sha256:b", "docker.io/x:1"})


class Router:
    def peer_count(self) -> int:
        return 4

    def provider_records(self) -> int:
        return 12

    def provider_refusals(self) -> dict[str, int]:
        return {"invalid_key": 5, "peer_limit": 6, "evicted": 7}

    def stream_refusals(self) -> dict[str, int]:
        return {"peer_limit": 1, "node_limit": 2, "connection_limit": 3}


def _exposed(metrics: Metrics) -> dict[str, float]:
    """Every sample of the registry, by its exposition line up to the value."""
    out = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@pytest.fixture
def watched() -> tuple[Metrics, Relay]:
    metrics, relay = Metrics(), Relay()
    metrics.watch(router=Router(), advertiser=Advertiser(), relay=relay, pool=Pool())
    return metrics, relay


def test_served_bytes_is_one_counter_by_source_fed_by_both_paths(watched: tuple[Metrics, Relay]) -> None:
    metrics, relay = watched
    metrics.served_bytes.add_local(100)
    metrics.served_bytes.add_local(20)
    relay.stats.bytes_relayed = 250  # the relay counts its bytes once, in its own stats
    exposed = _exposed(metrics)
    assert exposed['spegel_served_bytes_total{source="local"}'] == 120
    assert exposed['spegel_served_bytes_total{source="peer"}'] == 250
    assert exposed["spegel_relayed_bytes_total"] == 250  # kept for dashboards that plot it


def test_both_served_bytes_series_exist_from_the_start() -> None:
    """Before the relay is attached (and before any byte), both series are there at 0."""
    exposed = _exposed(Metrics())
    assert exposed['spegel_served_bytes_total{source="local"}'] == 0
    assert exposed['spegel_served_bytes_total{source="peer"}'] == 0
    assert 'spegel_served_bytes_created{source="peer"}' in exposed


def test_collectors_report_the_components_values(watched: tuple[Metrics, Relay]) -> None:
    exposed = _exposed(watched[0])
    expected = {
        'spegel_advertised_images{registry="docker.io"}': 2,
        'spegel_advertised_image_tags{registry="docker.io"}': 1,
        'spegel_advertised_image_digests{registry="docker.io"}': 1,
        'spegel_advertised_content_digests{registry="docker.io"}': 9,
        "spegel_advertised_keys": 3,
        "spegel_advertise_failures_total": 8,
        "spegel_router_peers": 4,
        "spegel_router_provider_records": 12,
        'spegel_router_provider_records_refused_total{reason="invalid_key"}': 5,
        'spegel_router_provider_records_refused_total{reason="peer_limit"}': 6,
        'spegel_router_provider_records_refused_total{reason="evicted"}': 7,
        'spegel_router_streams_refused_total{reason="peer_limit"}': 1,
        'spegel_router_streams_refused_total{reason="node_limit"}': 2,
        'spegel_router_streams_refused_total{reason="connection_limit"}': 3,
        "spegel_mirror_resumed_streams_total": 1,
        "spegel_mirror_integrity_failures_total": 2,
        "spegel_mirror_hedged_attempts_total": 3,
        "spegel_mirror_aborted_responses_total": 4,
        "spegel_mirror_tag_disagreements_total": 5,
        'spegel_multi_peer_fetches_total{outcome="complete"}': 6,
        'spegel_multi_peer_fetches_total{outcome="failed"}': 7,
        'spegel_multi_peer_ranges_total{outcome="ok"}': 8,
        'spegel_multi_peer_ranges_total{outcome="retried"}': 9,
        "spegel_relay_buffers_in_use": 1,
        "spegel_relay_buffers_capacity": 7,
        "spegel_relay_buffers_allocated": 3,
        "spegel_relay_buffer_size_bytes": 1 << 20,
        "spegel_relay_hash_threads": 2,
        "spegel_relay_buffer_waits_total": 5,
        "spegel_relay_buffer_timeouts_total": 6,
    }
    assert {key: exposed.get(key) for key in expected} == expected


def test_every_promised_family_is_defined_in_process(watched: tuple[Metrics, Relay]) -> None:
    """NAMES (what the process test checks) all come from Metrics, once each labelled family has
    a sample."""
    metrics = watched[0]
    metrics.http_request_duration.labels("blob", "GET", "200").observe(0.1)
    metrics.http_response_size.labels("blob", "GET", "200").observe(10)
    metrics.http_requests_inflight.labels("blob").set(0)
    metrics.mirror_result("docker.io", served=True)
    metrics.resolve_duration.labels("libp2p").observe(0.01)
    samples = [line for line in generate_latest(metrics.registry).decode().splitlines() if line[:1] != "#"]
    assert _missing(samples) == set()


@pytest.mark.parametrize(
    ("cgroup", "stat_path", "stat", "expected"),
    [
        ("0::/kubepods/pod1\n", "sys/fs/cgroup/kubepods/pod1/memory.stat", "anon 5\nfile 4096\n", 4096.0),
        ("4:memory:/kubepods/pod1\n0::/\n", "sys/fs/cgroup/memory/kubepods/pod1/memory.stat",
         "cache 1\ntotal_cache 8192\n", 8192.0),
        ("0::/\n", "sys/fs/cgroup/memory.stat", "file 1\n", 1.0),
        ("0::/gone\n", "sys/fs/cgroup/elsewhere/memory.stat", "file 1\n", None),
    ],
    ids=["v2", "v1", "v2-root", "unreadable"],
)  # fmt: skip
def test_cgroup_page_cache(
    tmp_path: Path, cgroup: str, stat_path: str, stat: str, expected: float | None
) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / stat_path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / stat_path).write_text(stat)
    assert page_cache_bytes(tmp_path) == expected


def test_cgroup_page_cache_without_proc(tmp_path: Path) -> None:
    assert page_cache_bytes(tmp_path) is None


@pytest.mark.parametrize(
    ("method", "label"),
    [("GET", "GET"), ("HEAD", "HEAD"), ("POST", "other"), ("PROPFIND", "other"), ("get", "other"),
     ("", "other")],
)  # fmt: skip
def test_the_method_label_is_a_fixed_set(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("mirrored", "registry", "label"),
    [
        (frozenset({"docker.io"}), "docker.io", "docker.io"),
        (frozenset({"docker.io"}), "evil.example.com", "other"),
        (frozenset({"docker.io"}), "", ""),  # no ns
        (None, "docker.io", "other"),  # every registry mirrored: no fixed set to name them by
    ],
)
def test_the_registry_label_is_a_configured_registry_or_other(
    mirrored: frozenset[str] | None, registry: str, label: str
) -> None:
    metrics = Metrics(mirrored_registries=mirrored)
    metrics.mirror_result(registry, served=False)
    assert _exposed(metrics)[f'spegel_mirror_requests_total{{cache="miss",registry="{label}"}}'] == 1

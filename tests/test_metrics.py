"""Every metric spegel-py promises is on ``/metrics`` of a real ``spegel-py registry`` process.

The process runs with ``--relay-buffers 7 --relay-buffer-size 1MiB --relay-hash-threads 2
--reprovide-interval 1s``, so the flags can be seen reaching the relay pool, the mirror and the
router. That the counters move during a
peer transfer is asserted in tests/test_app.py (two nodes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_app import Daemon, _free_port, _get, _metric, _node, _stop, _wait_ready, make_layout

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
    "process_resident_memory_bytes",
]
HISTOGRAMS = ["spegel_advertise_duration_seconds", "spegel_reprovide_duration_seconds"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp_path = tmp_path_factory.mktemp("metrics")
    digests = make_layout(tmp_path / "layouts", 1 << 20)
    host = "127.0.0.33"
    ports = (_free_port(host), _free_port(host), _free_port(host))
    daemon, _ = _node(tmp_path / "layouts", tmp_path / "data", host, ports,
                      "--relay-buffers", "7", "--relay-buffer-size", "1MiB", "--relay-hash-threads", "2",
                      "--reprovide-interval", "1s")  # fmt: skip
    try:
        _wait_ready(daemon)
        _get(f"{daemon.base}/v2/test/app/blobs/{digests['layer']}")  # a local hit
        yield daemon
    finally:
        _stop(daemon)


def _samples(node: Daemon) -> list[str]:
    status, body = _get(node.metrics + "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def test_every_metric_is_exported(node: Daemon) -> None:
    # One mirrored miss and one local hit, so the labelled families have samples.
    _get(f"{node.base}/v2/x/blobs/sha256:{'0' * 64}?ns=example.com")
    missing = set(NAMES)
    deadline = time.monotonic() + 15
    while missing and time.monotonic() < deadline:  # the advertiser's first walk is asynchronous
        names = {line.split("{")[0].split(" ")[0] for line in _samples(node)}
        missing = {n for n in NAMES if not any(m == n or m.startswith(n + "_") for m in names)}
        time.sleep(0.1)  # polling a condition with a deadline
    assert missing == set()


@pytest.mark.parametrize("name", HISTOGRAMS)
def test_durations_are_histograms_with_buckets(node: Daemon, name: str) -> None:
    samples = _samples(node)
    assert any(line.startswith(f'{name}_bucket{{le="+Inf"}}') for line in samples)
    assert any(line.startswith(f"{name}_sum ") for line in samples)


def test_relay_is_sized_by_the_flags(node: Daemon) -> None:
    assert _metric(node, "spegel_relay_buffers_capacity ") == 7
    assert _metric(node, "spegel_relay_buffer_size_bytes ") == 1 << 20
    assert _metric(node, "spegel_relay_hash_threads ") == 2  # read from the mirror's own settings


def test_advertise_batches_and_reprovides_are_timed(node: Daemon) -> None:
    """The first batch advertised the layout's image; with --reprovide-interval 1s, the router
    re-sends its keys about every second (alone here: it times the work, nothing is sent)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _metric(node, "spegel_reprovide_duration_seconds_count ") < 2:
        time.sleep(0.1)  # polling a condition with a deadline
    assert _metric(node, "spegel_reprovide_duration_seconds_count ") >= 2
    assert _metric(node, "spegel_advertise_duration_seconds_count ") >= 1
    assert _metric(node, "spegel_advertise_duration_seconds_sum ") > 0

"""Every metric spegel-py promises is on ``/metrics`` of a real ``spegel-py registry`` process.

That the counters move during a peer transfer is asserted in tests/test_app.py (two nodes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app import Daemon, _free_port, _get, _node, _stop, _wait_ready, make_layout

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
    "spegel_router_peers",
    "spegel_served_bytes_total",
    "spegel_relayed_bytes_total",
    "spegel_page_cache_evicted_bytes_total",
    "spegel_relay_buffers_in_use",
    "spegel_relay_buffers_capacity",
    "spegel_relay_buffer_waits_total",
    "spegel_mirror_resumed_streams_total",
    "spegel_mirror_integrity_failures_total",
    "process_resident_memory_bytes",
]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Daemon]:
    digests = make_layout(tmp_path / "layouts", 1 << 20)
    host = "127.0.0.33"
    ports = (_free_port(host), _free_port(host), _free_port(host))
    daemon, _ = _node(tmp_path / "layouts", tmp_path / "data", host, ports)
    try:
        _wait_ready(daemon)
        _get(f"{daemon.base}/v2/test/app/blobs/{digests['layer']}")  # a local hit
        yield daemon
    finally:
        _stop(daemon)


def test_every_metric_is_exported(node: Daemon) -> None:
    # One mirrored miss and one local hit, so the labelled families have samples.
    _get(f"{node.base}/v2/x/blobs/sha256:{'0' * 64}?ns=example.com")
    missing = set(NAMES)
    deadline = time.monotonic() + 15
    while missing and time.monotonic() < deadline:  # the advertiser's first walk is asynchronous
        status, body = _get(node.metrics + "/metrics")
        assert status == 200
        samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        names = {line.split("{")[0].split(" ")[0] for line in samples}
        missing = {n for n in NAMES if not any(m == n or m.startswith(n + "_") for m in names)}
        time.sleep(0.1)  # polling a condition with a deadline
    assert missing == set()

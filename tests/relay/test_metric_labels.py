"""Metric labels never come from client input beyond a fixed set: odd methods and a flood of
``ns`` values through the real registry server and mirror leave the number of series bounded."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from nodesupport import Node, start_node
from prometheus_client import generate_latest
from relaysupport import Cluster, FakeRouter

from spegel_py.metrics import Metrics
from spegel_py.oci.digest import Digest
from spegel_py.oci.filters import RegistryFilter
from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror
from spegel_py.relay.peerclient import PeerClient
from spegel_py.store.memory import MemoryStore

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "MKCOL", "PURGE",
           "SEARCH", "REPORT", "LOCK", "UNLOCK", "MOVE", "COPY", "LINK", "SUBSCRIBE", "XYZZY"]  # fmt: skip


@pytest.fixture
async def node(cluster: Cluster) -> AsyncIterator[Node]:
    mirrored = ["https://docker.io", "https://ghcr.io"]
    filters = RegistryFilter.from_flags(mirrored_registries=mirrored)
    metrics = Metrics(mirrored_registries=filters.registries)
    mirror = Mirror(
        FakeRouter(),
        client=PeerClient(),
        pool=BufferPool(count=2, size=64 * 1024),
        filters=filters,
        on_result=metrics.mirror_result,
    )
    node = await start_node("127.0.0.62", MemoryStore(), mirror, metrics=metrics)
    try:
        yield node
    finally:
        await node.close()


def label_sets(metrics: Metrics, family: str) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return set(re.findall(rf"^{family}\{{(.*)\}} ", text, flags=re.MULTILINE))


def label(labels: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', labels)
    assert match is not None, labels
    return match.group(1)


async def test_odd_methods_and_many_registries_keep_the_label_sets_bounded(
    node: Node, cluster: Cluster
) -> None:
    session = cluster.session()
    missing = Digest.of(b"nobody has this")
    for method in METHODS:
        async with session.request(method, f"{node.url}/v2/library/app/blobs/{missing}") as resp:
            await resp.read()
    for ns in [*(f"registry-{i}.example.com" for i in range(150)), "docker.io", "ghcr.io", "quay.io"]:
        async with session.get(f"{node.url}/v2/library/app/blobs/{missing}?ns={ns}") as resp:
            assert resp.status == 404
    async with session.get(f"{node.url}/v2/library/app/blobs/{missing}") as resp:  # no ns
        assert resp.status == 404

    durations = label_sets(node.metrics, "http_request_duration_seconds_count")
    methods = {label(labels, "method") for labels in durations}
    assert methods == {"GET", "HEAD", "other"}
    assert len(durations) <= 2 * 3 * 2  # (handler blob|other) x method x (404|405-ish)
    registries = {
        label(labels, "registry") for labels in label_sets(node.metrics, "spegel_mirror_requests_total")
    }
    assert registries == {"docker.io", "ghcr.io", "other", ""}

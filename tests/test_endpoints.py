"""The daemon's ``/id`` and ``/metrics`` endpoints, served in process on 127.0.0.40."""

from __future__ import annotations

import json
import os
import resource
import socket
from contextlib import AsyncExitStack

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from support.daemon import free_port

from spegel_py.endpoints import (
    SPARE_DESCRIPTORS,
    id_application,
    metrics_application,
    reserve_descriptors,
    start,
)
from spegel_py.errors import ConfigurationError

HOST = "127.0.0.40"
PEER_ID = "12D3KooWEndpoints"


class Identity:
    peer_id = PEER_ID

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    def listen_multiaddrs(self) -> list[str]:
        return self.addrs


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


@pytest.mark.parametrize(
    ("addrs", "pod_ip", "query", "status", "body"),
    [
        # default: the object released Go Spegel (v0.6 to v0.7.4) requires
        (["/ip4/127.0.0.5/tcp/5001"], "", "", 200,
         json.dumps({"ID": PEER_ID, "Addrs": ["/ip4/127.0.0.5/tcp/5001"]})),
        (["/ip4/127.0.0.5/tcp/5001"], "", "?format=text", 200, f"/ip4/127.0.0.5/tcp/5001/p2p/{PEER_ID}"),
        # listening on every interface: only the pod IP is dialable, with the router's port
        (["/ip4/0.0.0.0/tcp/5001"], "10.1.2.3", "?format=text", 200, f"/ip4/10.1.2.3/tcp/5001/p2p/{PEER_ID}"),
        (["/ip4/127.0.0.5/tcp/5001"], "10.1.2.3", "?format=json", 200,
         json.dumps([{"ID": PEER_ID, "Addrs": ["/ip4/10.1.2.3/tcp/5001", "/ip4/127.0.0.5/tcp/5001"]}])),
        (["/ip4/0.0.0.0/tcp/5001"], "", "", 503, "no dialable router address to publish on /id"),
    ],
    ids=["object", "text", "pod-ip", "json", "nothing-dialable"],
)  # fmt: skip
async def test_id(addrs: list[str], pod_ip: str, query: str, status: int, body: str) -> None:
    address = f"{HOST}:{free_port(HOST)}"
    async with AsyncExitStack() as stack:
        await start(stack, id_application(Identity(addrs), router_port=5001, pod_ip=pod_ip), address)
        assert (await _get(f"http://{address}/id{query}"))[::2] == (status, body)


async def test_metrics_come_from_the_injected_registry() -> None:
    registry = CollectorRegistry()
    Counter("spegel_test_things", "Things.", registry=registry).inc(3)
    address = f"{HOST}:{free_port(HOST)}"
    async with AsyncExitStack() as stack:
        await start(stack, metrics_application(registry), address)
        status, content_type, text = await _get(f"http://{address}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "spegel_test_things_total 3.0" in text
    assert "process_resident_memory_bytes" not in text  # not the global registry


async def test_an_address_in_use_is_a_configuration_error() -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        address = f"{HOST}:{busy.getsockname()[1]}"
        async with AsyncExitStack() as stack:
            with pytest.raises(ConfigurationError, match="cannot listen on"):
                await start(stack, metrics_application(CollectorRegistry()), address)


def test_the_descriptor_limit_is_raised_to_fit_the_connection_cap() -> None:
    """At the soft limit accept() fails (asyncio then stops accepting for a second): a cap larger
    than what the limit leaves raises it, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    cap = 2000
    if hard != resource.RLIM_INFINITY and hard < open_now + cap + SPARE_DESCRIPTORS:
        pytest.skip(f"the hard descriptor limit here ({hard}) leaves no room to raise the soft one")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 16, hard))
        reserve_descriptors(cap)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= open_now + cap
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

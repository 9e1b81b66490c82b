"""Requests no route can take, on every listener (spegel_py/httpx/expect.py through endpoints.start).

The reliability fuzzer found ``CONNECT`` with an authority-form target and an ``Expect`` value
that is not UTF-8 answered 500 by aiohttp's default expect handler, which runs before routing.
Each listener of the daemon must answer such requests with a 4xx (the registry with OCI JSON),
on real sockets with raw bytes (aiohttp's client would not send them).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from spegel_py.endpoints import METRICS_BOUNDS, id_application, metrics_application, start
from spegel_py.metrics import Metrics
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.memory import MemoryStore

HOST = "127.0.0.1"
BAD_EXPECT = b"\xb7\x9e\xacv["

# The fuzzer's request, and its variants on paths each listener has or has not.
REQUESTS = {
    "connect-fuzzed": b"CONNECT //v2/? HTTP/1.1\r\nHost: fuzz\r\nExpect: " + BAD_EXPECT
    + b"\r\nRange: \r\nContent-Length: 10\r\nConnection: close\r\n\r\nroot:x:0:0",
    "connect-authority": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nExpect: "
    + BAD_EXPECT + b"\r\nConnection: close\r\n\r\n",
    "connect-plain": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    "unknown-path": b"GET /nowhere HTTP/1.1\r\nHost: x\r\nExpect: " + BAD_EXPECT
    + b"\r\nConnection: close\r\n\r\n",
    "known-path": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nExpect: " + BAD_EXPECT + b"\r\nConnection: close\r\n\r\n",
}


class Identity:
    peer_id = "12D3KooWScreen"

    def listen_multiaddrs(self) -> list[str]:
        return ["/ip4/127.0.0.5/tcp/5001"]


def _applications() -> dict[str, web.Application]:
    registry = RegistryServer(MemoryStore(), metrics=Metrics(), coordinator=PageCacheCoordinator(settle=0))

    async def page(_: web.Request) -> web.Response:  # /debug/web/ is a route of this listener
        return web.Response(text="debug")

    return {
        "registry": registry.application(),
        "metrics": metrics_application(CollectorRegistry(), routes=[web.get("/debug/web/", page)]),
        "id": id_application(Identity(), router_port=5001),
    }


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
    return int(lines[0].split()[1]), fields, body


@pytest.mark.parametrize("listener", ["registry", "metrics", "id"])
@pytest.mark.parametrize("name", list(REQUESTS))
async def test_every_listener_answers_unroutable_requests_with_a_4xx(listener: str, name: str) -> None:
    async with AsyncExitStack() as stack:
        app = _applications()[listener]
        bounds = METRICS_BOUNDS if listener != "registry" else None
        runner = await (
            start(stack, app, f"{HOST}:0", bounds=bounds) if bounds else start(stack, app, f"{HOST}:0")
        )
        status, fields, body = await _exchange(runner.addresses[0][1], REQUESTS[name])
        assert 400 <= status < 500, (status, body)
        if listener == "registry":
            assert fields["content-type"].startswith("application/json")
            assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
        assert BAD_EXPECT not in body


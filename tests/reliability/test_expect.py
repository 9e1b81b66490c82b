"""The ``Expect`` header on every listener: the fuzzer's first find (bench/reliability/fuzz.py).

A value that is not UTF-8 made aiohttp's default expect handler raise while echoing it, and the
client got a 500. Every route now answers 417 without echoing, and ``100-continue`` as before.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from spegel_py.endpoints import metrics_application
from spegel_py.metrics import Metrics
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.memory import MemoryStore


def registry_app() -> web.Application:
    server = RegistryServer(MemoryStore(), metrics=Metrics(), coordinator=PageCacheCoordinator(settle=0))
    return server.application()


@pytest.fixture(params=["registry", "metrics"])
async def address(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int, str]]:
    app = registry_app() if request.param == "registry" else metrics_application(CollectorRegistry())
    path = "/v2/" if request.param == "registry" else "/metrics"
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield "127.0.0.1", sock.getsockname()[1], path
    finally:
        await runner.cleanup()


async def status_of(host: str, port: int, head: bytes) -> tuple[int, bytes]:
    """Status and bytes of the final answer (the request says ``Connection: close``)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    answer = answer.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    return int(answer.split()[1]), answer


@pytest.mark.parametrize(
    ("expect", "body", "status"),
    [
        (b"\xc2", b"", 417),  # not UTF-8: was a 500
        (b"\xf1\x86#]", b"ab", 417),
        (b"something-else", b"", 417),
        (b"100-continue", b"ab", 200),
    ],
)
async def test_expect_is_never_a_500(
    address: tuple[str, int, str], expect: bytes, body: bytes, status: int
) -> None:
    host, port, path = address
    head = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Expect: "
        + expect
        + b"\r\n\r\n"
        + body
    )
    got, answer = await status_of(host, port, head)
    assert got == status, answer[:300]
    assert expect not in answer.split(b"\r\n\r\n", 1)[-1] or expect == b"100-continue"

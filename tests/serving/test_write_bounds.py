"""Local bodies have a floor (serving/content.py ``WriteBounds``): a client that reads, but too
slowly to take the body within ``write_timeout + size / min_throughput``, is cut off before the
body completes, on the streamed path and on the whole-body (JSON) path alike.

The listener's own bounds are set out of the way, so what cuts the client here is the deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from aiohttp import web
from support.poll import eventually

from spegel_py.endpoints import Bounds, start
from spegel_py.metrics import Metrics
from spegel_py.serving.content import WriteBounds
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.memory import MemoryStore

HOST = "127.0.0.1"
SIZE = 2 << 20
BODIES = {
    "layer": os.urandom(SIZE),  # streamed in chunks (a store without files)
    "json": b'{"a": "' + b"x" * SIZE + b'"}',  # sniffed as JSON: read whole, sent in one write
}


async def _small_send_buffer(request: web.Request, _: web.StreamResponse) -> None:
    """A small kernel send buffer, so that the body cannot all vanish into the kernel (up to
    4 MiB here) before the deadline matters: as behind a slow link."""
    assert request.transport is not None
    request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.mark.parametrize("kind", list(BODIES))
async def test_a_client_too_slow_for_the_size_deadline_is_cut(stack: AsyncExitStack, kind: str) -> None:
    store = MemoryStore()
    data = BODIES[kind]
    digest = store.add_blob(data).digest
    # deadline: 0.2 s + 2 MiB / 4 MiB/s = 0.7 s; the client below takes ~20 s for 2 MiB
    server = RegistryServer(
        store,
        metrics=Metrics(),
        coordinator=PageCacheCoordinator(settle=0),
        write_bounds=WriteBounds(write_timeout=0.2, min_throughput=4 << 20),
    )
    app = server.application()
    app.on_response_prepare.append(_small_send_buffer)
    runner = await start(stack, app, f"{HOST}:0", bounds=Bounds(write_timeout=600))
    assert runner.server is not None
    connections = runner.server.connections
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    received = 0
    try:
        await loop.sock_connect(sock, (HOST, runner.addresses[0][1]))
        await loop.sock_sendall(sock, f"GET /v2/test/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while chunk := await loop.sock_recv(sock, 1024):
            received += len(chunk)
            await asyncio.sleep(0.01)  # pacing a slow reader (~100 KiB/s), not synchronisation
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert received < len(data)  # cut before the end: never a complete body
    await eventually(lambda: not connections, what="the connection is gone")

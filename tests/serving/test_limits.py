"""The registry listener's bounds (spegel_py/httpx/limits.py through endpoints.start), on real sockets.

Each test starts the real registry application with small bounds and checks one of them: the
connection cap, the header deadline (slowloris), the keep-alive idle limit and the write
deadline for a client that never reads. Waits are conditions (``eventually``); the only sleeps
pace a trickling client.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from support.poll import eventually

from spegel_py.endpoints import METRICS_BOUNDS, Bounds, metrics_application, start
from spegel_py.metrics import Metrics
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.memory import MemoryStore

HOST = "127.0.0.1"
BIG = 32 * 1024 * 1024  # far more than the kernel's socket buffers can absorb
PING = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass
class Node:
    runner: web.AppRunner
    port: int
    big_path: str

    @property
    def connections(self) -> int:
        assert self.runner.server is not None
        return len(self.runner.server.connections)


Serve = Callable[[Bounds], Awaitable[Node]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    async with AsyncExitStack() as stack:

        async def start_node(bounds: Bounds) -> Node:
            store = MemoryStore()
            big = store.add_blob(os.urandom(1024) * (BIG // 1024))
            server = RegistryServer(store, metrics=Metrics(), coordinator=PageCacheCoordinator(settle=0))
            runner = await start(stack, server.application(), f"{HOST}:0", bounds=bounds)
            return Node(runner, runner.addresses[0][1], f"/v2/test/blobs/{big.digest}")

        yield start_node


async def _connect(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, node.port)


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Send ``GET /v2/`` and read the whole answer; return its status."""
    writer.write(PING)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    fields = dict(ln.lower().partition(": ")[::2] for ln in lines[1:] if ln)
    length = int(fields["content-length"])
    await asyncio.wait_for(reader.readexactly(length), 5)
    return int(lines[0].split()[1])


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset), without waiting long."""
    try:
        return await asyncio.wait_for(reader.read(65536), 0.05) == b"" or reader.at_eof()
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def test_beyond_the_cap_new_connections_are_refused_existing_ones_keep_working(serve: Serve) -> None:
    node = await serve(Bounds(max_connections=2, header_timeout=30))
    first, second = await _connect(node), await _connect(node)
    try:
        assert await _ask(*first) == 200
        await _ask(*second)
        await eventually(lambda: node.connections == 2)
        extra = await _connect(node)
        try:
            await eventually(lambda: _closed(extra[0]), within=3, what="the extra connection is closed")
        finally:
            await _close(extra[1])
        assert await _ask(*first) == 200  # the kept-alive connection still answers
        await _close(second[1])
        await eventually(lambda: node.connections == 1)
        again = await _connect(node)  # a freed slot is usable again
        try:
            assert await _ask(*again) == 200
        finally:
            await _close(again[1])
    finally:
        await _close(first[1])
        await _close(second[1])


async def test_a_slowloris_is_closed_at_the_header_deadline_honest_clients_are_served(serve: Serve) -> None:
    node = await serve(Bounds(header_timeout=0.5, keepalive_timeout=30))
    reader, writer = await _connect(node)
    began = time.monotonic()

    async def trickle() -> None:
        for byte in PING[:-2]:  # never the final CRLF
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)  # pacing a slow client, not synchronisation

    dripping = asyncio.create_task(trickle(), name="slowloris")
    try:
        honest = await _connect(node)
        try:
            t0 = time.monotonic()
            assert await _ask(*honest) == 200
            assert time.monotonic() - t0 < 0.5
        finally:
            await _close(honest[1])
        await eventually(lambda: _closed(reader), what="the slowloris connection is closed")
        assert 0.4 < time.monotonic() - began < 5
    finally:
        dripping.cancel()
        try:
            await dripping
        except (asyncio.CancelledError, ConnectionError):
            pass
        await _close(writer)


async def test_an_idle_keepalive_connection_is_closed_after_the_idle_limit(serve: Serve) -> None:
    node = await serve(Bounds(header_timeout=30, keepalive_timeout=0.5))
    reader, writer = await _connect(node)
    try:
        assert await _ask(reader, writer) == 200
        began = time.monotonic()
        await eventually(lambda: _closed(reader), what="the idle connection is closed")
        assert time.monotonic() - began < 5
        await eventually(lambda: node.connections == 0)
    finally:
        await _close(writer)


async def test_a_client_that_never_reads_is_cut_off_at_the_write_deadline(serve: Serve) -> None:
    node = await serve(Bounds(write_timeout=0.5))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (HOST, node.port))
        request = f"GET {node.big_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        await asyncio.get_running_loop().sock_sendall(sock, request)
        await eventually(lambda: node.connections == 1)
        began = time.monotonic()
        await eventually(lambda: node.connections == 0, what="the stalled response is aborted")
        assert time.monotonic() - began < 5
    finally:
        sock.close()


async def test_a_whole_body_response_the_client_never_reads_is_cut_off_too() -> None:
    """``web.Response`` (manifests, OCI errors, JSON) is written by aiohttp after the handler:
    the bound is on the transport, so it holds there as well as for streamed bodies."""
    body = os.urandom(1024) * (BIG // 1024)

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", handle)
    async with AsyncExitStack() as stack:
        runner = await start(stack, app, f"{HOST}:0", bounds=Bounds(write_timeout=0.5))
        assert runner.server is not None
        server = runner.server
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (HOST, runner.addresses[0][1]))
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: len(server.connections) == 1)
            await eventually(lambda: not server.connections, what="the stalled response is aborted")
        finally:
            sock.close()


async def test_metrics_has_its_own_small_connection_cap() -> None:
    async with AsyncExitStack() as stack:
        runner = await start(
            stack, metrics_application(CollectorRegistry()), f"{HOST}:0", bounds=METRICS_BOUNDS
        )
        port = runner.addresses[0][1]
        open_ = [await asyncio.open_connection(HOST, port) for _ in range(METRICS_BOUNDS.max_connections)]
        try:
            assert runner.server is not None
            server = runner.server
            await eventually(lambda: len(server.connections) == METRICS_BOUNDS.max_connections)
            extra_reader, extra_writer = await asyncio.open_connection(HOST, port)
            try:
                await eventually(
                    lambda: _closed(extra_reader), within=3, what="the scrape over the cap is closed"
                )
            finally:
                await _close(extra_writer)
            reader, writer = open_[0]
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in open_:
                await _close(writer)

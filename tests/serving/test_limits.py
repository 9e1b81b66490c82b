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
from support.poll import eventually, wait_until

from spegel_py.endpoints import METRICS_BOUNDS, Bounds, metrics_application, start
from spegel_py.httpx.limits import BoundedSite
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


async def _busy(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a response in progress: it asks for the big blob and never reads."""
    reader, writer = await _connect(node)
    writer.write(f"GET {node.big_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def test_beyond_the_cap_with_every_slot_busy_new_connections_are_refused(serve: Serve) -> None:
    """Connections being answered keep their slots; a newcomer waits briefly, then is closed."""
    node = await serve(Bounds(max_connections=2, header_timeout=30, queue_timeout=0.2))
    site = _site(node)
    first, second = await _busy(node), await _busy(node)
    try:
        await eventually(lambda: node.connections == 2)
        extra = await _connect(node)
        try:
            await eventually(lambda: _closed(extra[0]), within=3, what="the extra connection is closed")
        finally:
            await _close(extra[1])
        assert node.connections == 2 and site.open_connections == 2
        assert not await _closed(first[0]) and not await _closed(second[0])  # never cut
        await _close(second[1])
        await eventually(lambda: site.open_connections == 1)
        again = await _connect(node)  # a freed slot is usable again
        try:
            assert await _ask(*again) == 200
        finally:
            await _close(again[1])
    finally:
        await _close(first[1])
        await _close(second[1])


def _site(node: Node) -> BoundedSite:
    [site] = node.runner.sites
    assert isinstance(site, BoundedSite)
    return site


async def test_at_the_cap_a_new_connection_waits_briefly_for_a_slot(serve: Serve) -> None:
    """Queued, unread, until a busy slot frees; then served like any other."""
    node = await serve(Bounds(max_connections=1, header_timeout=30, queue_timeout=30))
    site = _site(node)
    first = await _busy(node)
    await eventually(lambda: node.connections == 1)
    waiting = await _connect(node)
    try:
        await eventually(lambda: site.queued_connections == 1, what="the second connection is queued")
        waiting[1].write(PING)  # waits in the kernel; nothing reads it yet
        assert site.open_connections == 1 and site.queued_connections == 1
        await _close(first[1])
        head = await asyncio.wait_for(waiting[0].readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert site.open_connections == 1 and site.queued_connections == 0
    finally:
        await _close(first[1])
        await _close(waiting[1])
    await eventually(lambda: site.open_connections == 0, what="every slot is free again")


async def test_the_cap_is_exact_however_many_connect_at_once(serve: Serve) -> None:
    """Connections are counted as they are accepted, not when aiohttp registers them, so a burst
    in one accept batch cannot pass the cap; the rest take idle slots in turn, queue or are
    closed, but never more than the cap are served."""
    node = await serve(Bounds(max_connections=3, header_timeout=30, queue_timeout=30))
    site = _site(node)
    burst = await asyncio.gather(*(_connect(node) for _ in range(40)))
    try:
        for _ in range(20):
            assert site.open_connections == 3 and len(site._waiting) <= 3
            await asyncio.sleep(0.01)  # sampling the count over a while, not synchronisation
        await eventually(lambda: node.connections == 3)
    finally:
        for _, writer in burst:
            await _close(writer)
    await eventually(lambda: site.open_connections == 0 and site.queued_connections == 0)


TCP_SYN_SENT = 2  # tcp_info's first byte: the client's SYN got no answer (dropped by the server)


def _handshakes(count: int, port: int) -> list[socket.socket]:
    """``count`` non-blocking connects to ``port``; returned once every handshake is done."""
    clients = [socket.socket() for _ in range(count)]
    for client in clients:
        client.setblocking(False)
        client.connect_ex((HOST, port))

    def done() -> bool:
        states = [c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] for c in clients]
        return states.count(TCP_SYN_SENT) == 0

    try:
        wait_until(done, within=3, what=f"{count} handshakes while the server's loop is busy")
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


async def test_a_busy_loop_does_not_make_the_kernel_drop_handshakes(serve: Serve) -> None:
    """While the event loop does not accept (busy: here it is blocked on purpose), the kernel
    completes handshakes into the listener's accept queue; with aiohttp's 128 it dropped the SYNs
    beyond that and each client retried a second later (bench/reliability/slow.py)."""
    node = await serve(Bounds(max_connections=400, header_timeout=30))
    clients = _handshakes(300, node.port)  # synchronous: nothing is accepted meanwhile
    try:
        await eventually(lambda: _site(node).open_connections == 300, what="all accepted")
    finally:
        for client in clients:
            client.close()
    await eventually(lambda: _site(node).open_connections == 0)


async def test_at_the_cap_a_newcomer_takes_the_slot_of_an_idle_connection(serve: Serve) -> None:
    """An idle kept-alive connection goes first, then the one that waited longest for its first
    head; a connection with a response in progress is never cut."""
    node = await serve(Bounds(max_connections=3, header_timeout=30, queue_timeout=30))
    site = _site(node)
    busy = await _busy(node)
    silent = await _connect(node)  # connected, no head yet
    await eventually(lambda: len(site._waiting) == 2)
    kept = await _connect(node)
    newcomers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        assert await _ask(*kept) == 200  # now idle on a kept-alive connection
        newcomers.append(await _connect(node))
        await eventually(lambda: _closed(kept[0]), what="the idle kept-alive connection is closed")
        assert await _ask(*newcomers[0]) == 200
        assert not await _closed(silent[0])
        newcomers.append(await _connect(node))  # the first newcomer is idle kept-alive now
        await eventually(lambda: _closed(newcomers[0][0]), what="the idle kept-alive one is closed")
        assert not await _closed(silent[0])
        newcomers.append(await _connect(node))  # head-less: silent (older), newcomers[1]
        await eventually(lambda: _closed(silent[0]), what="the oldest head-less connection is closed")
        assert await _ask(*newcomers[1]) == 200 and await _ask(*newcomers[2]) == 200
        assert not await _closed(busy[0])
        assert site.open_connections == 3 and site.queued_connections == 0
    finally:
        for _, writer in (busy, silent, kept, *newcomers):
            await _close(writer)


async def test_trickling_clients_at_the_cap_do_not_keep_honest_clients_out(serve: Serve) -> None:
    """Sixteen slowloris clients reconnect as soon as they are closed and hold every slot of a
    16-connection cap; each honest request on a fresh connection is still answered."""
    node = await serve(Bounds(max_connections=16, header_timeout=30, queue_timeout=0.2))
    site = _site(node)
    stop = asyncio.Event()

    async def attacker() -> None:
        while not stop.is_set():
            try:
                reader, writer = await _connect(node)
            except OSError:
                continue
            try:
                for byte in PING[:-2]:  # never the final CRLF
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)  # pacing a slow client, not synchronisation
                    if reader.at_eof() or stop.is_set():
                        break
                await asyncio.sleep(0.05)
            except ConnectionError:
                pass
            finally:
                await _close(writer)

    attackers = [asyncio.create_task(attacker(), name=f"slowloris-{i}") for i in range(16)]
    try:
        await eventually(lambda: site.open_connections == 16, what="the attackers hold every slot")
        answered = 0
        for _ in range(20):
            reader, writer = await _connect(node)
            try:
                answered += await _ask(reader, writer) == 200
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                await _close(writer)
            assert site.open_connections <= 16
        assert answered == 20
    finally:
        stop.set()
        await asyncio.gather(*attackers, return_exceptions=True)


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


@pytest.mark.parametrize(
    ("size", "send_buffer"),
    [
        # far more than the socket buffers: the writer pauses, the high-water deadline cuts it
        (BIG, None),
        # a body below the high-water mark never pauses the writer; with a small kernel buffer
        # (as behind a client that left earlier responses unread) most of it stays in the
        # transport: that tail must still go within the write deadline
        (200 * 1024, 4096),
    ],
    ids=["over-the-high-water-mark", "tail-below-it"],
)
async def test_a_whole_body_response_the_client_never_reads_is_cut_off_too(
    size: int, send_buffer: int | None
) -> None:
    """``web.Response`` (manifests, OCI errors, JSON) is written by aiohttp after the handler:
    the bound is on the transport, so it holds there as well as for streamed bodies."""
    body = os.urandom(1024) * (size // 1024)

    async def handle(request: web.Request) -> web.Response:
        if send_buffer is not None:
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/body", handle)
    async with AsyncExitStack() as stack:
        bounds = Bounds(write_timeout=0.5, keepalive_timeout=600)  # keep-alive is not what cuts it
        runner = await start(stack, app, f"{HOST}:0", bounds=bounds)
        assert runner.server is not None
        server = runner.server
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (HOST, runner.addresses[0][1]))
            await loop.sock_sendall(sock, b"GET /body HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: len(server.connections) == 1)
            await eventually(lambda: not server.connections, what="the unread response is aborted")
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
            # the scrape over the cap takes the slot of the connection idle longest
            extra_reader, extra_writer = await asyncio.open_connection(HOST, port)
            try:
                await eventually(lambda: _closed(open_[0][0]), what="the oldest idle connection is closed")
                extra_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(extra_reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert len(server.connections) == METRICS_BOUNDS.max_connections
            finally:
                await _close(extra_writer)
        finally:
            for _, writer in open_:
                await _close(writer)

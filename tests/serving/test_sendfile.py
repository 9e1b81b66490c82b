"""The zero-copy sender on its own: exact bytes, a stalled reader, a file shorter than promised."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from spegel_py.errors import ContentNotFoundError
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.sendfile import flush, send_range

MiB = 1 << 20


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b  # type: ignore[misc]
    a.close()
    b.close()


@pytest.fixture
def blob(tmp_path: Path) -> tuple[int, bytes]:
    data = os.urandom(8 * MiB)
    path = tmp_path / "blob"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data  # type: ignore[misc]
    os.close(fd)


async def _read_all(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    out = bytearray()
    while len(out) < n:
        out += await loop.sock_recv(sock, 1 << 20)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "count"), [(0, 8 * MiB), (1, 100), (3 * MiB + 7, 2 * MiB), (8 * MiB - 1, 1)]
)
async def test_sends_exactly_the_range(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes], offset: int, count: int
) -> None:
    server, client = pair
    fd, data = blob
    coordinator = PageCacheCoordinator(settle=0)
    stream = coordinator.open(fd, offset, offset + count)
    reader = asyncio.ensure_future(_read_all(client, count))
    await send_range(server.fileno(), fd, offset, count, stream)
    stream.close()
    assert await asyncio.wait_for(reader, 10) == data[offset : offset + count]
    assert stream.offset == offset + count


async def test_a_reader_that_stalls_is_dropped(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes]
) -> None:
    server, _ = pair  # the client never reads
    fd, _ = blob
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(send_range(server.fileno(), fd, 0, 8 * MiB, stall_timeout=0.2), 10)


async def test_a_reader_that_leaves_is_reported(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes]
) -> None:
    server, client = pair
    fd, _ = blob
    client.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(send_range(server.fileno(), fd, 0, 8 * MiB), 10)


async def test_a_file_shorter_than_promised_is_an_error(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes]
) -> None:
    server, client = pair
    fd, _ = blob
    reader = asyncio.ensure_future(_read_all(client, 8 * MiB))
    try:
        with pytest.raises(ContentNotFoundError):
            await asyncio.wait_for(send_range(server.fileno(), fd, 0, 9 * MiB), 10)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_each_writable_event_sends_one_bounded_chunk(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that drains as fast as we send must not let one body monopolise the event loop."""
    import types

    from spegel_py.serving import sendfile as module

    calls: list[int] = []
    ticks: list[int] = []

    def always_complete(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        ticks.append(len(calls))
        return count  # as if the socket never filled up

    monkeypatch.setattr(
        module, "os", types.SimpleNamespace(sendfile=always_complete, dup=os.dup, close=os.close)
    )
    server, _ = pair
    fd, _ = blob
    interleaved: list[int] = []
    loop = asyncio.get_running_loop()
    stop = False

    def tick() -> None:
        interleaved.append(len(calls))
        if not stop:
            loop.call_soon(tick)

    loop.call_soon(tick)
    await send_range(server.fileno(), fd, 0, 64 * MiB)
    stop = True
    assert max(calls) <= module.CHUNK
    assert len(calls) == 64 * MiB // module.CHUNK
    # other callbacks ran between the chunks, not only before and after the whole body
    assert len(set(interleaved)) >= len(calls) // 2


async def test_a_reader_that_trickles_is_dropped_at_the_deadline(
    pair: tuple[socket.socket, socket.socket], blob: tuple[int, bytes]
) -> None:
    """Each read is progress, so the stall bound never fires; the size-derived deadline does."""
    server, client = pair
    fd, _ = blob
    loop = asyncio.get_running_loop()
    client.setblocking(False)

    async def trickle() -> None:
        while True:
            try:
                if not await loop.sock_recv(client, 4096):
                    return
            except OSError:
                return
            await asyncio.sleep(0.01)  # pacing a slow reader, not synchronisation

    reader = asyncio.create_task(trickle(), name="trickle")
    try:
        with pytest.raises(ConnectionResetError, match="deadline"):
            await asyncio.wait_for(
                send_range(server.fileno(), fd, 0, 8 * MiB, stall_timeout=5.0, deadline=0.5), 30
            )
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_flush_puts_the_transports_buffer_limits_back_as_they_were() -> None:
    """asyncio reports the limits as (low, high); flushing the buffered headers must restore
    exactly those, not raise ValueError for a low above the high (it did, for every body whose
    headers were still buffered)."""
    server_sock, client_sock = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
    try:
        transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
        before = transport.get_write_buffer_limits()
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.write(b"x" * (1 << 20))  # more than the socket takes at once: some stays buffered
        assert transport.get_write_buffer_size() > 0

        async def drain() -> None:
            while transport.get_write_buffer_size():
                try:
                    client_sock.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)

        client_sock.setblocking(False)
        await flush(transport, drain)
        assert transport.get_write_buffer_size() == 0
        assert transport.get_write_buffer_limits() == before
    finally:
        transport.close()
        client_sock.close()

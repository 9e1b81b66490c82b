"""Test doubles for the relay behind the real registry server: a node, and a peer that speaks raw bytes.

:func:`start_node` runs a :class:`~spegel_py.serving.server.RegistryServer` (with a mirror, or
without) on a loopback address, as ``app.py`` wires it. :class:`RawPeer` is a peer's registry
port that answers every request with bytes the test chose (a hostile response head, a lying
range), which aiohttp's server would refuse to send; it counts the bytes it wrote.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from spegel_py.metrics import Metrics
from spegel_py.relay.mirror import Mirror
from spegel_py.routing.base import Peer
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.memory import MemoryStore


@dataclass
class Node:
    store: MemoryStore
    runner: web.AppRunner
    port: int
    mirror: Mirror | None
    metrics: Metrics

    @property
    def url(self) -> str:
        return f"http://{self.runner.addresses[0][0]}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.mirror is not None:
            await self.mirror.close()


async def start_node(
    host: str,
    store: MemoryStore,
    mirror: Mirror | None,
    *,
    metrics: Metrics | None = None,
    authorization: str | None = None,
) -> Node:
    metrics = metrics if metrics is not None else Metrics()
    coordinator = PageCacheCoordinator(settle=0)
    server = RegistryServer(
        store, metrics=metrics, coordinator=coordinator, on_miss=mirror, authorization=authorization
    )
    runner = web.AppRunner(server.application(), access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return Node(store, runner, port, mirror, metrics)


@dataclass
class RawPeer:
    """Answers each request head with ``answer(request_head)`` and closes the connection."""

    host: str
    answer: Callable[[bytes], bytes]
    heads: list[bytes] = field(default_factory=list)  # the request heads received
    bytes_sent: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def peer(self) -> Peer:
        return Peer(f"raw-{self.host}", self.host, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            data = self.answer(head)
            writer.write(data)
            await writer.drain()
            self.bytes_sent += len(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

"""``cleanup`` and ``cleanup-wait``: undo the containerd mirror configuration when the chart goes.

Helm's post-delete hook runs ``cleanup`` as a DaemonSet (one pod per node) behind a headless
service that publishes not-ready addresses, and one ``cleanup-wait`` pod. Each ``cleanup`` pod
restores its node's certs.d and only then answers ``GET /healthz`` with 200, until it is
stopped. ``cleanup-wait`` resolves the service name to every pod address and returns once every
address has answered 200 on ``threshold`` consecutive rounds, ``period`` apart: then every node
is restored and Helm may delete the hook resources. This matches Go Spegel's behaviour.

The probe server speaks just enough HTTP/1.1 for a kubelet readiness probe and for
``cleanup-wait``, on asyncio streams: aiohttp's server is not needed for one fixed answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from spegel_py.errors import ConfigurationError
from spegel_py.hosts import cleanup_mirrors

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
Resolver = Callable[[str], Awaitable[Sequence[str]]]


def split_endpoint(endpoint: str, *, listen: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port). An address to ``listen`` on may leave the
    host out (``:8080``, every interface) and use port 0 (any free port)."""
    host, sep, port = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if listen else 1
    if not sep or not port.isdigit() or not lowest <= int(port) < 65536 or (not host and not listen):
        raise ConfigurationError(f"invalid address {endpoint[:100]!r}: expected host:port")
    return host, int(port)


async def system_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to (a headless service: one per cleanup pod)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def wait_for_cleanup(
    probe_endpoint: str,
    *,
    period: float = 2.0,
    threshold: int = 3,
    request_timeout: float = 1.0,
    resolve: Resolver = system_resolver,
) -> int:
    """Probe ``http://<every address of host>:<port>/healthz`` every ``period`` seconds until all
    answer 200 in ``threshold`` consecutive rounds; return the number of rounds run.

    A failed lookup, no addresses, or any address failing resets the count. There is no deadline
    here (Helm bounds the hook); a caller that wants one wraps the call in ``asyncio.timeout``.
    """
    host, port = split_endpoint(probe_endpoint)
    if threshold < 1 or period <= 0:
        raise ConfigurationError("cleanup-wait needs threshold >= 1 and period > 0")
    loop = asyncio.get_running_loop()
    successes = rounds = 0
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        next_round = loop.time()
        while True:
            rounds += 1
            error = await _probe_round(session, resolve, host, port)
            successes = 0 if error else successes + 1
            if error:
                log.info("cleanup probe failed", extra={"endpoint": probe_endpoint, "error": error})
            else:
                log.info("cleanup probe succeeded", extra={"endpoint": probe_endpoint, "count": successes})
            if successes >= threshold:
                return rounds
            next_round += period
            await asyncio.sleep(max(0.0, next_round - loop.time()))


async def _probe_round(session: aiohttp.ClientSession, resolve: Resolver, host: str, port: int) -> str | None:
    """None if every address of ``host`` answered 200, else why not (one line)."""
    try:
        addresses = await resolve(host)
    except OSError as exc:
        return f"lookup of {host} failed: {exc}"
    if not addresses:
        return f"{host} resolved to no addresses"
    results = await asyncio.gather(*(_probe(session, a, port) for a in addresses))
    failures = [r for r in results if r is not None]
    return "; ".join(failures) if failures else None


async def _probe(session: aiohttp.ClientSession, address: str, port: int) -> str | None:
    netloc = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    url = f"http://{netloc}:{port}{HEALTH_PATH}"
    try:
        async with session.get(url, allow_redirects=False) as response:
            await response.read()
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{url}: {type(exc).__name__} {exc}".rstrip()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request per connection: 200 for GET/HEAD /healthz, 404 for anything else."""
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        ok = method in (b"GET", b"HEAD") and path == HEALTH_PATH.encode()
        status = b"200 OK" if ok else b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # a client that sends no complete request gets no answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def health_server(addr: str) -> AsyncIterator[list[tuple[str, int]]]:
    """Serve ``/healthz`` on ``addr`` (``host:port``, ``:port`` for every interface); yields the
    bound (host, port) pairs (port 0 picks a free one)."""
    host, port = split_endpoint(addr, listen=True)
    try:
        server = await asyncio.start_server(_answer, host or None, port, reuse_address=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc
    try:
        yield [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in server.sockets]
    finally:
        server.close()
        await server.wait_closed()


async def run_cleanup(
    config_path: Path | str,
    addr: str,
    stop: asyncio.Event,
    *,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> list[str]:
    """The ``cleanup`` subcommand: restore certs.d, then report success on ``/healthz`` until
    ``stop`` is set. Returns what the restore did. ``ready`` is told the bound addresses."""
    done = await asyncio.to_thread(cleanup_mirrors, config_path)
    for line in done:
        log.info("cleanup: %s", line)
    async with health_server(addr) as bound:
        if ready is not None:
            ready(bound)
        await stop.wait()
    return done

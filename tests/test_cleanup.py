"""cleanup (restore, then report on /healthz) and cleanup-wait (every address, threshold rounds),
against real sockets on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest

from spegel_py.cleanup import health_server, run_cleanup, split_endpoint, system_resolver, wait_for_cleanup
from spegel_py.errors import ConfigurationError
from spegel_py.hosts import configure_mirrors

BOUND = 10.0  # seconds: every wait in this module is bounded


class Probe:
    """A /healthz endpoint whose answer a test controls, counting the requests it gets."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests = 0
        self._counted = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        reason = b"OK" if self.status == 200 else b"Nope"
        head = b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (self.status, reason)
        writer.write(head)
        await writer.drain()
        async with self._counted:
            self.requests += 1
            self._counted.notify_all()
        writer.close()
        await writer.wait_closed()

    async def wait_for(self, requests: int) -> None:
        async with self._counted:
            await self._counted.wait_for(lambda: self.requests >= requests)


@contextlib.asynccontextmanager
async def probes(statuses: dict[str, int]) -> AsyncIterator[tuple[dict[str, Probe], int]]:
    """One Probe per loopback address, all on the same port (as pods behind one service)."""
    servers, out, port = [], {}, 0
    try:
        for address, status in statuses.items():
            probe = out[address] = Probe(status)
            servers.append(await asyncio.start_server(probe.handle, address, port))
            port = servers[0].sockets[0].getsockname()[1]  # the first one picks a free port
        yield out, port
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def resolver_of(addresses: Sequence[str]) -> Callable[[str], Awaitable[Sequence[str]]]:
    async def resolve(host: str) -> Sequence[str]:
        return list(addresses)
    return resolve


async def test_returns_after_threshold_rounds_when_every_address_is_healthy() -> None:
    async with probes({"127.0.0.31": 200, "127.0.0.32": 200}) as (found, port):
        async with asyncio.timeout(BOUND):
            rounds = await wait_for_cleanup(
                f"cleanup.spegel.svc:{port}", period=0.01, threshold=3, resolve=resolver_of(list(found))
            )
    assert rounds == 3
    assert [p.requests for p in found.values()] == [3, 3]


@pytest.mark.parametrize(
    "statuses",
    [
        pytest.param({"127.0.0.31": 200, "127.0.0.32": 503}, id="one-pod-not-done"),
        pytest.param({"127.0.0.31": 200, "127.0.0.32": 404}, id="one-pod-wrong-endpoint"),
    ],
)
async def test_keeps_waiting_while_any_address_fails(statuses: dict[str, int]) -> None:
    async with probes(statuses) as (found, port):
        task = asyncio.create_task(wait_for_cleanup(
            f"cleanup.spegel.svc:{port}", period=0.01, threshold=2, resolve=resolver_of(list(found))
        ))
        async with asyncio.timeout(BOUND):
            await found["127.0.0.32"].wait_for(5)  # several rounds have run and failed
        assert not task.done()
        found["127.0.0.32"].status = 200  # the last pod finishes its cleanup
        async with asyncio.timeout(BOUND):
            rounds = await task
    assert rounds >= 7


async def test_an_address_that_refuses_connections_counts_as_failure() -> None:
    async with probes({"127.0.0.31": 200}) as (found, port):
        resolve = resolver_of(["127.0.0.31", "127.0.0.39"])  # nothing listens on .39
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await wait_for_cleanup(f"svc:{port}", period=0.01, threshold=1, resolve=resolve)
        assert found["127.0.0.31"].requests >= 2


async def test_failed_or_empty_lookups_reset_the_count() -> None:
    answers: list[Sequence[str] | OSError] = [["127.0.0.31"], OSError("NXDOMAIN"), ["127.0.0.31"], [],
                                             ["127.0.0.31"], ["127.0.0.31"]]

    async def resolve(host: str) -> Sequence[str]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    async with probes({"127.0.0.31": 200}) as (_, port):
        async with asyncio.timeout(BOUND):
            rounds = await wait_for_cleanup(f"x:{port}", period=0.01, threshold=2, resolve=resolve)
    assert rounds == 6 and answers == []


async def test_system_resolver_reads_the_real_resolver() -> None:
    assert await system_resolver("127.0.0.31") == ["127.0.0.31"]
    assert "127.0.0.1" in await system_resolver("localhost")


@pytest.mark.parametrize("endpoint", ["nohost", "host:", "host:http", "host:0", "host:70000", ":80"])
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigurationError):
        split_endpoint(endpoint)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [("svc.ns.svc.cluster.local:8080", ("svc.ns.svc.cluster.local", 8080)), ("[::1]:80", ("::1", 80))],
)
def test_endpoints(endpoint: str, expected: tuple[str, int]) -> None:
    assert split_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/healthz", 200), ("HEAD", "/healthz", 200), ("GET", "/healthz?x=1", 200),
     ("GET", "/", 404), ("POST", "/healthz", 404), ("GET", "/healthzz", 404)],
)
async def test_health_server_answers_only_healthz(method: str, path: str, status: int) -> None:
    async with health_server("127.0.0.33:0") as bound:
        host, port = bound[0]
        url = f"http://{host}:{port}{path}"
        async with aiohttp.ClientSession() as session, session.request(method, url) as response:
            assert response.status == status


async def test_health_server_drops_a_client_that_sends_nothing_useful() -> None:
    async with health_server("127.0.0.33:0") as bound:
        reader, writer = await asyncio.open_connection(*bound[0])
        writer.write(b"garbage without end of headers")
        writer.write_eof()
        async with asyncio.timeout(BOUND):
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()


async def test_cleanup_restores_first_then_reports_healthy_until_stopped(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    (certs / "docker.io" / "hosts.toml").write_text('server = "https://registry-1.docker.io"\n')
    configure_mirrors(certs, ["https://docker.io"], ["http://127.0.0.1:30020"])
    stop = asyncio.Event()
    bound: list[tuple[str, int]] = []
    ready = asyncio.Event()

    def on_ready(addresses: list[tuple[str, int]]) -> None:
        bound.extend(addresses)
        ready.set()

    task = asyncio.create_task(run_cleanup(certs, "127.0.0.34:0", stop, ready=on_ready))
    ready_task = asyncio.create_task(ready.wait())
    await asyncio.wait({task, ready_task}, timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
    ready_task.cancel()
    assert bound, task.result()
    # by the time /healthz answers, the node is restored
    assert (certs / "docker.io" / "hosts.toml").read_text() == 'server = "https://registry-1.docker.io"\n'
    assert sorted(p.name for p in certs.iterdir()) == ["docker.io"]
    host, port = bound[0]

    async def resolve(_: str) -> Sequence[str]:
        return [host]

    async with asyncio.timeout(BOUND):
        assert await wait_for_cleanup(f"cleanup:{port}", period=0.01, threshold=3, resolve=resolve) == 3
    stop.set()
    async with asyncio.timeout(BOUND):
        done = await task
    assert any("restored" in line for line in done)


async def test_cleanup_refuses_an_address_it_cannot_bind(tmp_path: Path) -> None:
    async with health_server("127.0.0.35:0") as bound:
        with pytest.raises(ConfigurationError, match="cannot listen"):
            await run_cleanup(tmp_path, f"127.0.0.35:{bound[0][1]}", asyncio.Event())

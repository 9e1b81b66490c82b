"""The hostile-peer bar of issue 10 against a real ``spegel-py registry`` process.

Node N (the victim, no content, its own process so its RSS is measurable) finds an honest node
H (an OCI layout with one image) by static bootstrap, and relays H's layer through its mirror.
Six hostile peers, real libp2p hosts (:mod:`rawpeer`), then connect to N's router port:

- a flooder pipelines ``HOSTILE_FLOOD_KEYS`` ADD_PROVIDER records (default 200,000; the full
  million by hand: ``HOSTILE_FLOOD_KEYS=1000000``, see docs/operations.md) announcing
  malformed multiaddrs for itself;
- a bomber answers every request with a 4 MiB frame of empty entries, and sends one;
- a crowd answers with 50,000 closer peers that do not exist, on the poisoned address;
- a poisoner names H, and a peer that does not exist, as providers of every key at the
  poisoned address, and H as a closer peer there;
- a garbler names peers (empty and one-byte ids too) with malformed multiaddrs only;
- a stone pipelines requests on its eight streams and never reads a reply.

N's lookups ask all of them (a cluster of fewer than k nodes: every peer is among the closest).
Afterwards N is ready, relays H's layer again (found, not a latency bar), grew by <= 32 MiB of
RSS, and the listener on the poisoned address (on the registry port every node shares) saw no
HTTP request: the mirror only goes to IPs that an authenticated connection vouched for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from libp2p.abc import IHost
from rawpeer import (
    MALFORMED,
    Handler,
    PoisonListener,
    RawPeer,
    add_providers,
    answering,
    empty_entries,
    invented,
    never_read,
    open_stream,
    ping,
    request,
)
from support.daemon import Daemon, get, kill, make_layout, metric, start_node, stop, wait_ready
from support.poll import eventually

from spegel_py.routing.libp2p import wire
from spegel_py.routing.libp2p.addrs import tcp_addr
from spegel_py.routing.libp2p.host import dial, split_p2p
from spegel_py.routing.libp2p.limits import RecordLimits
from spegel_py.routing.libp2p.streams import PROTOCOL

pytestmark = pytest.mark.process

FLOOD = int(os.environ.get("HOSTILE_FLOOD_KEYS", "200000"))
H_IP, N_IP, POISON_IP = "127.0.0.181", "127.0.0.182", "127.0.0.189"
RAW_IPS = [f"127.0.0.{i}" for i in range(183, 189)]
MiB = 1 << 20


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def drain_log(daemon: Daemon, path: Path) -> threading.Thread:
    """Copy the node's stderr to ``path`` as it comes: hostile input makes it log, and an unread
    pipe would block the node once full."""

    def copy() -> None:
        assert daemon.proc.stderr is not None
        with path.open("wb") as out, contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in iter(daemon.proc.stderr.readline, b""):
                out.write(line)
                out.flush()

    thread = threading.Thread(target=copy, name=f"log-{path.name}", daemon=True)
    thread.start()
    return thread


def common_ports(ips: list[str], count: int) -> tuple[int, ...]:
    from harness.cluster import common_free_port

    ports: list[int] = []
    while len(ports) < count:
        port = common_free_port(ips)
        if port not in ports:
            ports.append(port)
    return tuple(ports)


class Cluster:
    def __init__(self, h: Daemon, n: Daemon, routers: tuple[str, str], layer: str, port: int) -> None:
        self.h, self.n, self.layer, self.port = h, n, layer, port
        self.h_router, self.n_router = routers

    def relays_the_layer(self) -> bool:
        status, body = get(f"{self.n.base}/v2/test/app/blobs/{self.layer}?ns=127.0.0.1%3A5000")
        return status == 200 and len(body) == MiB

    def ready(self) -> bool:
        return get(self.n.base + "/readyz", timeout=2)[0] == 200


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    ports = common_ports([H_IP, N_IP, POISON_IP], 3)
    digests = make_layout(tmp_path / "h-layouts", MiB)
    (tmp_path / "n-layouts").mkdir()
    h, h_router = start_node(tmp_path / "h-layouts", tmp_path / "h-data", H_IP, ports)
    n: Daemon | None = None
    try:
        drain_log(h, tmp_path / "h.log")
        wait_ready(h, within=60)  # the machine may be loaded
        bootstrap = ("--bootstrap-kind", "static", "--static-bootstrap-peers", h_router)
        n, n_router = start_node(tmp_path / "n-layouts", tmp_path / "n-data", N_IP, ports, *bootstrap)
        drain_log(n, tmp_path / "n.log")
        wait_ready(n, within=60)
        yield Cluster(h, n, (h_router, n_router), digests["layer"], ports[0])
    finally:
        for d in (n, h):
            if d is not None:
                try:
                    stop(d)
                finally:
                    kill(d)


@pytest.fixture
async def raws() -> AsyncIterator[dict[str, RawPeer]]:
    peers: dict[str, RawPeer] = {}
    try:
        names = ("flooder", "bomber", "crowd", "poisoner", "garbler", "stone")
        for name, ip in zip(names, RAW_IPS, strict=True):
            peers[name] = RawPeer(ip)
            await peers[name].start()
        yield peers
    finally:
        for p in peers.values():
            await p.close()


async def identify(host: IHost, maddr: str) -> str:
    """``maddr`` with the peer id of the router there (learned by dialling it)."""
    pid = await dial(host, split_p2p(maddr)[0], None)
    return f"{maddr}/p2p/{pid.to_base58()}"


async def set_handler(host: IHost, handler: Handler) -> None:
    host.set_stream_handler(PROTOCOL, handler)


async def send_bomb(host: IHost, addr: str, bomb: bytes) -> wire.Message | None:
    """The 4 MiB frame as a request (over the 16 KiB a request may take: the stream ends)."""
    stream = await open_stream(host, addr)
    try:
        await stream.write(bomb)
    except Exception:  # reset while the 4 MiB were still being written
        return None
    return await request(stream, wire.Message(wire.PING))


async def test_hostile_peers_leave_the_node_ready_bounded_and_its_mirror_on_vouched_ips(
    cluster: Cluster, raws: dict[str, RawPeer]
) -> None:
    poison = PoisonListener(POISON_IP, cluster.port)
    try:
        await run_the_attacks(cluster, raws, poison)
    finally:
        poison.close()


async def run_the_attacks(cluster: Cluster, raws: dict[str, RawPeer], poison: PoisonListener) -> None:
    c = cluster
    assert await eventually(lambda: asyncio.to_thread(c.relays_the_layer), within=20)
    before = rss(c.n.proc.pid)

    addr = await raws["flooder"].call(identify, c.n_router)
    print({name: raw.host.get_id().to_base58() for name, raw in raws.items()}, "N:", addr)
    h_pid = split_p2p(await raws["flooder"].call(identify, c.h_router))[1]
    assert h_pid is not None
    h_id = h_pid.to_bytes()
    poisoned = (tcp_addr(POISON_IP, c.port),)
    bomb = empty_entries()
    # 50,000 peers that do not exist, 12,500 per reply (a reply over streams.MAX_REPLY, 1 MiB, is
    # not even read: these are read, and all but wire.MAX_CLOSER of each are skipped)
    replies = [wire.Message(wire.FIND_NODE, closer=invented(12_500, poisoned)) for _ in range(4)]
    crowds = itertools.cycle([wire.frame(wire.encode(r)) for r in replies])

    def poisoner_reply(msg: wire.Message) -> bytes:
        lies = [wire.PeerInfo(h_id, poisoned), *invented(3, poisoned)]
        reply = wire.Message(msg.type, key=msg.key, closer=[wire.PeerInfo(h_id, poisoned)])
        if msg.type == wire.GET_PROVIDERS:
            reply.providers = lies
        return wire.frame(wire.encode(reply))

    def garbler_reply(msg: wire.Message) -> bytes:
        junk = [wire.PeerInfo(pid, MALFORMED) for pid in (b"", b"\x00", *(p.id for p in invented(8, ())))]
        reply = wire.Message(msg.type, key=msg.key, closer=junk)
        if msg.type == wire.GET_PROVIDERS:
            reply.providers = junk
        return wire.frame(wire.encode(reply))

    handlers = {
        "bomber": answering(lambda msg: bomb),
        "crowd": answering(lambda msg: next(crowds)),
        "poisoner": answering(poisoner_reply),
        "garbler": answering(garbler_reply),
    }
    for name, handler in handlers.items():
        await raws[name].call(set_handler, handler)
    for name in ("bomber", "crowd", "poisoner", "garbler", "stone"):
        assert await raws[name].call(ping, addr) == wire.Message(wire.PING)  # admitted into N's table

    limits = RecordLimits()
    await asyncio.gather(
        raws["flooder"].call(add_providers, addr, range(FLOOD), [], MALFORMED[:3]),
        raws["stone"].call(never_read, addr, 8, 5000),
        raws["bomber"].call(send_bomb, addr, bomb),
        lookups(c, 10),  # each one asks every peer of N (fewer than k): the lies are read
    )
    over = 'spegel_router_provider_records_refused_total{reason="peer_limit"}'
    await eventually(
        lambda: asyncio.to_thread(lambda: metric(c.n, over) >= FLOOD - limits.per_peer),
        within=max(120, FLOOD / 2500),  # a loaded machine reads ~5,000 records/s
        what="the flood read to its end",
    )
    await lookups(c, 10)

    assert c.n.proc.poll() is None and await asyncio.to_thread(c.ready)
    await eventually(lambda: asyncio.to_thread(c.relays_the_layer), within=30, what="H's layer relayed by N")
    grown = rss(c.n.proc.pid) - before
    print(f"N's RSS grew by {grown / MiB:.1f} MiB (flood of {FLOOD} records)")
    assert grown <= 32 * MiB
    assert poison.http_requests == 0, "the mirror sent HTTP to an address no connection vouched for"
    print(f"libp2p dials that reached the poisoned address: {poison.connections}")


async def lookups(c: Cluster, n: int) -> None:
    """``n`` mirror requests for blobs nobody has: each is a lookup of N's that asks its peers."""
    for _ in range(n):
        digest = "sha256:" + os.urandom(32).hex()
        await asyncio.to_thread(get, f"{c.n.base}/v2/test/app/blobs/{digest}?ns=127.0.0.1%3A5000")

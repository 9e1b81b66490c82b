"""Several spegel-py libp2p nodes as separate processes on distinct loopback addresses.

Each node is ``tests/routing/libp2p_node.py`` (one router per process, driven over stdin/stdout),
listening on its own 127.0.0.x, so connections, identities and timing are as between machines.
Records live 3 s and are reprovided every second, so expiry is observable within a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support import poll
from support.daemon import free_port

from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL

pytestmark = pytest.mark.process  # every test drives nodes in child processes

DRIVER = Path(__file__).with_name("libp2p_node.py")
ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 30.0  # seconds a node may take to answer one command
START_TIMEOUT = 120.0  # seconds a node may take to start (ten start at once on two cores)
DEADLINE = 30.0  # seconds an eventual condition may take
RECORD_TTL = 3.0
LOOKUP_TIMEOUT = 1.5


class Node:
    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.proc = proc
        self.peer_id: str = hello["peer_id"]
        self.addrs: list[str] = hello["addrs"]
        self._lock = asyncio.Lock()

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), REPLY_TIMEOUT)
        if not line:
            raise AssertionError(f"node {self.peer_id} exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def lookup(self, key: str, limit: int = 3) -> tuple[list[str], float]:
        reply = await self.ask(op="lookup", key=key, limit=limit)
        return [p[0] for p in reply["peers"]], reply["ms"]

    async def stop(self) -> None:
        """Terminate by pid (SIGTERM: orderly close), then SIGKILL if it does not exit in time."""
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:  # exited, not yet reaped
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()


Spawn = Callable[..., Awaitable[Node]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    nodes: list[Node] = []

    async def start(ip: str, *bootstrap: Node | str, **opts: Any) -> Node:
        args = [sys.executable, str(DRIVER), "--ip", ip, "--data-dir", str(tmp_path / ip)]
        args += [
            "--record-ttl",
            str(opts.get("record_ttl", RECORD_TTL)),
            "--reprovide",
            str(opts.get("reprovide", 1.0)),
        ]
        args += ["--lookup-timeout", str(LOOKUP_TIMEOUT), "--cache-ttl", "0.2"]
        args += ["--bootstrap-interval", str(opts.get("bootstrap_interval", 0.5))]
        args += ["--refresh-interval", str(opts.get("refresh_interval", 1.0))]
        if bootstrap:
            args += ["--bootstrap", *[b if isinstance(b, str) else b.addrs[0] for b in bootstrap]]
        if "port" in opts:
            args += ["--port", str(opts["port"])]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if not line:
            await proc.wait()
            pytest.fail(f"node on {ip} failed to start")
        node = Node(proc, json.loads(line))
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


eventually = partial(poll.eventually, within=DEADLINE, interval=0.1)  # a check is a lookup: 10 a second


async def finds(node: Node, key: str, provider: Node) -> bool:
    peers, _ = await node.lookup(key)
    return provider.peer_id in peers


async def test_late_joiner_finds_records_advertised_before_it_started(spawn: Spawn) -> None:
    a = await spawn("127.0.0.31")
    b = await spawn("127.0.0.32", a)
    c = await spawn("127.0.0.33", a)
    keys = [f"sha256:{i:064x}" for i in range(300)]
    await a.ask(op="advertise", keys=keys[:150])
    await b.ask(op="advertise", keys=keys[150:])
    await eventually(lambda: finds(c, keys[0], a))
    late = await spawn("127.0.0.34", c)  # knows only c; learns a and b through it
    await eventually(lambda: finds(late, keys[-1], b))
    for i, key in enumerate(keys):
        peers, _ = await late.lookup(key)
        assert peers == [(a if i < 150 else b).peer_id], key
    assert (await late.ask(op="status"))["peers"] == 3


async def test_nodes_started_together_hold_every_record_without_waiting_for_a_reprovide(
    spawn: Spawn,
) -> None:
    """The product's timings (reprovide 15 min, bootstrap rounds 10 s / 60 s, bucket refresh
    10 min), ten nodes started at once, each advertising as it starts: in a cluster of at most
    k + 1 nodes every node must come to hold every other node's record, by placement alone."""
    product = {"record_ttl": RECORD_LIFETIME, "reprovide": REPROVIDE_INTERVAL, "bootstrap_interval": 10.0,
               "refresh_interval": 30.0}  # fmt: skip
    port = free_port("127.0.0.71")
    seed_addr = f"/ip4/127.0.0.71/tcp/{port}"  # as a static bootstrap list names it: no peer id
    nodes = list(
        await asyncio.gather(
            spawn("127.0.0.71", port=port, **product),
            *(spawn(f"127.0.0.{72 + i}", seed_addr, **product) for i in range(9)),
        )
    )
    keys = [[f"sha256:{i:032x}{j:032x}" for j in range(32)] for i in range(len(nodes))]
    await asyncio.gather(*(n.ask(op="advertise", keys=keys[i]) for i, n in enumerate(nodes)))
    # lookups while records are being placed, as the mirror makes them when pulls start at once
    await asyncio.gather(*(n.lookup(k[0]) for i, n in enumerate(nodes) for j, k in enumerate(keys) if i != j))

    async def missing() -> list[tuple[int, int, str]]:
        """(holder, owner, whether each has the other in its table) without the owner's records."""
        helds = [(await n.ask(op="held"))["held"] for n in nodes]
        return [
            (i, j, f"{'+' if o.peer_id in h else '-'}{'+' if nodes[i].peer_id in helds[j] else '-'}")
            for i, h in enumerate(helds)
            for j, o in enumerate(nodes)
            if j != i and not h.get(o.peer_id)
        ]

    async def placed() -> bool:
        return not await missing()

    try:
        await eventually(placed, within=20)
    except AssertionError:
        ids = [n.peer_id for n in nodes]
        pytest.fail(f"(holder, owner) pairs without the owner's record: {await missing()}; ids {ids}")
    for i, asker in enumerate(nodes):  # every lookup finds every owner, at the owner's own IP
        for j, owner in enumerate(nodes):
            if i != j:
                reply = await asker.ask(op="lookup", key=keys[j][-1], limit=3)
                assert [p[:2] for p in reply["peers"]] == [[owner.peer_id, f"127.0.0.{71 + j}"]], (i, j)


async def test_killed_node_is_only_a_hint_and_lookups_stay_prompt(spawn: Spawn) -> None:
    a = await spawn("127.0.0.41")
    b = await spawn("127.0.0.42", a)
    c = await spawn("127.0.0.43", a)
    key = "sha256:" + "de" * 32
    await b.ask(op="advertise", keys=[key])
    await eventually(lambda: finds(c, key, b))
    await b.kill()

    async def b_dropped() -> bool:
        return (await c.ask(op="status"))["peers"] == 1 and (await a.ask(op="status"))["peers"] == 1

    await eventually(b_dropped)
    for node in (a, c):  # b's record may still be returned (a hint) until it expires, but promptly
        _, ms = await node.lookup(key)
        assert ms < (LOOKUP_TIMEOUT + 0.5) * 1000
        _, ms = await node.lookup("sha256:" + "00" * 32)
        assert ms < (LOOKUP_TIMEOUT + 0.5) * 1000

    async def expired() -> bool:
        return (await c.lookup(key))[0] == [] and (await a.lookup(key))[0] == []

    await eventually(expired, within=RECORD_TTL * 4)
    assert (await c.ask(op="status"))["ready"]


async def test_withdrawn_keys_stop_being_reprovided(spawn: Spawn) -> None:
    a = await spawn("127.0.0.51")
    b = await spawn("127.0.0.52", a)
    kept, dropped = "registry.local/app:v1", "registry.local/app:v0"
    await a.ask(op="advertise", keys=[kept, dropped])
    await eventually(lambda: finds(b, dropped, a))
    await a.ask(op="withdraw", keys=[dropped])
    withdrawn_at = time.monotonic()

    async def gone() -> bool:
        return (await b.lookup(dropped))[0] == []

    await eventually(gone, within=RECORD_TTL * 4)
    # the kept key outlives several record lifetimes: it is being reprovided
    while time.monotonic() - withdrawn_at < RECORD_TTL * 2:
        assert await finds(b, kept, a)
        await asyncio.sleep(0.2)
    assert (await b.lookup(dropped))[0] == []


async def test_lookups_end_by_their_deadline_when_a_peer_hangs(spawn: Spawn) -> None:
    a = await spawn("127.0.0.61")
    b = await spawn("127.0.0.62", a)
    c = await spawn("127.0.0.63", a)

    async def meshed() -> bool:
        return all([(await n.ask(op="status"))["peers"] == 2 for n in (a, b, c)])

    await eventually(meshed)
    b.proc.send_signal(signal.SIGSTOP)  # connection open, no answers: worse than dead
    try:
        start = time.monotonic()
        peers, ms = await c.lookup("sha256:" + "11" * 32)
        assert peers == []
        assert ms < (LOOKUP_TIMEOUT + 0.5) * 1000
        assert time.monotonic() - start < LOOKUP_TIMEOUT + 2
    finally:
        b.proc.send_signal(signal.SIGCONT)

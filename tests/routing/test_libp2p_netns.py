"""spegel-py libp2p nodes in network namespaces: each node its own network stack and private IP.

Unlike loopback, every node listens on the same port (Spegel's DaemonSet layout), bootstraps from
a bare address without a peer id (the ``dns`` bootstrap's situation: the id is learned in the
handshake), and is reached through a bridge, so the registry address a lookup yields is the
provider's own IP. Namespaces, veths and the bridge are removed whatever the outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from harness.netns import Netns, NetnsNetwork
from harness.require import require, require_root
from support import poll

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("libp2p_node.py")
ROOT = Path(__file__).resolve().parents[2]
PORT = 5001  # the same libp2p port on every node
REGISTRY_PORT = 5000
SUBNET = "10.232.7"  # private addresses that exist only inside this test's namespaces
REPLY_TIMEOUT = 30.0
DEADLINE = 30.0


class NsNode:
    def __init__(self, ns: Netns, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.ns, self.proc, self.peer_id = ns, proc, hello["peer_id"]

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), REPLY_TIMEOUT)
        assert line, f"node in {self.ns.name} exited"
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


Start = Callable[..., Awaitable[NsNode]]


@pytest.fixture
async def netns_nodes(tmp_path: Path) -> AsyncIterator[Start]:
    require_root("network namespaces")
    require("ip")
    nodes: list[NsNode] = []
    with NetnsNetwork(subnet=SUBNET) as net:

        async def start(octet: int, *bootstrap: str) -> NsNode:
            ns = net.add(octet)
            argv = [sys.executable, str(DRIVER), "--ip", ns.ip, "--port", str(PORT)]
            argv += ["--data-dir", str(tmp_path / ns.name), "--registry-port", str(REGISTRY_PORT)]
            argv += ["--record-ttl", "3", "--reprovide", "1", "--lookup-timeout", "1.5", "--cache-ttl", "0.2"]
            if bootstrap:
                argv += ["--bootstrap", *bootstrap]
            proc = await asyncio.create_subprocess_exec(
                *ns.argv(argv),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), REPLY_TIMEOUT)
            if not line:
                await proc.wait()
                pytest.fail(f"node in {ns.name} failed to start")
            node = NsNode(ns, proc, json.loads(line))
            nodes.append(node)
            return node

        try:
            yield start
        finally:
            await asyncio.gather(*(n.stop() for n in nodes))  # before the namespaces go


eventually = partial(poll.eventually, within=DEADLINE, interval=0.1)  # a check is a lookup: 10 a second


async def test_nodes_in_namespaces_find_each_other_by_bare_address(netns_nodes: Start) -> None:
    seed = await netns_nodes(1)
    bare = f"/ip4/{SUBNET}.1/tcp/{PORT}"  # no /p2p/<id>: learned on dial, like DNS bootstrap
    a = await netns_nodes(2, bare)
    b = await netns_nodes(3, bare)
    key = "sha256:" + "5e" * 32
    await a.ask(op="advertise", keys=[key])

    async def b_finds_a() -> bool:
        reply = await b.ask(op="lookup", key=key)
        return bool(reply["peers"])

    await eventually(b_finds_a)
    reply = await b.ask(op="lookup", key=key)
    assert reply["peers"] == [[a.peer_id, f"{SUBNET}.2", REGISTRY_PORT]]
    for node in (seed, a, b):
        assert (await node.ask(op="status"))["peers"] == 2
    a.proc.kill()  # a dies: b's lookups stay prompt, and the record goes with its validity
    await a.proc.wait()

    async def forgotten() -> bool:
        reply = await b.ask(op="lookup", key=key)
        assert reply["ms"] < 2000
        return reply["peers"] == []

    await eventually(forgotten, within=15)

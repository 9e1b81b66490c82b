"""Issue 11's slow-drip repro with default settings, in-process: node B (the real registry server
with a Mirror) relays a 4 MiB blob from a provider that sends 256 KiB at once and then a byte
every 2.5 s, with (or without) an honest provider beside it. Prints each GET's time and result.

    PYTHONPATH=$PWD:$PWD/tests:$PWD/tests/relay .venv/bin/python bench/floor_repro.py

It reuses the relay tests' fake peers (tests/relay/relaysupport.py) and the real registry server
(tests/relay/nodesupport.py).
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
from nodesupport import start_node
from relaysupport import Cluster, FakeRouter, digest_of

from spegel_py.relay.bufferpool import BufferPool
from spegel_py.relay.mirror import Mirror
from spegel_py.relay.peerclient import PeerClient
from spegel_py.relay.settings import MirrorSettings
from spegel_py.store.memory import MemoryStore


async def one(session, url, digest):
    t0 = time.monotonic()
    try:
        async with session.get(url) as resp:
            body = await resp.read()
            ok = resp.status == 200 and digest_of(body) == digest
            return time.monotonic() - t0, "ok" if ok else f"WRONG {resp.status}"
    except aiohttp.ClientPayloadError:
        return time.monotonic() - t0, "cut"


async def scenario(honest_too: bool, concurrent: bool, n: int, gap: float) -> None:
    cluster = Cluster()
    data = os.urandom(4 << 20)
    digest = digest_of(data)
    drip = await cluster.peer({digest: data}, drip_after=256 << 10, drip_every=2.5)
    providers = [drip.peer]
    if honest_too:
        providers.append((await cluster.peer({digest: data})).peer)
    pool = BufferPool(count=64, size=768 << 10)
    mirror = Mirror(FakeRouter(providers), client=PeerClient(), pool=pool, settings=MirrorSettings())
    node = await start_node("127.0.0.70", MemoryStore(), mirror)
    url = f"{node.url}/v2/library/app/blobs/{digest}?ns=docker.io"
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        if concurrent:
            results = await asyncio.gather(*(one(session, url, digest) for _ in range(n)))
        else:
            results = []
            for i in range(n):
                results.append(await one(session, url, digest))
                if i < n - 1:
                    await asyncio.sleep(gap)
        times = [t for t, _ in results]
        outcomes = {o: sum(1 for _, x in results if x == o) for o in {x for _, x in results}}
        print(
            f"honest_beside={honest_too} concurrent={concurrent} n={n} gap={gap}s: "
            f"outcomes={outcomes} min={min(times):.2f}s max={max(times):.2f}s "
            f"resumed={mirror.stats.resumed} aborted={mirror.stats.aborted} "
            f"pool_free={pool.free}/{pool.capacity}"
        )
    finally:
        await session.close()
        await node.close()
        await cluster.close()


async def main() -> None:
    await scenario(True, True, 12, 0)
    await scenario(True, False, 12, 6.0)
    await scenario(False, False, 3, 0)


asyncio.run(main())

"""One spegel-py libp2p router in its own process, driven by JSON lines on stdin (tests only).

    python tests/routing/libp2p_node.py --ip 127.0.0.31 --data-dir DIR [--bootstrap MADDR ...]

Prints ``{"peer_id": ..., "addrs": [...]}`` once listening, then answers one JSON line per
command: ``{"op": "advertise"|"withdraw", "keys": [...]}``, ``{"op": "lookup", "key": K,
"limit": N}`` -> ``{"peers": [[peer_id, host, port], ...], "ms": elapsed}``, ``{"op": "status"}``
-> ``{"ready": bool, "peers": n}``, ``{"op": "held"}`` -> records stored per known provider,
``{"op": "exit"}``. Ends on EOF or SIGTERM. ``NODE_DEBUG=1`` logs the DHT's debug lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from libp2p.peer.id import ID

from spegel_py.routing.base import RECORD_LIFETIME, REPROVIDE_INTERVAL
from spegel_py.routing.libp2p.router import Libp2pRouter


class Static:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


async def handle(router: Libp2pRouter, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "advertise":
        await router.advertise(cmd["keys"])
        return {"ok": True}
    if op == "withdraw":
        await router.withdraw(cmd["keys"])
        return {"ok": True}
    if op == "lookup":
        start = time.perf_counter()
        peers = [
            [p.peer_id, p.host, p.port] async for p in router.lookup(cmd["key"], limit=cmd.get("limit", 3))
        ]
        return {"peers": peers, "ms": (time.perf_counter() - start) * 1000}
    if op == "status":
        return {"ready": router.ready(), "peers": router.peer_count()}
    if op == "held":  # records this node stores per provider it knows (a diagnostic snapshot)
        node = router._node  # test driver: reads the node's record store directly
        assert node is not None
        store = node._store
        return {"held": {b58: store.held_by(ID.from_base58(b58).to_bytes()) for b58 in router.peers()}}
    return {"error": f"unknown op {op}"}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--bootstrap", nargs="*", default=[])
    ap.add_argument("--registry-port", type=int, default=5000)
    ap.add_argument("--record-ttl", type=float, default=RECORD_LIFETIME)
    ap.add_argument("--reprovide", type=float, default=REPROVIDE_INTERVAL)
    ap.add_argument("--lookup-timeout", type=float, default=2.0)
    ap.add_argument("--cache-ttl", type=float, default=5.0)
    ap.add_argument("--bootstrap-interval", type=float, default=0.5)
    ap.add_argument("--refresh-interval", type=float, default=1.0)
    args = ap.parse_args()
    if os.environ.get("NODE_DEBUG"):  # diagnostics: the DHT's debug log on stderr, by node IP
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"{args.ip} %(name)s %(message)s"))
        logging.getLogger("spegel_py.routing.libp2p").addHandler(handler)
        logging.getLogger("spegel_py.routing.libp2p").setLevel(logging.DEBUG)
    router = Libp2pRouter(
        listen_addrs=[f"/ip4/{args.ip}/tcp/{args.port}"],
        data_dir=args.data_dir,
        registry_port=args.registry_port,
        bootstrap=Static(args.bootstrap) if args.bootstrap else None,
        record_ttl=args.record_ttl,
        reprovide_interval=args.reprovide,
        lookup_timeout=args.lookup_timeout,
        cache_ttl=args.cache_ttl,
        bootstrap_interval=args.bootstrap_interval,
        refresh_interval=args.refresh_interval,
    )
    await router.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"peer_id": router.peer_id, "addrs": router.listen_multiaddrs()}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for t in (line_task, stop_task):
                if t not in done:
                    t.cancel()
            if line_task not in done:
                break
            line = line_task.result()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                break
            print(json.dumps(await handle(router, cmd)), flush=True)
    finally:
        await router.close()


if __name__ == "__main__":
    asyncio.run(main())

"""What the libp2p router exposes for the metrics layer and ``/debug/web``, on two real routers.

Records held for others (``spegel_router_provider_records``), the peer ids in the routing table,
and the periodic reprovide's timing (``spegel_reprovide_duration_seconds``), delivered on the
event loop that started the router. Records live 3 s and are reprovided every 0.5 s here.
"""

from __future__ import annotations

import threading
from pathlib import Path

from support.poll import eventually

from spegel_py.routing.libp2p.router import Libp2pRouter

KEYS = [f"sha256:{i:064x}" for i in range(10)]


class Static:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def peers(self) -> list[str]:
        return self.addrs


async def test_records_peers_and_reprovides_are_counted(tmp_path: Path) -> None:
    reprovides: list[tuple[int, float, str]] = []

    def reprovided(keys: int, seconds: float) -> None:
        reprovides.append((keys, seconds, threading.current_thread().name))

    def router(name: str, ip: str, **options: object) -> Libp2pRouter:
        return Libp2pRouter(
            listen_addrs=[f"/ip4/{ip}/tcp/0"],
            data_dir=tmp_path / name,
            registry_port=5000,
            record_ttl=3.0,
            reprovide_interval=0.5,
            refresh_interval=0.2,
            bootstrap_interval=0.2,
            **options,  # alone / bootstrap / on_reprovide
        )

    a = router("a", "127.0.0.86", alone=True, on_reprovide=reprovided)
    b: Libp2pRouter | None = None
    try:
        assert a.peers() == [] and a.provider_records() == 0  # not started yet
        await a.start()
        b = router("b", "127.0.0.87", bootstrap=Static(a.listen_multiaddrs()))
        await b.start()
        other = b
        await eventually(lambda: a.peers() == [other.peer_id] and other.peers() == [a.peer_id], within=20)

        await a.advertise(KEYS)
        await eventually(lambda: other.provider_records() == len(KEYS), within=10)
        assert a.provider_records() == 0  # its own keys are advertised, not records it holds

        await eventually(lambda: any(keys == len(KEYS) for keys, _, _ in reprovides), within=10)
        assert all(0 <= seconds < 1.0 for _, seconds, _ in reprovides)
        assert {thread for _, _, thread in reprovides} == {threading.current_thread().name}

        await a.withdraw(KEYS)  # no more reprovides: b's records expire after their 3 s
        await eventually(lambda: other.provider_records() == 0, within=15)
    finally:
        for r in (b, a):
            if r is not None:
                await r.close()
    assert a.peers() == [] and a.provider_records() == 0  # closed

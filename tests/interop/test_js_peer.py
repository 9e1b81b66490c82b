"""The js-libp2p interop peer works on its own: two js nodes find each other's providers.

This proves the harness (npm install, control protocol, Spegel's protocol id and key derivation)
before any spegel-py node takes part, so a failing interop test points at spegel-py.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from jspeer import ensure_installed, js_peers
from support.poll import eventually

pytestmark = pytest.mark.integration

KEYS = [
    "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
    "docker.io/library/nginx:1.25",
    "127.0.0.1:5000/team/app:v1",
]


def spegel_cid(key: str) -> str:
    """Spegel's DHT key, computed independently: CIDv1, raw codec, sha2-256 of the UTF-8 key."""
    multihash = b"\x12\x20" + hashlib.sha256(key.encode()).digest()
    return "b" + base64.b32encode(b"\x01\x55" + multihash).decode().lower().rstrip("=")


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    ensure_installed()


async def test_two_js_peers_find_each_others_providers() -> None:
    async with js_peers("127.0.0.21", "127.0.0.22") as (a, b):
        assert await a.dial(b.addr) == b.peer_id

        async def both_routed() -> bool:
            return await a.routing_table_size() > 0 and await b.routing_table_size() > 0

        await eventually(both_routed, within=10, interval=0.05)
        for i, key in enumerate(KEYS):
            provider, seeker = (a, b) if i % 2 == 0 else (b, a)
            assert await provider.provide(key) == spegel_cid(key)
            found = await seeker.find_providers(key)
            assert provider.peer_id in found, (key, found)
            assert any(addr.startswith("/ip4/127.0.0.2") for addr in found[provider.peer_id])
        # A key nobody provides yields no providers (the lookup can fail).
        assert await a.find_providers("sha256:" + "0" * 64, timeout_ms=1000) == {}

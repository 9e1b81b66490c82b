"""A private network shared with js-libp2p (``@libp2p/pnet``): with the same pre-shared key each
side finds the other's providers, whichever side dials; with different keys, or a key on one side
only, neither connects nor learns anything.

js-libp2p's pnet shares no code with ours (``spegel_py/routing/libp2p/pnet.py``), so this checks
the protocol itself: the key file format, the 24-byte nonces, XSalsa20, and that no order of the
two sides' first writes leaves both waiting.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from pathlib import Path

import pytest
from jspeer import JsPeer, ensure_installed, js_peers, lookup
from jspeer import py_router as start_py_router
from support.poll import eventually

from spegel_py.routing.bootstrap import StaticBootstrapper
from spegel_py.routing.libp2p.psk import PreSharedKey, read_file
from spegel_py.routing.libp2p.router import Libp2pRouter

pytestmark = pytest.mark.integration

PY_IP = "127.0.0.43"
JS_IP = "127.0.0.44"


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    ensure_installed()


def key_file(tmp_path: Path, name: str) -> Path:
    """A new key, written the way docs/operations.md tells an operator to (with openssl there)."""
    path = tmp_path / name
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{os.urandom(32).hex()}\n")
    return path


class CountingBootstrap(StaticBootstrapper):
    """The static bootstrapper, counting the rounds that asked it."""

    calls = 0

    async def peers(self) -> list[str]:
        self.calls += 1
        return await super().peers()


def py_router(
    tmp_path: Path, psk: PreSharedKey | None, bootstrap: StaticBootstrapper | None
) -> AsyncContextManager[Libp2pRouter]:
    return start_py_router(tmp_path / "py", PY_IP, bootstrap, bootstrap_interval=0.3, cache_ttl=0, psk=psk)


async def connected(router: Libp2pRouter, js: JsPeer, *, py_table: bool) -> None:
    """js has py in its routing table (learnt through identify); so has py if ``py_table``
    (py's table takes a peer that dialled it only later: a walk or a request proves it)."""

    async def ready() -> bool:
        in_py = router.peers() == [js.peer_id] or not py_table
        return in_py and await js.routing_table_size() > 0

    await eventually(ready, within=20, interval=0.05)


@pytest.mark.parametrize("dialler", ["py", "js"])
async def test_with_the_same_key_each_side_finds_the_others_providers(tmp_path: Path, dialler: str) -> None:
    path = key_file(tmp_path, "psk.key")
    async with js_peers(JS_IP, psk_file=path) as (js,):
        bootstrap = StaticBootstrapper([js.addr]) if dialler == "py" else None
        async with py_router(tmp_path, read_file(path), bootstrap) as router:
            if dialler == "js":
                assert await js.dial(router.listen_multiaddrs()[0]) == router.peer_id
            await connected(router, js, py_table=dialler == "py")
            ours, theirs = "sha256:" + "a1" * 32, "docker.io/library/nginx:1.25"
            await router.advertise([ours])
            found = await js.find_providers(ours, timeout_ms=5000)
            assert router.peer_id in found, found
            assert any(a.startswith(f"/ip4/{PY_IP}/tcp/") for a in found[router.peer_id]), found
            await js.provide(theirs)
            assert [p.peer_id for p in await lookup(router, theirs)] == [js.peer_id]
            # keys nobody provides: nobody found (the checks above can fail)
            assert await js.find_providers("sha256:" + "cd" * 32, timeout_ms=1000) == {}
            assert await lookup(router, "sha256:" + "ef" * 32) == []


MISMATCHES = {  # which sides have a key (each its own)
    "different keys": ("py", "js"),
    "a key on py only": ("py", None),
    "a key on js only": (None, "js"),
}


@pytest.mark.parametrize(("py_key", "js_key"), MISMATCHES.values(), ids=list(MISMATCHES))
async def test_without_the_same_key_neither_side_connects_or_learns(
    tmp_path: Path, py_key: str | None, js_key: str | None
) -> None:
    js_file = key_file(tmp_path, "js.key") if js_key else None
    py_psk = read_file(key_file(tmp_path, "py.key")) if py_key else None
    async with js_peers(JS_IP, psk_file=js_file) as (js,):
        bootstrap = CountingBootstrap([js.addr])
        async with py_router(tmp_path, py_psk, bootstrap) as router:
            ours, theirs = "sha256:" + "b2" * 32, "sha256:" + "c3" * 32
            await router.advertise([ours])
            with contextlib.suppress(RuntimeError):  # alone, js's provide runs to its timeout
                await js.call("provide", key=theirs, timeoutMs=500)
            with pytest.raises(RuntimeError, match="js peer dial failed"):
                await js.dial(router.listen_multiaddrs()[0])
            # py's first round has dialled js and given up (on a key mismatch, py refuses js's
            # first bytes at once, but js may wait for more of py's: then py's dial times out)
            await eventually(lambda: bootstrap.calls >= 2, within=30)
            assert router.peers() == [] and await js.connected_peers() == []
            assert await js.routing_table_size() == 0
            assert await js.find_providers(ours, timeout_ms=1000) == {}
            assert await lookup(router, theirs) == []

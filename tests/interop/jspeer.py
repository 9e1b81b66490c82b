"""Drive the js-libp2p kad-dht peer (``peer.mjs``) from asyncio tests.

js-libp2p shares no code with py-libp2p or go-libp2p, so a spegel-py node that finds its
providers (and is found by it) on ``/spegel/kad/1.0.0`` speaks the wire protocol, not just
whatever py-libp2p happens to accept. The peer is installed from npm at test time (pinned by
``package-lock.json``) into ``tests/interop/node_modules``.

Run the stand-alone check: ``.venv/bin/pytest -m integration tests/interop/test_js_peer.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spegel_py.routing.base import Bootstrapper, Peer
from spegel_py.routing.libp2p.router import Libp2pRouter

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "peer.mjs"
NODE_MODULES = HERE / "node_modules"
REPLY_TIMEOUT = 30.0  # seconds; a provide or lookup that hangs longer is a failure, not a wait


def require(condition: bool, reason: str) -> None:
    """Skip locally when a component is missing, but fail in CI (env ``CI=true``)."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def ensure_installed() -> None:
    """``npm ci`` into ``tests/interop/node_modules`` once (locked against parallel test runs)."""
    have_node = shutil.which("node") is not None and shutil.which("npm") is not None
    require(have_node, "node and npm are not installed")
    stamp = NODE_MODULES / ".package-lock.json"
    lock_path = Path(tempfile.gettempdir()) / "spegel-py-interop-npm.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp.exists() and stamp.stat().st_mtime >= (HERE / "package-lock.json").stat().st_mtime:
                return
            result = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            require(result.returncode == 0, f"npm ci failed (registry unreachable?): {result.stderr[-2000:]}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class JsPeer:
    """One ``node peer.mjs`` process, asked questions one JSON line at a time."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self._proc = proc
        self.peer_id: str = ready["peerId"]
        self.addrs: list[str] = ready["addrs"]
        self._next_id = 0
        self._lock = asyncio.Lock()  # one request in flight: replies are read in order

    @classmethod
    async def start(cls, ip: str, *, psk_file: Path | None = None) -> JsPeer:
        """``psk_file``: a private network key file; every connection is protected with it."""
        psk_args = [] if psk_file is None else ["--psk-file", str(psk_file)]
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            "--listen",
            f"/ip4/{ip}/tcp/0",
            *psk_args,
            cwd=HERE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), REPLY_TIMEOUT)
            if not line:
                assert proc.stderr is not None
                err = await proc.stderr.read()
                raise RuntimeError(f"js peer exited at start: {err.decode(errors='replace')[-2000:]}")
            return cls(proc, json.loads(line))
        except BaseException:
            await _kill(proc)
            raise

    @property
    def addr(self) -> str:
        """A full multiaddr with ``/p2p/<id>``."""
        return self.addrs[0]

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        async with self._lock:
            self._next_id += 1
            request = {"id": self._next_id, "cmd": cmd, **args}
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            await self._proc.stdin.drain()
            line = await asyncio.wait_for(self._proc.stdout.readline(), REPLY_TIMEOUT)
        if not line:
            raise RuntimeError(f"js peer exited during {cmd}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("id") != request["id"] or not reply.get("ok"):
            raise RuntimeError(f"js peer {cmd} failed: {reply}")
        return reply

    async def dial(self, addr: str) -> str:
        return str((await self.call("dial", addr=addr))["peerId"])

    async def provide(self, key: str) -> str:
        return str((await self.call("provide", key=key))["cid"])

    async def find_providers(self, key: str, *, timeout_ms: int = 3000) -> dict[str, list[str]]:
        reply = await self.call("findProviders", key=key, timeoutMs=timeout_ms)
        return {p["peerId"]: p["addrs"] for p in reply["providers"]}

    async def routing_table_size(self) -> int:
        return int((await self.call("routingTable"))["size"])

    async def connected_peers(self) -> list[str]:
        """Peer ids of the node's open connections."""
        return [str(p) for p in (await self.call("connections"))["peers"]]

    async def stop(self) -> None:
        """Ask the node to stop; kill it (by its own pid) if it does not exit promptly."""
        if self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("stop"), 5)
        await _kill(self._proc)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    # Drain the pipes so their transports close with the process (no ResourceWarning).
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.read()


@contextlib.asynccontextmanager
async def js_peers(*ips: str, psk_file: Path | None = None) -> AsyncIterator[list[JsPeer]]:
    """Start one js peer per address (each with ``psk_file``'s key, if given); all are stopped
    on exit, whatever happened."""
    peers: list[JsPeer] = []
    try:
        for ip in ips:
            peers.append(await JsPeer.start(ip, psk_file=psk_file))
        yield peers
    finally:
        await asyncio.gather(*(p.stop() for p in peers), return_exceptions=True)


REGISTRY_PORT = 30020  # every py node's registry port in the interop tests (none listens there)


@contextlib.asynccontextmanager
async def py_router(
    data_dir: Path,
    ip: str,
    bootstrap: Bootstrapper | None,
    *,
    bootstrap_interval: float = 0.5,
    **options: Any,
) -> AsyncIterator[Libp2pRouter]:
    """A spegel-py router on ``ip`` (alone, ready at once, when ``bootstrap`` is None); more
    ``Libp2pRouter`` options (``psk``, ``cache_ttl``...) as keywords. Closed on exit."""
    router = Libp2pRouter(
        listen_addrs=[f"/ip4/{ip}/tcp/0"],
        data_dir=data_dir,
        registry_port=REGISTRY_PORT,
        bootstrap=bootstrap,
        alone=bootstrap is None,
        bootstrap_interval=bootstrap_interval,
        **options,
    )
    await router.start()
    try:
        yield router
    finally:
        await router.close()


async def lookup(router: Libp2pRouter, key: str) -> list[Peer]:
    return [peer async for peer in router.lookup(key, limit=5)]

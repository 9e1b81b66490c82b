"""Issue-12 item 1 benchmark: serving a blob while it is written, next to serving it complete.

One process runs the real registry server (``spegel_py.serving.server``) on loopback over a
store of two files laid out as containerd lays out a write in progress (``ingest/x/data``,
renamed to ``blobs/sha256/<hex>`` on commit); ``curl`` fetches as a peer (``X-Spegel-Mirrored``).
Three ways, interleaved each round, medians reported:

  complete   the blob is already committed (the anchor: the normal ``sendfile`` path);
  growing    a writer thread appends it in 1 MiB steps (containerd's) as fast as it can, then
             renames it: the peer's GET starts after the first step;
  paced      the writer appends 1 MiB steps at ``--rate`` MiB/s: how far behind the writer the
             peer's last byte comes (the tail lag), and what following costs in CPU.

CPU is this process's (server, and writer thread for the growing ways; the writer thread's own
CPU is measured and subtracted). Run from the repository root:
    .venv/bin/python -m bench.growing_bench [--mib 512] [--rounds 3] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError
from spegel_py.metrics import Metrics
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.server import RegistryServer
from spegel_py.store.base import Descriptor, Event, EventKind, Image, Ingest
from spegel_py.store.files import FileBlob, blob_path
from spegel_py.store.growing import FileGrowingBlob

MiB = 1 << 20
STEP = MiB  # containerd 1.6 writes a pull in 1 MiB steps


class BenchStore:
    """One blob, complete under ``blobs/`` or being written under ``ingest/x/data``."""

    def __init__(self, root: Path, digest: Digest, size: int) -> None:
        self.root, self.digest, self.size = root, digest, size
        self.blobs = str(root / "blobs")
        self.data = root / "ingest" / "x" / "data"
        self.writing = False

    async def list_images(self) -> list[Image]:
        return []

    async def resolve(self, reference: Reference) -> Digest:
        raise ImageNotFoundError(str(reference))

    async def stat(self, digest: Digest) -> Descriptor:
        async with await self.open(digest) as blob:
            return Descriptor(digest, blob.size)

    async def open(self, digest: Digest) -> FileBlob:
        return FileBlob.open(blob_path(self.blobs, digest), digest)

    async def subscribe(self) -> AsyncIterator[Event]:
        yield Event(EventKind.RESYNC)

    async def close(self) -> None:
        return None

    async def ingests(self) -> list[Ingest]:
        return [Ingest("layer", self.digest, 0, self.size)] if self.writing else []

    async def open_ingest(self, digest: Digest) -> FileGrowingBlob:
        if not self.writing or digest != self.digest:
            raise ContentNotFoundError(str(digest))
        return FileGrowingBlob.open(str(self.data), digest, self.size, blob_path(self.blobs, digest))


class Writer(threading.Thread):
    """Appends ``data`` in STEP pieces (at ``rate`` bytes/s, or as fast as it can), then commits."""

    def __init__(self, store: BenchStore, data: bytes, rate: float | None) -> None:
        super().__init__(name="writer")
        self.store, self.data, self.rate = store, data, rate
        self.first = threading.Event()
        self.cpu = 0.0
        self.committed_at = 0.0
        self.seconds = 0.0

    def run(self) -> None:
        cpu = time.thread_time()
        started = time.monotonic()
        with open(self.store.data, "ab") as f:
            for offset in range(0, len(self.data), STEP):
                f.write(self.data[offset : offset + STEP])
                f.flush()
                self.first.set()
                if self.rate:  # the pacing of a slow upstream, not synchronisation
                    time.sleep(max(0.0, started + (offset + STEP) / self.rate - time.monotonic()))
        os.rename(self.store.data, blob_path(self.store.blobs, self.store.digest))
        self.committed_at = time.monotonic()
        self.seconds = self.committed_at - started
        self.cpu = time.thread_time() - cpu


async def fetch(url: str) -> tuple[float, int]:
    """curl as a peer, into /dev/null (the bytes are checked by the tests, not here): seconds, bytes."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", "-H", "X-Spegel-Mirrored: true", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return time.monotonic() - started, int(out or 0)


def prepare(way: str, root: Path, data: bytes, digest: Digest) -> BenchStore:
    shutil.rmtree(root, ignore_errors=True)
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "ingest" / "x").mkdir(parents=True)
    store = BenchStore(root, digest, len(data))
    if way == "complete":
        Path(blob_path(store.blobs, digest)).write_bytes(data)
    else:
        store.data.write_bytes(b"")
        store.writing = True
    return store


async def one(way: str, root: Path, data: bytes, digest: Digest, rate: float) -> dict[str, float]:
    store = await asyncio.to_thread(prepare, way, root, data, digest)
    writer = None if way == "complete" else Writer(store, data, rate * MiB if way == "paced" else None)
    server = RegistryServer(store, metrics=Metrics(), coordinator=PageCacheCoordinator(settle=0),
                            ingests=store, store_timeout=5.0)  # fmt: skip
    runner = web.AppRunner(server.application(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        cpu = time.process_time()
        if writer is not None:
            writer.start()
            await asyncio.to_thread(writer.first.wait)
        seconds, count = await fetch(f"http://127.0.0.1:{port}/v2/bench/blobs/{digest}")
        done = time.monotonic()
        if writer is not None:
            await asyncio.to_thread(writer.join)
        used = time.process_time() - cpu - (writer.cpu if writer else 0.0)
    finally:
        await runner.cleanup()
    assert count == len(data), (way, count)
    out = {"seconds": seconds, "mib_s": count / MiB / seconds, "cpu_s_per_gib": used / (count / (1 << 30))}
    if writer is not None:
        out["tail_lag_ms"] = (done - writer.committed_at) * 1000
        out["writer_mib_s"] = len(data) / MiB / writer.seconds
    return out


async def main(args: argparse.Namespace) -> None:
    data = os.urandom(args.mib * MiB)
    digest = Digest.of(data)
    base = Path(tempfile.mkdtemp(prefix="growing-bench-", dir=args.dir))
    results: dict[str, list[dict[str, float]]] = {"complete": [], "growing": [], "paced": []}
    try:
        for _ in range(args.rounds):
            for way in results:
                results[way].append(await one(way, base / way, data, digest, args.rate))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    anchor = statistics.median(r["mib_s"] for r in results["complete"])
    print(f"{args.mib} MiB blob, {args.rounds} rounds, medians; paced writer at {args.rate} MiB/s")
    header = ("way", "MiB/s", "x complete", "writer MiB/s", "CPU s/GiB", "tail lag ms")
    print("{:10} {:>8} {:>10} {:>12} {:>10} {:>12}".format(*header))
    for way, rows in results.items():
        keys = ("mib_s", "writer_mib_s", "cpu_s_per_gib", "tail_lag_ms")
        speed, writer, cpu, lag = (median(rows, key) for key in keys)
        print(f"{way:10} {speed:8.0f} {speed / anchor:10.2f} {writer:12.0f} {cpu:10.2f} {lag:12.1f}")


def median(rows: list[dict[str, float]], key: str) -> float:
    """The median of ``key`` over ``rows``, NaN where the way has no such value (the anchor)."""
    values = [row[key] for row in rows if key in row]
    return statistics.median(values) if values else float("nan")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="blob size in MiB")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each runs every way once)")
    ap.add_argument("--rate", type=float, default=200.0, help="MiB/s of the paced writer")
    ap.add_argument("--dir", default=None, help="where the files go (default: the system's temp dir)")
    asyncio.run(main(ap.parse_args()))

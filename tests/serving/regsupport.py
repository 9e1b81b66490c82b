"""Helpers for registry tests: content stores (memory and file-backed), a real server, a raw client.

The raw client writes request lines byte for byte: a normal HTTP client would normalise the very
paths (``..``, ``%2f``) the traversal tests must send.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from spegel_py.errors import ImageNotFoundError
from spegel_py.metrics import Metrics
from spegel_py.oci import mediatypes
from spegel_py.oci.digest import Digest
from spegel_py.oci.filters import RegistryFilter
from spegel_py.oci.reference import Reference
from spegel_py.routing.base import Router
from spegel_py.serving.growing import FollowBounds
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.seam import MissHandler
from spegel_py.serving.server import RegistryServer
from spegel_py.store.base import ContentStore, Descriptor, Event, EventKind, Image, IngestSource
from spegel_py.store.files import FileBlob, blob_path

REGISTRY = "127.0.0.1:5000"
SECRET = b"TOP-SECRET-BYTES-THAT-MUST-NEVER-LEAVE-0123456789"


class FileStore:
    """A test-only content store over ``<root>/blobs/<alg>/<hex>`` files, serving through FileBlob."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs"
        (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)
        self.images: dict[str, Image] = {}

    def add_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        Path(blob_path(str(self.blobs), digest)).write_bytes(data)
        return digest

    def tag(self, name: str, digest: Digest) -> None:
        self.images[name] = Image(name, Reference.parse(name), digest)

    async def list_images(self) -> list[Image]:
        return list(self.images.values())

    async def resolve(self, reference: Reference) -> Digest:
        for image in self.images.values():
            ref = image.reference
            if (ref.registry, ref.repository, ref.tag) == (
                reference.registry,
                reference.repository,
                reference.tag,
            ):
                return image.digest
        raise ImageNotFoundError(str(reference))

    async def stat(self, digest: Digest) -> Descriptor:
        async with await self.open(digest) as blob:
            return Descriptor(digest, blob.size)

    async def open(self, digest: Digest) -> FileBlob:
        return FileBlob.open(blob_path(str(self.blobs), digest), digest)

    async def subscribe(self) -> AsyncIterator[Event]:
        yield Event(EventKind.RESYNC)

    async def close(self) -> None:
        return None


@dataclass
class Content:
    """The test images, by role; ``data[digest]`` is the expected bytes."""

    manifest: Digest
    index: Digest
    config: Digest
    layer: Digest
    small_layer: Digest
    json_no_type: Digest
    empty: Digest
    data: dict[Digest, bytes] = field(default_factory=dict, repr=False)  # MiBs: a repr would copy them


@functools.cache
def _random_blobs() -> tuple[bytes, bytes]:
    """The layer bytes, made once per test session (6 MiB of PRNG output is not free)."""
    rng = random.Random(7)
    return b"\x1f\x8b" + rng.randbytes(6 * 1024 * 1024), b"\x1f\x8b" + rng.randbytes(1000)


def make_content(add: Callable[[bytes], Digest], tag: Callable[[str, Digest], None]) -> Content:
    data: dict[Digest, bytes] = {}
    big, small = _random_blobs()

    def put(blob: bytes) -> Digest:
        digest = add(blob)
        data[digest] = blob
        return digest

    config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode())
    layer = put(big)  # above the sniff limit
    small_layer = put(small)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(config), "size": 1},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(layer), "size": 1}
        ],
    }
    manifest = put(json.dumps(manifest_doc).encode())
    index = put(json.dumps({"schemaVersion": 2, "manifests": [{"digest": str(manifest)}]}).encode())
    json_no_type = put(b'{"hello": "world"}')
    empty = put(b"")
    tag(f"{REGISTRY}/test/small:v1", manifest)
    tag(f"{REGISTRY}/test/multi:v1", index)
    tag("docker.io/library/busybox:latest", manifest)
    return Content(manifest, index, config, layer, small_layer, json_no_type, empty, data)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """HTTP/1.1 over a fresh loopback connection per request; the request target is sent verbatim."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def request(
        self, method: str, target: str | bytes, headers: dict[str, str] | None = None, *, within: float = 10.0
    ) -> Response:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                line = target if isinstance(target, bytes) else target.encode("latin-1")
                head = b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (
                    method.encode(),
                    line,
                    self.host.encode(),
                )
                for key, value in (headers or {}).items():
                    head += f"{key}: {value}\r\n".encode()
                writer.write(head + b"\r\n")
                raw = await reader.read(-1)
            finally:
                writer.close()
                await writer.wait_closed()
        header_blob, _, body = raw.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        parsed = {}
        for entry in lines[1:]:
            key, _, value = entry.partition(":")
            parsed[key.strip().lower()] = value.strip()
        return Response(status, parsed, body)


async def start_server(
    store: ContentStore,
    *,
    coordinator: PageCacheCoordinator | None = None,
    on_miss: MissHandler | None = None,
    router: Router | None = None,
    store_timeout: float = 1.0,
    metrics: Metrics | None = None,
    authorization: str | None = None,
    filters: RegistryFilter | None = None,
    store_concurrency: int = 32,
    ingests: IngestSource | None = None,
    follow: FollowBounds | None = None,
) -> tuple[web.AppRunner, RawClient]:
    server = RegistryServer(
        store,
        metrics=metrics or Metrics(),
        coordinator=coordinator or PageCacheCoordinator(settle=0),
        on_miss=on_miss,
        router=router,
        store_timeout=store_timeout,
        authorization=authorization,
        filters=filters,
        store_concurrency=store_concurrency,
        ingests=ingests,
        follow=follow,
    )
    runner = web.AppRunner(server.application(), access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, RawClient("127.0.0.1", port)


def resident_fraction(path: str) -> float:
    """Fraction of ``path``'s pages that are in the page cache (mincore through ctypes)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(mapped)
            try:
                vec = (ctypes.c_ubyte * pages)()
                if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) != 0:
                    raise OSError(ctypes.get_errno(), "mincore failed")
                return sum(v & 1 for v in vec) / pages
            finally:
                del anchor
        finally:
            mapped.close()

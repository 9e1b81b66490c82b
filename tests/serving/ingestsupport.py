"""Stores with writes in progress for the growing-blob tests: in memory, and in files laid out as
containerd lays them out (``ingest/<dir>/data``, renamed to ``blobs/sha256/<hex>`` on commit,
deleted on abort), so the file-backed path runs ``sendfile`` on a file that really grows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from regsupport import FileStore

from spegel_py.errors import ContentNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.store.base import Ingest
from spegel_py.store.files import blob_path
from spegel_py.store.growing import FileGrowingBlob
from spegel_py.store.memory import MemoryStore


class Writer(Protocol):
    """One write in progress, driven by a test."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class FileIngest:
    def __init__(self, store: FileIngestStore, digest: Digest, total: int) -> None:
        self.store, self.digest, self.total = store, digest, total
        self.dir = store.root / "ingest" / digest.hex
        self.dir.mkdir(parents=True)
        self.data = self.dir / "data"
        self.data.write_bytes(b"")

    def write(self, data: bytes) -> None:
        with self.data.open("ab") as f:
            f.write(data)

    def commit(self) -> None:
        """Rename to the blob path of the bytes' own digest (the expected one if they match)."""
        actual = Digest.of(self.data.read_bytes())
        os.rename(self.data, blob_path(str(self.store.blobs), actual))
        self.end()

    def abort(self) -> None:
        self.data.unlink()
        self.end()

    def end(self) -> None:
        self.dir.rmdir()
        del self.store.active[self.digest]


class FileIngestStore(FileStore):
    """:class:`FileStore` plus writes in progress in files."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = root
        self.active: dict[Digest, FileIngest] = {}

    def start_ingest(self, digest: Digest, total: int) -> FileIngest:
        ingest = self.active[digest] = FileIngest(self, digest, total)
        return ingest

    async def ingests(self) -> list[Ingest]:
        return [Ingest(f"layer-{d}", d, i.data.stat().st_size, i.total) for d, i in self.active.items()]

    async def open_ingest(self, digest: Digest) -> FileGrowingBlob:
        ingest = self.active.get(digest)
        if ingest is None:
            raise ContentNotFoundError(f"no ingest of {digest}")
        path = blob_path(str(self.blobs), digest)
        return FileGrowingBlob.open(str(ingest.data), digest, ingest.total, path)


IngestStore = MemoryStore | FileIngestStore


def start(store: IngestStore, digest: Digest, total: int) -> Writer:
    return store.start_ingest(digest, total)

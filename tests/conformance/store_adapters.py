"""One adapter per content-store implementation: populate it with test images, delete them.

The conformance suite talks to stores only through the ContentStore Protocol; how images get in
and out differs per backend (dictionaries, layout directories, ``ctr images import``/``rm``), and
that difference lives here. Every adapter deletes an image the way its backend's garbage
collection would: the image record and its blobs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from conformance.store_images import REF_NAME, StoreImage, write_archive, write_layout

from spegel_py.oci.digest import Digest
from spegel_py.store.base import ContentStore
from spegel_py.store.memory import MemoryStore
from spegel_py.store.ocilayout import OciLayoutStore

if TYPE_CHECKING:
    from harness.ingest import CtrIngest


class IngestWriter(Protocol):
    """A write in progress in the adapter's store (a pull's), driven by the test."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class StoreAdapter(Protocol):
    store: ContentStore
    file_backed: bool

    def start_ingest(self, digest: Digest, total: int) -> IngestWriter | None:
        """A new write of ``digest``, or ``None`` when the backend has no writes in progress."""
        ...

    async def add(self, image: StoreImage) -> None: ...

    async def retag(self, image: StoreImage, name: str) -> None: ...

    async def delete(self, image: StoreImage) -> None: ...


class MemoryAdapter:
    file_backed = False

    def __init__(self) -> None:
        self.store = self.memory = MemoryStore()

    async def add(self, image: StoreImage) -> None:
        for digest in image.present:
            self.memory.add_blob(image.blobs[digest], image.media_types[digest])
        self.memory.tag(image.name, image.root)

    async def retag(self, image: StoreImage, name: str) -> None:
        self.memory.tag(name, image.root)

    async def delete(self, image: StoreImage) -> None:
        self.memory.delete_image(image.name)
        for digest in image.present:
            self.memory.delete_blob(digest)

    def start_ingest(self, digest: Digest, total: int) -> IngestWriter:
        ingest = self.memory.start_ingest(digest, total)

        class Writer:
            async def write(self, data: bytes) -> None:
                ingest.write(data)

            async def commit(self) -> None:
                ingest.commit()

            async def abort(self) -> None:
                ingest.abort()

        return Writer()


class OciLayoutAdapter:
    """One layout per repository under a root (``ROOT/<repository>``), full ``ref.name`` annotations."""

    file_backed = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = OciLayoutStore(root, poll_interval=0.05)

    def _layout(self, image: StoreImage) -> Path:
        return self.root / image.reference.repository

    async def add(self, image: StoreImage) -> None:
        write_layout(self._layout(image), [image])

    async def retag(self, image: StoreImage, name: str) -> None:
        index_path = self._layout(image) / "index.json"
        index = json.loads(index_path.read_text())
        entry = dict(next(e for e in index["manifests"] if e["annotations"][REF_NAME] == image.name))
        entry["annotations"] = {REF_NAME: name}
        index["manifests"].append(entry)
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(index_path)

    async def delete(self, image: StoreImage) -> None:
        shutil.rmtree(self._layout(image))

    def start_ingest(self, digest: Digest, total: int) -> None:
        return None  # layouts are written whole


class ContainerdAdapter:
    """A real containerd node (tests/harness); images imported from OCI archives, no registry."""

    file_backed = True

    def __init__(self, node: object, workdir: Path) -> None:
        from harness import ContainerdNode

        from spegel_py.store.containerd import ContainerdStore

        assert isinstance(node, ContainerdNode)
        self.node = node
        self.workdir = workdir
        self.store = ContainerdStore(str(node.socket), node.namespace, str(node.content_path))
        self.ingests: list[CtrIngest] = []  # writers to stop at teardown

    async def add(self, image: StoreImage) -> None:
        archive = self.workdir / f"{image.root.hex}.tar"
        write_archive(archive, image)
        await asyncio.to_thread(self.node.ctr, "images", "import", "--no-unpack", str(archive))

    async def retag(self, image: StoreImage, name: str) -> None:
        await asyncio.to_thread(self.node.ctr, "images", "tag", image.name, name)

    async def delete(self, image: StoreImage) -> None:
        """Remove every name of the image, as ``crictl rmi`` does: CRI adds a ``sha256:<config>`` alias."""
        names = [
            name
            for name, target in (await asyncio.to_thread(self.node.images)).items()
            if target == str(image.root)
        ]
        await asyncio.to_thread(self.node.ctr, "images", "rm", "--sync", *names)  # --sync: GC has run

    def start_ingest(self, digest: Digest, total: int) -> IngestWriter:
        from harness.ingest import CtrIngest

        ingest = CtrIngest(self.node, str(digest), total, protect=True)  # the node is seconds old
        self.ingests.append(ingest)

        class Writer:
            async def write(self, data: bytes) -> None:
                await asyncio.to_thread(ingest.write, data)

            async def commit(self) -> None:
                await asyncio.to_thread(ingest.commit)

            async def abort(self) -> None:
                await asyncio.to_thread(ingest.abort)

        return Writer()

"""An in-memory content store: the reference implementation for unit tests.

It has no files, so it exercises the registry's streaming path instead of ``sendfile``.
Ingests (blobs still being written, :class:`~spegel_py.store.base.IngestSource`) are simulated
with :meth:`MemoryStore.start_ingest`: a test writes, commits or aborts them at its own pace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import TracebackType

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Descriptor, Event, EventKind, Image, Ingest, IngestProgress, IngestState

_CHUNK = 64 * 1024
_CLOSED = Event(EventKind.RESYNC, "\0closed")  # internal end-of-stream marker, never yielded


class MemoryBlob:
    """A blob held in memory; ``fileno()`` is ``None``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def fileno(self) -> int | None:
        return None

    async def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        end = len(self._data) if length is None else min(len(self._data), offset + length)
        for start in range(offset, end, _CHUNK):
            yield self._data[start : min(start + _CHUNK, end)]

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> MemoryBlob:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class MemoryIngest:
    """A blob being written into a :class:`MemoryStore`; tests drive it."""

    def __init__(self, store: MemoryStore, ref: str, digest: Digest, total: int) -> None:
        self._store = store
        self.ref = ref
        self.digest = digest
        self.total = total
        self.data = bytearray()
        self.state = IngestState.WRITING
        self.updated = time.time()

    def write(self, data: bytes) -> None:
        self.data += data
        self.updated = time.time()

    def commit(self) -> None:
        """End the ingest: the blob if the bytes match the expected digest and size, else the
        bytes are committed under their own digest (``MISMATCH`` for whoever follows)."""
        self._store.end_ingest(self)
        actual = Digest.of(bytes(self.data))
        ok = actual == self.digest and len(self.data) == self.total
        self.state = IngestState.COMMITTED if ok else IngestState.MISMATCH
        self._store.add_blob(bytes(self.data))

    def abort(self) -> None:
        self._store.end_ingest(self)
        self.state = IngestState.ABORTED


class MemoryGrowingBlob:
    """A reader of a :class:`MemoryIngest`; ``fileno()`` is ``None``."""

    def __init__(self, ingest: MemoryIngest) -> None:
        self._ingest = ingest

    @property
    def size(self) -> int:
        return self._ingest.total

    @property
    def digest(self) -> Digest:
        return self._ingest.digest

    def progress(self) -> IngestProgress:
        return IngestProgress(len(self._ingest.data), self._ingest.state, self._ingest.updated)

    def fileno(self) -> int | None:
        return None

    async def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        data = self._ingest.data
        end = min(len(data), offset + length)
        for start in range(offset, end, _CHUNK):
            yield bytes(data[start : min(start + _CHUNK, end)])

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> MemoryGrowingBlob:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class MemoryStore:
    """Images and blobs in dictionaries; mutate with :meth:`add_blob`, :meth:`tag`, :meth:`delete_*`."""

    def __init__(self) -> None:
        self._blobs: dict[Digest, tuple[bytes, str | None]] = {}
        self._images: dict[str, Image] = {}
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._ingests: dict[Digest, MemoryIngest] = {}
        self._closed = False

    # -- mutation (tests and the advertiser's tests drive these) --------------------------------
    def add_blob(self, data: bytes, media_type: str | None = None) -> Descriptor:
        digest = Digest.of(data)
        self._blobs[digest] = (data, media_type)
        self._publish(Event(EventKind.CONTENT_CREATE, str(digest)))
        return Descriptor(digest, len(data), media_type)

    def delete_blob(self, digest: Digest) -> None:
        if self._blobs.pop(digest, None) is not None:
            self._publish(Event(EventKind.CONTENT_DELETE, str(digest)))

    def tag(self, name: str, digest: Digest) -> Image:
        """Create or move image ``name`` (a full reference string) to ``digest``."""
        image = Image(name, Reference.parse(name), digest)
        kind = EventKind.IMAGE_UPDATE if name in self._images else EventKind.IMAGE_CREATE
        self._images[name] = image
        self._publish(Event(kind, name))
        return image

    def delete_image(self, name: str) -> None:
        if self._images.pop(name, None) is not None:
            self._publish(Event(EventKind.IMAGE_DELETE, name))

    def start_ingest(self, digest: Digest, total: int, ref: str | None = None) -> MemoryIngest:
        """Begin writing a blob expected to be ``digest`` (``total`` bytes), as a pull does."""
        ingest = MemoryIngest(self, ref or f"layer-{digest}", digest, total)
        self._ingests[digest] = ingest
        return ingest

    def end_ingest(self, ingest: MemoryIngest) -> None:
        if self._ingests.get(ingest.digest) is ingest:
            del self._ingests[ingest.digest]

    def _publish(self, event: Event) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    # -- ContentStore ---------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        return list(self._images.values())

    async def resolve(self, reference: Reference) -> Digest:
        for image in self._images.values():
            ref = image.reference
            if (ref.registry, ref.repository, ref.tag) == (
                reference.registry,
                reference.repository,
                reference.tag,
            ) and reference.tag is not None:
                return image.digest
        raise ImageNotFoundError(f"{reference} not found")

    async def stat(self, digest: Digest) -> Descriptor:
        try:
            data, media_type = self._blobs[digest]
        except KeyError:
            raise ContentNotFoundError(f"{digest} not found") from None
        return Descriptor(digest, len(data), media_type)

    async def open(self, digest: Digest) -> MemoryBlob:
        try:
            data, _ = self._blobs[digest]
        except KeyError:
            raise ContentNotFoundError(f"{digest} not found") from None
        return MemoryBlob(data)

    async def ingests(self) -> list[Ingest]:
        return [Ingest(i.ref, i.digest, len(i.data), i.total) for i in self._ingests.values()]

    async def open_ingest(self, digest: Digest) -> MemoryGrowingBlob:
        try:
            return MemoryGrowingBlob(self._ingests[digest])
        except KeyError:
            raise ContentNotFoundError(f"no ingest of {digest}") from None

    async def subscribe(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if self._closed:
            return
        self._subscribers.add(queue)
        try:
            yield Event(EventKind.RESYNC)  # live from here on: the consumer lists everything now
            while True:
                event = await queue.get()
                if event is _CLOSED:
                    return
                yield event
        finally:
            self._subscribers.discard(queue)

    async def close(self) -> None:
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(_CLOSED)

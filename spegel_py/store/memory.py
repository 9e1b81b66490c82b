"""An in-memory content store: the reference implementation for unit tests.

It has no files, so it exercises the registry's streaming path instead of ``sendfile``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType

from spegel_py.errors import ContentNotFoundError, ImageNotFoundError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Descriptor, Event, EventKind, Image

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


class MemoryStore:
    """Images and blobs in dictionaries; mutate with :meth:`add_blob`, :meth:`tag`, :meth:`delete_*`."""

    def __init__(self) -> None:
        self._blobs: dict[Digest, tuple[bytes, str | None]] = {}
        self._images: dict[str, Image] = {}
        self._subscribers: set[asyncio.Queue[Event]] = set()
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

"""The content-store boundary: what the registry and the advertiser need from a node's content.

Implementations: :mod:`.memory` (tests), :mod:`.ocilayout` (a directory of OCI image layouts) and
:mod:`.containerd` (the node's containerd). All of them pass ``tests/conformance/test_store.py``.

Rules every implementation keeps (a cached "present" that containerd has since garbage-collected
would send peers to content that is gone): presence is checked against the
backend on every call, nothing "exists" from a cache, and nothing is ever deleted or pinned
beyond the life of one open :class:`Blob`.

Blobs still being written (an active ingest: issue 12, a pull in progress) are a separate,
optional ability, :class:`IngestSource`: a store that cannot see its writes (an OCI layout
directory) lists none. An ingest is listed only once its expected digest and total size are
known, so it can be served with the right ``Content-Length`` while it grows.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from spegel_py.errors import ContentTooLargeError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A blob that is present: its digest, size in bytes, and media type when the store knows it.

    containerd does not record media types, so ``media_type`` is often ``None`` and the registry
    sniffs it from the content.
    """

    digest: Digest
    size: int
    media_type: str | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """A named image: ``reference`` (``registry/repository:tag`` and/or ``@digest``) -> ``digest``.

    ``name`` is the store's own name for it (containerd's image name), kept for logs and events.
    """

    name: str
    reference: Reference
    digest: Digest


class EventKind(enum.Enum):
    """What changed in the store. ``RESYNC`` means events may have been lost: re-list everything."""

    IMAGE_CREATE = "image-create"
    IMAGE_UPDATE = "image-update"
    IMAGE_DELETE = "image-delete"
    CONTENT_CREATE = "content-create"
    CONTENT_DELETE = "content-delete"
    RESYNC = "resync"


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``key`` is the image name for image events, the digest string for content events."""

    kind: EventKind
    key: str = ""


class Blob(Protocol):
    """An open blob, readable for the life of one request even if the store deletes it meanwhile.

    Use as an async context manager. ``fileno()`` gives an OS file descriptor for zero-copy
    ``sendfile`` when the store has files; otherwise it returns ``None`` and ``chunks`` streams.
    """

    @property
    def size(self) -> int:
        """Size of the blob in bytes."""
        ...

    def fileno(self) -> int | None:
        """An open file descriptor positioned anywhere (use offsets), or ``None`` if there is no file."""
        ...

    def chunks(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[offset, offset+length)`` in pieces of bounded size."""
        ...

    async def aclose(self) -> None:
        """Release the blob (close the descriptor). Idempotent."""
        ...

    async def __aenter__(self) -> Blob: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Ingest:
    """A blob the store is still writing: ``digest`` and ``total`` are what it is expected to
    become, ``offset`` the bytes written so far; ``ref`` is the store's name for the write."""

    ref: str
    digest: Digest
    offset: int
    total: int


class IngestState(enum.Enum):
    """Where a followed ingest stands (see :meth:`GrowingBlob.progress`)."""

    WRITING = "writing"  # still growing (or waiting for its writer)
    COMMITTED = "committed"  # now the blob of the expected digest: every byte is final
    ABORTED = "aborted"  # deleted before it was committed
    MISMATCH = "mismatch"  # committed as something else (another digest or size)


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """``available`` bytes can be read now (from offset 0); ``state`` says whether more will come;
    ``updated``: when the last byte was written (Unix time, seconds), to tell a stalled write."""

    available: int
    state: IngestState
    updated: float


class GrowingBlob(Protocol):
    """An open ingest, followed while it grows; readable for the life of one request.

    ``size`` is the expected total. Bytes below ``progress().available`` are read like a
    :class:`Blob`'s (``fileno()`` with offsets, or ``chunks``); ``chunks`` never waits for more.
    Before ``COMMITTED`` the bytes are not verified: the store checks the digest at commit.
    """

    @property
    def size(self) -> int:
        """Expected size of the blob in bytes."""
        ...

    @property
    def digest(self) -> Digest:
        """The digest the ingest is expected to commit as."""
        ...

    def progress(self) -> IngestProgress:
        """Bytes available now and the state; cheap (a few syscalls), call it as often as needed."""
        ...

    def fileno(self) -> int | None:
        """The open file the ingest is written to (it keeps following a rename at commit), or ``None``."""
        ...

    def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yield ``[offset, offset+length)``, all of it already available, in bounded pieces."""
        ...

    async def aclose(self) -> None:
        """Release the file. Idempotent."""
        ...

    async def __aenter__(self) -> GrowingBlob: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class IngestSource(Protocol):
    """The blobs a store is still writing, for serving them while they grow (issue 12)."""

    async def ingests(self) -> list[Ingest]:
        """Active ingests whose expected digest and total size are known, in no particular order."""
        ...

    async def open_ingest(self, digest: Digest) -> GrowingBlob:
        """Open the active ingest expected to become ``digest``; ``ContentNotFoundError`` if none."""
        ...


@runtime_checkable
class ContentStore(Protocol):
    """Read-only view of one node's images and content-addressed blobs."""

    async def list_images(self) -> list[Image]:
        """Every image the store knows (in the configured namespace), in no particular order."""
        ...

    async def resolve(self, reference: Reference) -> Digest:
        """The digest a tag reference points to now; raise ``ImageNotFoundError`` if unknown."""
        ...

    async def stat(self, digest: Digest) -> Descriptor:
        """Describe a present blob; raise ``ContentNotFoundError`` if absent (checked every call)."""
        ...

    async def open(self, digest: Digest) -> Blob:
        """Open a present blob for reading; raise ``ContentNotFoundError`` if absent."""
        ...

    def subscribe(self) -> AsyncIterator[Event]:
        """Changes until :meth:`close`; each call is an independent subscription.

        The first event is always ``RESYNC``, yielded once the subscription is live: a consumer
        lists everything when it sees ``RESYNC`` (first, and again after any reconnect that may
        have lost events), so no change between listing and subscribing is missed.
        """
        ...

    async def close(self) -> None:
        """Release connections and end every subscription. Idempotent."""
        ...


async def read_blob(store: ContentStore, digest: Digest, *, limit: int) -> bytes:
    """Read a whole blob into memory, refusing (``ContentTooLargeError``) anything over ``limit`` bytes.

    Only for manifests, indexes and configs; layers are always streamed.
    """
    async with await store.open(digest) as blob:
        if blob.size > limit:
            raise ContentTooLargeError(f"{digest} is {blob.size} bytes, over the {limit} byte limit")
        return b"".join([chunk async for chunk in blob.chunks()])

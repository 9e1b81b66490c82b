"""The :class:`ContainerdStore`: a node's containerd namespace as a content store.

Metadata (images, content presence) comes from containerd over gRPC; bytes come straight from
the blob files under ``--containerd-content-path`` (a path on the same host), so blobs go out with
``sendfile``. No lease is ever taken: an open file descriptor keeps a blob readable to the end of
one request even if containerd's GC deletes it meanwhile, and pins nothing afterwards.

Writes in progress (ingests, :class:`~spegel_py.store.base.IngestSource`) come from the
content service's status API and are read from the content root's ``ingest/`` directory
(:mod:`.ingests`).

Events: containerd 1.6 publishes image create/update/delete and content delete, but no content
create, and its garbage collector removes blobs after an image delete *without* content-delete
events; consumers re-check content after image deletes (the advertiser does).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import grpc

from spegel_py.errors import (
    ContentNotFoundError,
    ImageNotFoundError,
    InvalidInputError,
    NotFoundError,
    StoreUnavailableError,
)
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Descriptor, Event, Image, Ingest
from spegel_py.store.containerd._api.services.content.v1 import content_pb2, content_pb2_grpc
from spegel_py.store.containerd._api.services.events.v1 import events_pb2_grpc
from spegel_py.store.containerd._api.services.images.v1 import images_pb2, images_pb2_grpc
from spegel_py.store.containerd.events import EventStream
from spegel_py.store.containerd.ingests import data_path, expected_digest, writing
from spegel_py.store.containerd.rpc import NAMESPACE_KEY, open_channel, translate, validate_namespace
from spegel_py.store.files import FileBlob, blob_path
from spegel_py.store.growing import FileGrowingBlob

# grpcio-tools writes no type information for the *_pb2_grpc modules: their stubs are Any here,
# and every response is annotated with its (typed) message class where it is received.
_StubFactory = Callable[[grpc.aio.Channel], Any]
_IMAGES = cast(_StubFactory, images_pb2_grpc.ImagesStub)
_CONTENT = cast(_StubFactory, content_pb2_grpc.ContentStub)
_EVENTS = cast(_StubFactory, events_pb2_grpc.EventsStub)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Stubs:
    channel: grpc.aio.Channel
    images: Any
    content: Any
    events: Any


class ContainerdStore:
    """Read-only :class:`~spegel_py.store.base.ContentStore` over containerd's gRPC API.

    ``socket``: containerd's gRPC unix socket; ``namespace``: the containerd namespace (``k8s.io``
    for the kubelet's images; it may not exist yet: then the store is empty, not broken);
    ``content_path``: containerd's content directory (holding ``blobs/sha256``).
    ``rpc_timeout`` (seconds) bounds every call; ``reconnect_initial``/``reconnect_max``
    (seconds) bound the backoff between subscription attempts while containerd is down.
    """

    def __init__(
        self,
        socket: str,
        namespace: str,
        content_path: str,
        *,
        rpc_timeout: float = 5.0,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
    ) -> None:
        self._socket = socket
        self._namespace = validate_namespace(namespace)
        self._content_path = content_path
        self._blobs = os.path.join(content_path, "blobs")
        self._timeout = rpc_timeout
        self._metadata = ((NAMESPACE_KEY, namespace),)
        self._reconnect = (reconnect_initial, reconnect_max)
        self._stubs: _Stubs | None = None
        self._closed = asyncio.Event()
        self._streams: set[EventStream] = set()

    def _connect(self) -> _Stubs:
        """The channel, created lazily so it belongs to the event loop that uses it."""
        if self._closed.is_set():
            raise StoreUnavailableError("containerd store is closed")
        if self._stubs is None:
            channel = open_channel(self._socket)
            self._stubs = _Stubs(channel, _IMAGES(channel), _CONTENT(channel), _EVENTS(channel))
        return self._stubs

    async def _unary(self, method: Any, request: Any, not_found: type[NotFoundError], what: str) -> Any:
        """Call ``method`` (a stub's bound RPC) with the deadline and namespace; translate failures."""
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, not_found, what) from exc
        except asyncio.CancelledError as exc:
            # close() cancels calls in flight, and grpc reports that as CancelledError: unless
            # our own task is being cancelled, that is an unavailable store, not a cancellation.
            task = asyncio.current_task()
            if self._closed.is_set() and task is not None and not task.cancelling():
                raise StoreUnavailableError("containerd store closed during the call") from exc
            raise

    async def list_images(self) -> list[Image]:
        """Images whose names are registry references; CRI's ``sha256:<id>`` aliases are skipped."""
        request = images_pb2.ListImagesRequest()
        response: images_pb2.ListImagesResponse = await self._unary(
            self._connect().images.List, request, ImageNotFoundError, "images"
        )
        images = []
        for image in response.images:
            try:
                reference = Reference.parse(image.name)
                images.append(Image(image.name, reference, Digest.parse(image.target.digest)))
            except InvalidInputError:
                continue  # not a reference (an image id) or a digest we cannot serve
        return images

    async def resolve(self, reference: Reference) -> Digest:
        if reference.tag is None:
            raise ImageNotFoundError(f"{reference} has no tag to resolve")
        name = f"{reference.name}:{reference.tag}"
        request = images_pb2.GetImageRequest(name=name)
        response: images_pb2.GetImageResponse = await self._unary(
            self._connect().images.Get, request, ImageNotFoundError, name
        )
        try:
            return Digest.parse(response.image.target.digest)
        except InvalidInputError as exc:
            raise ImageNotFoundError(f"{name} points to an unsupported digest") from exc

    async def stat(self, digest: Digest) -> Descriptor:
        """Presence in *this namespace* (containerd's view), not merely a file on disk."""
        request = content_pb2.InfoRequest(digest=str(digest))
        response: content_pb2.InfoResponse = await self._unary(
            self._connect().content.Info, request, ContentNotFoundError, str(digest)
        )
        return Descriptor(digest, response.info.size)

    async def open(self, digest: Digest) -> FileBlob:
        await self.stat(digest)
        path = blob_path(self._blobs, digest)
        try:
            return FileBlob.open(path, digest)
        except ContentNotFoundError:
            # Collected since Info answered (rare), or --containerd-content-path is wrong (then
            # every open lands here): say so, since clients only ever see a 404.
            log.warning("containerd lists %s but %s cannot be opened", digest, path)
            raise

    async def ingests(self) -> list[Ingest]:
        """Writes in progress in this namespace whose expected digest and total size are known."""
        if not writing(self._content_path):  # the cheap look first: this call is polled
            return []
        request = content_pb2.ListStatusesRequest()
        try:
            response: content_pb2.ListStatusesResponse = await self._unary(
                self._connect().content.ListStatuses, request, ContentNotFoundError, "ingests"
            )
        except NotFoundError:  # the namespace does not exist yet: nothing is being written
            return []
        found = []
        for status in response.statuses:
            digest = expected_digest(status.ref, status.expected)
            if digest is not None and status.total > 0:
                found.append(Ingest(status.ref, digest, status.offset, status.total))
        return found

    async def open_ingest(self, digest: Digest) -> FileGrowingBlob:
        candidates = [ingest for ingest in await self.ingests() if ingest.digest == digest]
        for ingest in sorted(candidates, key=lambda i: -i.offset):  # the furthest write first
            path = await asyncio.to_thread(data_path, self._content_path, self._namespace, ingest.ref)
            if path is None:
                continue
            try:
                return FileGrowingBlob.open(path, digest, ingest.total, blob_path(self._blobs, digest))
            except ContentNotFoundError:
                continue  # ended between the listing and the open
        raise ContentNotFoundError(f"no ingest of {digest}")

    async def subscribe(self) -> AsyncIterator[Event]:
        if self._closed.is_set():
            return
        stream = EventStream(
            self._connect().events,
            self._namespace,
            rpc_timeout=self._timeout,
            reconnect_initial=self._reconnect[0],
            reconnect_max=self._reconnect[1],
        )
        self._streams.add(stream)
        try:
            async with aclosing(stream.events()) as events:
                async for event in events:
                    yield event
        finally:
            self._streams.discard(stream)
            stream.close()

    async def close(self) -> None:
        self._closed.set()
        for stream in list(self._streams):
            stream.close()
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            await stubs.channel.close()

"""containerd's image and content events as :class:`~spegel_py.store.base.Event`, surviving restarts.

The store contract says the first event is ``RESYNC``, yielded once the subscription is *live*,
so a consumer that lists everything on ``RESYNC`` misses no change. containerd's ``Subscribe``
sends no response headers until the first event, so "live" cannot be observed from the call
itself. Instead a barrier event (topic :data:`BARRIER_TOPIC`, a random token) is published and
``RESYNC`` is yielded only when it comes back on our own stream: from then on every event
reaches us. Barrier events are not stored by containerd and create no namespace.

When containerd goes away the stream fails; it is re-established with bounded exponential
backoff and yields ``RESYNC`` again, since events may have been lost in between.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from spegel_py.errors import ContentNotFoundError, InvalidInputError, StoreUnavailableError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import Reference
from spegel_py.store.base import Event, EventKind
from spegel_py.store.containerd._api.events import content_pb2 as content_events
from spegel_py.store.containerd._api.events import image_pb2 as image_events
from spegel_py.store.containerd._api.services.events.v1 import events_pb2
from spegel_py.store.containerd.rpc import NAMESPACE_KEY, translate

log = logging.getLogger(__name__)

BARRIER_TOPIC = "/spegel-py/barrier"
_BARRIER_TYPE = "spegel-py.barrier"
_BARRIER_REPEAT = 0.05  # seconds before the first re-publish; doubles (Subscribe may not be registered yet)

# topic -> (kind, message type). Image events carry the image name, content events the digest.
_TOPICS: dict[
    str,
    tuple[
        EventKind,
        type[
            image_events.ImageCreate
            | image_events.ImageUpdate
            | image_events.ImageDelete
            | content_events.ContentDelete
        ],
    ],
] = {
    "/images/create": (EventKind.IMAGE_CREATE, image_events.ImageCreate),
    "/images/update": (EventKind.IMAGE_UPDATE, image_events.ImageUpdate),
    "/images/delete": (EventKind.IMAGE_DELETE, image_events.ImageDelete),
    "/content/delete": (EventKind.CONTENT_DELETE, content_events.ContentDelete),
}


def subscribe_filters(namespace: str) -> list[str]:
    """containerd filter expressions (OR'ed): our namespace's image and content events, barriers."""
    return [
        f'namespace=="{namespace}",topic~="^/images/"',
        f'namespace=="{namespace}",topic=="/content/delete"',
        f'topic=="{BARRIER_TOPIC}"',
    ]


def decode(envelope: events_pb2.Envelope, namespace: str) -> Event | None:
    """The event an envelope carries, or ``None`` for other namespaces, topics and non-references.

    The payload's type URL has no ``/`` (so ``Any.Unpack`` refuses it): decode the bytes directly.
    """
    entry = _TOPICS.get(envelope.topic)
    if entry is None or envelope.namespace != namespace:
        return None
    kind, message_type = entry
    try:
        message = message_type.FromString(envelope.event.value)
        if isinstance(message, content_events.ContentDelete):
            return Event(kind, str(Digest.parse(message.digest)))
        Reference.parse(message.name)  # CRI's sha256:<id> aliases are not images we serve
        return Event(kind, message.name)
    except (DecodeError, InvalidInputError):
        return None


class EventStream:
    """One subscription: iterate :meth:`events` once; :meth:`close` ends the iteration promptly."""

    def __init__(
        self,
        stub: Any,  # events_pb2_grpc.EventsStub: generated without type information
        namespace: str,
        *,
        rpc_timeout: float,
        reconnect_initial: float,
        reconnect_max: float,
    ) -> None:
        self._stub = stub
        self._namespace = namespace
        self._timeout = rpc_timeout
        self._backoff = (reconnect_initial, reconnect_max)
        self._closing = asyncio.Event()
        self._call: grpc.aio.UnaryStreamCall[events_pb2.SubscribeRequest, events_pb2.Envelope] | None = None

    def close(self) -> None:
        self._closing.set()
        if self._call is not None:
            self._call.cancel()

    async def events(self) -> AsyncGenerator[Event, None]:
        """The events of this subscription (one iteration per stream), RESYNC first and after reconnects."""
        delay = self._backoff[0]
        while not self._closing.is_set():
            try:
                async with aclosing(self._session()) as session:
                    async for event in session:
                        if event.kind is EventKind.RESYNC:
                            delay = self._backoff[0]  # live again: the next outage starts afresh
                        yield event
            except StoreUnavailableError as exc:
                log.warning("containerd events unavailable, retrying in %.2fs: %s", delay, exc)
            if await self._sleep(delay):
                return
            delay = min(delay * 2, self._backoff[1])

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until closed; True if closed."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass
        return self._closing.is_set()

    async def _session(self) -> AsyncGenerator[Event, None]:
        """One Subscribe call: RESYNC once live, then events until the stream fails."""
        call = self._stub.Subscribe(events_pb2.SubscribeRequest(filters=subscribe_filters(self._namespace)))
        self._call = call
        token = os.urandom(16)
        publisher = asyncio.create_task(self._publish_barriers(token), name="containerd-events-barrier")
        try:
            try:
                async with asyncio.timeout(self._timeout):
                    while not self._is_barrier(await call.read(), token):
                        pass
            finally:
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
            yield Event(EventKind.RESYNC)
            while True:
                event = decode(self._check(await call.read()), self._namespace)
                if event is not None:
                    yield event
        except TimeoutError as exc:
            raise StoreUnavailableError(f"event subscription not live within {self._timeout}s") from exc
        except grpc.aio.AioRpcError as exc:
            if self._closing.is_set():
                return
            raise translate(exc, ContentNotFoundError, "event subscription") from exc
        except asyncio.CancelledError:
            # grpc raises CancelledError from a call cancelled locally: by close(), that is the end
            task = asyncio.current_task()
            if self._closing.is_set() and call.cancelled() and task is not None and not task.cancelling():
                return
            raise
        finally:
            self._call = None
            call.cancel()

    def _check(self, envelope: events_pb2.Envelope | object) -> events_pb2.Envelope:
        if not isinstance(envelope, events_pb2.Envelope):  # grpc.aio.EOF: the server ended the stream
            raise StoreUnavailableError("containerd ended the event stream")
        return envelope

    def _is_barrier(self, envelope: events_pb2.Envelope | object, token: bytes) -> bool:
        envelope = self._check(envelope)
        return envelope.topic == BARRIER_TOPIC and envelope.event.value == token

    async def _publish_barriers(self, token: bytes) -> None:
        """Publish the barrier until cancelled: the first may precede the subscription's registration."""
        request = events_pb2.PublishRequest(
            topic=BARRIER_TOPIC, event=any_pb2.Any(type_url=_BARRIER_TYPE, value=token)
        )
        metadata = ((NAMESPACE_KEY, self._namespace),)
        pause = _BARRIER_REPEAT
        while True:
            try:
                await self._stub.Publish(request, metadata=metadata, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:  # the reader sees the same failure and reports it
                log.debug("barrier publish failed: %s", exc.code())
            await asyncio.sleep(pause)  # pacing of re-publishes, not synchronisation
            pause = min(pause * 2, 1.0)

"""Serving a blob to a peer while this node's store is still writing it (issue 12, item 1).

A node that is pulling a layer from upstream can pass it on to its peers before it has the whole
of it, so a rollout fetches one copy from upstream instead of one per node. The response
promises the expected size (``Content-Length``) at once and follows the ingest as it grows:
bytes go out as soon as the store has written them (``sendfile`` from the ingest's own file when
there is one, so the same zero-copy path and page-cache policy as for complete blobs), and the
waits between growths are bounded (:class:`FollowBounds`).

The response is cut (the connection aborted, never padded) when the ingest is aborted, stops
growing for ``stall_timeout``, or is committed as anything but the expected blob: the receiver's
relay then resumes the blob elsewhere with ``Range`` (``relay/stream.py``), or its containerd
goes upstream. The last byte is held back until the store has committed the blob under the
expected digest (containerd checks the digest at commit), so a peer never receives the whole of
a body this node did not verify.

Page cache (:mod:`.pagecache`): the stream is registered like a complete blob's, with a
residency snapshot of the file as it was when the response started. Pages the store writes
afterwards are outside that snapshot and are never evicted here: they were charged to the
writer (containerd), which reads them again to unpack the layer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from spegel_py.errors import (
    ContentNotFoundError,
    IngestAbortedError,
    IngestEndedError,
    IngestMismatchError,
    IngestStalledError,
)
from spegel_py.httpx.answers import body_head, send_bytes
from spegel_py.httpx.headers import DIGEST_HEADER, NAMESPACE_HEADER
from spegel_py.metrics import Metrics
from spegel_py.oci import mediatypes
from spegel_py.serving.content import WriteBounds, abort_response
from spegel_py.serving.pagecache import PageCacheCoordinator, Stream
from spegel_py.serving.sendfile import flush, send_range, sendfile_socket
from spegel_py.store.base import GrowingBlob, IngestState

log = logging.getLogger(__name__)

Send = Callable[[int, int], Awaitable[None]]

_OUTCOMES: dict[type[IngestEndedError], str] = {
    IngestAbortedError: "aborted",
    IngestStalledError: "stalled",
    IngestMismatchError: "mismatch",
}


@dataclass(frozen=True, slots=True)
class FollowBounds:
    """How a response follows a growing blob (seconds).

    ``stall_timeout``: the ingest may go this long without a new byte (or, once complete,
    without its commit) before the response is cut. ``poll_min``/``poll_max``: the first and
    the longest wait between looks at the ingest while it does not grow (the wait doubles).
    """

    stall_timeout: float = 10.0
    poll_min: float = 0.005
    poll_max: float = 0.1


async def serve_growing(
    request: web.Request,
    blob: GrowingBlob,
    *,
    coordinator: PageCacheCoordinator,
    metrics: Metrics,
    bounds: WriteBounds,
    follow: FollowBounds,
    namespace: str | None = None,
) -> web.StreamResponse:
    """Answer ``request`` (GET or HEAD, ``Range`` honoured) with ``blob`` as it is written.

    Raises :class:`~spegel_py.errors.RangeNotSatisfiableError` before anything is sent when the
    client's range selects nothing of the expected size.
    """
    headers = {"Content-Type": mediatypes.OCTET_STREAM, DIGEST_HEADER: str(blob.digest)}
    headers["Accept-Ranges"] = "bytes"
    if namespace is not None:
        headers[NAMESPACE_HEADER] = namespace
    head = body_head(blob.size, headers, request.headers.get("Range"))
    if request.method == "HEAD":
        return await send_bytes(request, head, None)
    response = head.response()
    writer = await response.prepare(request)
    transport = request.transport
    fd = blob.fileno()
    with sendfile_socket(transport) as sock_fd:  # held across every step of the body
        stream: Stream | None = None
        sent = head.start

        async def send(start: int, end: int) -> None:
            nonlocal sent
            if stream is not None and sock_fd is not None and fd is not None:
                stall = bounds.write_timeout or 1e9  # 0: no bound on the client (as for complete blobs)
                await send_range(sock_fd, fd, start, end - start, stream, stall_timeout=stall)
            else:
                async for chunk in blob.chunks(start, end - start):
                    await response.write(chunk)
            sent = end

        try:
            if fd is not None and sock_fd is not None and isinstance(transport, asyncio.WriteTransport):
                assert writer is not None
                await flush(transport, writer.drain)
                stream = coordinator.open(fd, head.start, head.end)
            async with asyncio.timeout(bounds.deadline(head.end - head.start)):
                await follow_ingest(blob, head.start, head.end, send, follow)
            await response.write_eof()
            metrics.in_progress_serves.labels("complete").inc()
        except IngestEndedError as exc:
            metrics.in_progress_serves.labels(_OUTCOMES.get(type(exc), "aborted")).inc()
            abort_response(request, response, exc)
        except (ConnectionError, ContentNotFoundError, OSError) as exc:  # the client, or the deadline
            abort_response(request, response, exc)
        finally:
            if stream is not None:
                stream.close()
            metrics.in_progress_served_bytes.inc(sent - head.start)
            metrics.served_bytes.add_local(sent - head.start)
    return response


async def follow_ingest(blob: GrowingBlob, start: int, end: int, send: Send, bounds: FollowBounds) -> None:
    """Call ``send(a, b)`` for successive ranges of ``[start, end)`` as ``blob`` grows.

    The blob's last byte is sent only once it is committed as the expected digest. Raises an
    :class:`~spegel_py.errors.IngestEndedError` when the ingest is aborted, stalls beyond
    ``bounds.stall_timeout`` or is committed as something else.
    """
    loop = asyncio.get_running_loop()
    position = start
    quiet_since = loop.time() - idle(blob)  # the stall clock runs while the *writer* is quiet
    written = blob.progress().available
    delay = bounds.poll_min
    while position < end:
        progress = blob.progress()
        if progress.available > written:  # the writer moved, maybe still short of ``start``
            written = progress.available
            quiet_since = loop.time()
        if progress.state is IngestState.ABORTED:
            raise IngestAbortedError(f"the ingest of {blob.digest} was aborted at {progress.available} bytes")
        if progress.state is IngestState.MISMATCH:
            raise IngestMismatchError(f"the ingest of {blob.digest} was committed as another blob")
        ready = min(end, progress.available)
        if progress.state is IngestState.WRITING:
            ready = min(ready, blob.size - 1)  # the last byte waits for the commit's digest check
        if ready > position:
            await send(position, ready)
            position = ready
            delay = bounds.poll_min
            continue
        if loop.time() - quiet_since >= bounds.stall_timeout:
            raise IngestStalledError(f"the ingest of {blob.digest} stalled at {progress.available} bytes")
        await asyncio.sleep(delay)  # no portable file-growth notification; the wait is bounded
        delay = min(delay * 2, bounds.poll_max)


def idle(blob: GrowingBlob) -> float:
    """Seconds since ``blob``'s writer last wrote a byte (0 if the clock says the future)."""
    return max(0.0, time.time() - blob.progress().updated)


def stalled(blob: GrowingBlob, bounds: FollowBounds) -> bool:
    """True when ``blob`` is still being written but has not grown for ``bounds.stall_timeout``:
    not worth starting a response for (the peer is better off asking someone else at once)."""
    return blob.progress().state is IngestState.WRITING and idle(blob) >= bounds.stall_timeout

"""Serving one open blob as a response: headers, media type, ranges, and a zero-copy body.

Bodies of file-backed blobs go out with ``os.sendfile`` (:mod:`.sendfile`) under the page-cache
policy (:mod:`.pagecache`); blobs without a file are streamed in bounded chunks. Nothing read
here grows with the blob: only blobs small enough to be JSON (<= 4 MiB) are ever read into
memory, to sniff their media type, and only after their first bytes look like JSON.

Every body has a floor (:class:`WriteBounds`): a client that takes no byte for
``write_timeout`` seconds, or has not taken the whole body within ``write_timeout + size /
min_throughput`` seconds, is cut off (the connection is aborted, never padded), so a client
that never reads, or reads a byte now and then, holds a descriptor and a buffer only that long.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from spegel_py.errors import ContentNotFoundError
from spegel_py.httpx.answers import body_head, send_bytes
from spegel_py.httpx.headers import DIGEST_HEADER, NAMESPACE_HEADER
from spegel_py.metrics import Metrics
from spegel_py.oci import mediatypes
from spegel_py.oci.digest import Digest
from spegel_py.serving.pagecache import PageCacheCoordinator
from spegel_py.serving.sendfile import flush, send_range, sendfile_socket
from spegel_py.store.base import Blob

log = logging.getLogger(__name__)

# Bytes read to decide whether a blob could be JSON at all (layers are gzip/zstd/tar).
_PREFIX = 64


@dataclass(frozen=True, slots=True)
class WriteBounds:
    """How long a client may take to read a local body (see the module docstring)."""

    write_timeout: float = 30.0  # seconds without progress (0: no bound) and the deadline's allowance
    min_throughput: int = 256 * 1024  # bytes/s the deadline assumes at least (0: no deadline)

    def deadline(self, size: int) -> float | None:
        """Seconds a ``size``-byte body may take in all, or ``None`` for no deadline."""
        if self.min_throughput <= 0:
            return None
        return self.write_timeout + size / self.min_throughput


async def serve_content(
    request: web.Request,
    blob: Blob,
    digest: Digest,
    *,
    ranged: bool,
    coordinator: PageCacheCoordinator,
    metrics: Metrics,
    read_timeout: float,
    namespace: str | None = None,
    bounds: WriteBounds | None = None,
) -> web.StreamResponse:
    """Answer ``request`` (GET or HEAD) with ``blob``; ``ranged`` enables ``Range`` (blobs only);
    ``namespace`` (the request's validated ``ns``) is echoed in ``OCI-Namespace``.

    Raises :class:`~spegel_py.errors.RangeNotSatisfiableError` before anything is sent when the
    client's range selects nothing (the server answers 416).
    """
    async with asyncio.timeout(read_timeout):
        media_type, whole = await _sniff(blob)
    headers = {"Content-Type": media_type, DIGEST_HEADER: str(digest)}
    if namespace is not None:
        headers[NAMESPACE_HEADER] = namespace
    range_header = None
    if ranged:
        headers["Accept-Ranges"] = "bytes"
        range_header = request.headers.get("Range")
    head = body_head(blob.size, headers, range_header)
    bounds = bounds if bounds is not None else WriteBounds()
    if request.method == "HEAD":
        return await send_bytes(request, head, None)
    if whole is not None:
        response = await send_bytes(request, head, whole, deadline=bounds.deadline(head.end - head.start))
    else:
        response = head.response()
        await _send_body(request, response, blob, head.start, head.end, coordinator, bounds)
    metrics.served_bytes.add_local(head.end - head.start)
    return response


async def _sniff(blob: Blob) -> tuple[str, bytes | None]:
    """The media type and, when the blob is small JSON, its whole content (already read)."""
    if blob.size > mediatypes.SNIFF_LIMIT or blob.size == 0:
        return mediatypes.OCTET_STREAM, None
    prefix = b""
    async for chunk in blob.chunks(0, _PREFIX):
        prefix += chunk
    if not prefix.lstrip()[:1] == b"{":
        return mediatypes.OCTET_STREAM, None
    data = b"".join([chunk async for chunk in blob.chunks()])
    if len(data) != blob.size:
        raise ContentNotFoundError("blob changed size while being read")
    return mediatypes.sniff(data), data


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    blob: Blob,
    start: int,
    end: int,
    coordinator: PageCacheCoordinator,
    bounds: WriteBounds,
) -> None:
    """Send ``[start, end)`` within ``bounds``; on failure after the headers (a deadline
    included), abort the connection (never pad)."""
    writer = await response.prepare(request)
    transport = request.transport
    fd = blob.fileno()
    with sendfile_socket(transport) as sock_fd:  # held until the body is done
        try:
            if fd is not None and sock_fd is not None and transport is not None and writer is not None:
                assert isinstance(transport, asyncio.WriteTransport)
                await flush(transport, writer.drain)
                stream = coordinator.open(fd, start, end)
                try:
                    await send_range(
                        sock_fd,
                        fd,
                        start,
                        end - start,
                        stream,
                        stall_timeout=bounds.write_timeout or 1e9,  # 0: no stall bound
                        deadline=bounds.deadline(end - start),
                    )
                finally:
                    stream.close()
            else:
                # The transport's write deadline (spegel_py/httpx/limits.py) bounds a stalled client;
                # this bounds the whole body.
                async with asyncio.timeout(bounds.deadline(end - start)):
                    async for chunk in blob.chunks(start, end - start):
                        await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, ContentNotFoundError, OSError) as exc:  # TimeoutError is an OSError
            abort_response(request, response, exc)


def abort_response(request: web.Request, response: web.StreamResponse, exc: BaseException) -> None:
    """End a response whose body cannot be completed (its head is sent): abort the connection."""
    # The status line is gone: the only honest signal left is a short, closed connection.
    log.info("response body aborted", extra={"error": repr(exc)})
    response.force_close()
    if request.transport is not None:
        request.transport.abort()

"""Serving one open blob as a response: headers, media type, ranges, and a zero-copy body.

Bodies of file-backed blobs go out with ``os.sendfile`` (:mod:`.sendfile`) under the page-cache
policy (:mod:`.pagecache`); blobs without a file are streamed in bounded chunks. Nothing read
here grows with the blob: only blobs small enough to be JSON (<= 4 MiB) are ever read into
memory, to sniff their media type, and only after their first bytes look like JSON.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from spegel_py.errors import ContentNotFoundError
from spegel_py.metrics import Metrics
from spegel_py.oci import mediatypes
from spegel_py.oci.digest import Digest
from spegel_py.oci.errors import ErrorCode, error_body
from spegel_py.registry.pagecache import PageCacheCoordinator
from spegel_py.registry.ranges import ByteRange, Unsatisfiable, parse_range
from spegel_py.registry.sendfile import flush, send_range, sendfile_socket
from spegel_py.store.base import Blob

log = logging.getLogger(__name__)

# Bytes read to decide whether a blob could be JSON at all (layers are gzip/zstd/tar).
_PREFIX = 64


async def serve_content(
    request: web.Request,
    blob: Blob,
    digest: Digest,
    *,
    ranged: bool,
    coordinator: PageCacheCoordinator,
    metrics: Metrics,
    read_timeout: float,
) -> web.StreamResponse:
    """Answer ``request`` (GET or HEAD) with ``blob``; ``ranged`` enables ``Range`` (blobs only)."""
    size = blob.size
    async with asyncio.timeout(read_timeout):
        media_type, whole = await _sniff(blob)
    headers = {"Content-Type": media_type, "Docker-Content-Digest": str(digest)}
    byte_range: ByteRange | None = None
    if ranged:
        headers["Accept-Ranges"] = "bytes"
        try:
            byte_range = parse_range(request.headers.get("Range"), size)
        except Unsatisfiable:
            return web.Response(
                status=416,
                body=error_body(ErrorCode.RANGE_INVALID),
                content_type="application/json",
                headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
            )
    start, end, status = 0, size, 200
    if byte_range is not None:
        start, end, status = byte_range.start, byte_range.end, 206
        headers["Content-Range"] = byte_range.content_range()
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    if whole is not None:
        await response.prepare(request)
        await response.write_eof(whole[start:end])
        metrics.served_bytes.add_local(end - start)
        return response
    await _send_body(request, response, blob, start, end, coordinator)
    metrics.served_bytes.add_local(end - start)
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
) -> None:
    """Send ``[start, end)``; on failure after the headers, abort the connection (never pad)."""
    writer = await response.prepare(request)
    transport = request.transport
    fd = blob.fileno()
    sock_fd = sendfile_socket(transport)
    try:
        if fd is not None and sock_fd is not None and transport is not None and writer is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            await flush(transport, writer.drain)
            stream = coordinator.open(fd, start, end)
            try:
                await send_range(sock_fd, fd, start, end - start, stream)
            finally:
                stream.close()
        else:
            async for chunk in blob.chunks(start, end - start):
                await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, ContentNotFoundError, OSError) as exc:
        # The status line is gone: the only honest signal left is a short, closed connection.
        log.info("response body aborted", extra={"error": repr(exc)})
        response.force_close()
        if transport is not None:
            transport.abort()

"""The HTTP answers both paths give: OCI error bodies, ranged heads, and the error boundary.

Local serving (:mod:`spegel_py.serving`) and the peer relay (:mod:`spegel_py.relay`) answer the
same client, so they must answer alike: the same 206 and ``Content-Range`` for a ``Range``, the
same 416 with an OCI ``RANGE_INVALID`` body, the same 404 ``BLOB_UNKNOWN``/``MANIFEST_UNKNOWN``
that makes containerd fall back to the next host or upstream at once. :func:`answer_for` is the
one place where the project's error types (:mod:`spegel_py.errors`) become HTTP answers;
:func:`body_head` is the one reading of ``Range`` for a body of known size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from spegel_py.errors import (
    InvalidDigestError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    RangeNotSatisfiableError,
    StoreUnavailableError,
)
from spegel_py.httpx.ranges import parse_range
from spegel_py.oci.errors import ErrorCode, error_body
from spegel_py.oci.paths import Kind, UnknownPathError


def oci_error(
    code: ErrorCode,
    message: str | None = None,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OCI JSON error response (``status`` overrides the code's usual one)."""
    return web.Response(
        status=status or code.status,
        body=error_body(code, message),
        content_type="application/json",
        headers=headers,
    )


def not_found_code(kind: Kind | None) -> ErrorCode:
    """The OCI code of a 404 for ``kind``: containerd falls back on either at once."""
    return ErrorCode.BLOB_UNKNOWN if kind is Kind.BLOBS else ErrorCode.MANIFEST_UNKNOWN


def answer_for(exc: BaseException, kind: Kind | None = None) -> web.Response:
    """The answer to a request that ``exc`` ended before its response started.

    ``kind`` is what the request asked for (a blob or a manifest), for the code of a 404.
    ``NotFoundError`` -> 404 ``BLOB_UNKNOWN``/``MANIFEST_UNKNOWN``;
    ``RangeNotSatisfiableError`` -> 416 ``RANGE_INVALID`` with ``Content-Range: bytes */size``;
    an unknown path -> 404 ``UNSUPPORTED``; a bad digest -> 400 ``DIGEST_INVALID``; a tag outside
    the grammar -> 404 ``MANIFEST_UNKNOWN`` (no such manifest can exist); other invalid input ->
    400 ``NAME_INVALID``; an unreachable or slow content store (``StoreUnavailableError``,
    ``TimeoutError``, ``OSError``) -> 503 ``UNAVAILABLE``. Anything else is a bug and is raised
    again (aiohttp answers 500).
    """
    if isinstance(exc, NotFoundError):
        return oci_error(not_found_code(kind), str(exc) or None)
    if isinstance(exc, RangeNotSatisfiableError):
        return oci_error(
            ErrorCode.RANGE_INVALID,
            headers={"Content-Range": f"bytes */{exc.size}", "Accept-Ranges": "bytes"},
        )
    if isinstance(exc, UnknownPathError):
        return oci_error(ErrorCode.UNSUPPORTED, str(exc), status=404)
    if isinstance(exc, InvalidDigestError):
        return oci_error(ErrorCode.DIGEST_INVALID, str(exc))
    if isinstance(exc, InvalidReferenceError):
        return oci_error(ErrorCode.MANIFEST_UNKNOWN, str(exc))
    if isinstance(exc, InvalidInputError):
        return oci_error(ErrorCode.NAME_INVALID, str(exc))
    if isinstance(exc, (StoreUnavailableError, TimeoutError, OSError)):
        return oci_error(ErrorCode.UNAVAILABLE, "content store unavailable")
    raise exc


@dataclass(frozen=True, slots=True)
class BodyHead:
    """The head of an answer whose body is bytes ``[start, end)`` of the representation."""

    status: int  # 200 (everything) or 206 (one range)
    start: int
    end: int
    headers: dict[str, str]

    def response(self) -> web.StreamResponse:
        """A response with this head, its ``Content-Length`` the length of the body."""
        response = web.StreamResponse(status=self.status, headers=self.headers)
        response.content_length = self.end - self.start
        return response


def body_head(size: int, headers: Mapping[str, str], range_header: str | None = None) -> BodyHead:
    """The head for a ``size``-byte representation: 206 with ``Content-Range`` when
    ``range_header`` selects one range of it, else 200 with all of it.

    Raises :class:`RangeNotSatisfiableError` when the range selects nothing; :func:`answer_for`
    turns that into the 416. ``headers`` (content type, digest, ...) are copied, not changed.
    """
    selected = parse_range(range_header, size)
    head = dict(headers)
    if selected is None:
        return BodyHead(200, 0, size, head)
    head["Content-Range"] = selected.content_range()
    return BodyHead(206, selected.start, selected.end, head)


async def send_bytes(
    request: web.BaseRequest, head: BodyHead, data: bytes | None, *, deadline: float | None = None
) -> web.StreamResponse:
    """Answer ``request`` with ``head`` and ``data[head.start:head.end]`` (no body for a HEAD).

    A client that has not taken the body within ``deadline`` seconds (``None``: no deadline) is
    cut off: the connection is aborted, so it never sees a complete body.
    """
    response = head.response()
    await response.prepare(request)
    body = b"" if request.method == "HEAD" or data is None else data[head.start : head.end]
    try:
        async with asyncio.timeout(deadline):
            await response.write_eof(body)
    except TimeoutError:
        response.force_close()
        if request.transport is not None:
            request.transport.abort()
    return response

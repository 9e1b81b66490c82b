"""OCI distribution error codes and the JSON error body clients expect.

containerd, skopeo and podman read the ``errors[].code`` field; a 404 with ``BLOB_UNKNOWN`` or
``MANIFEST_UNKNOWN`` is what makes containerd fall back to the next mirror or to upstream at once.
Pure data: the registry maps its exceptions onto these codes.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class ErrorCode(enum.Enum):
    """An OCI error code and the HTTP status it is sent with."""

    BLOB_UNKNOWN = ("BLOB_UNKNOWN", 404, "blob unknown to registry")
    MANIFEST_UNKNOWN = ("MANIFEST_UNKNOWN", 404, "manifest unknown")
    NAME_UNKNOWN = ("NAME_UNKNOWN", 404, "repository name not known to registry")
    NAME_INVALID = ("NAME_INVALID", 400, "invalid repository name")
    DIGEST_INVALID = ("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
    MANIFEST_INVALID = ("MANIFEST_INVALID", 400, "manifest invalid")
    RANGE_INVALID = ("RANGE_INVALID", 416, "requested range not satisfiable")
    UNSUPPORTED = ("UNSUPPORTED", 405, "the operation is unsupported")
    UNAUTHORIZED = ("UNAUTHORIZED", 401, "authentication required")
    DENIED = ("DENIED", 403, "requested access to the resource is denied")
    TOOMANYREQUESTS = ("TOOMANYREQUESTS", 429, "too many requests")
    UNAVAILABLE = ("UNAVAILABLE", 503, "service unavailable")

    def __init__(self, code: str, status: int, message: str) -> None:
        self.code = code
        self.status = status
        self.message = message


def error_body(code: ErrorCode, message: str | None = None, detail: Any = None) -> bytes:
    """The ``{"errors":[{"code","message","detail"}]}`` body for one error, as UTF-8 JSON."""
    entry: dict[str, Any] = {"code": code.code, "message": message or code.message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()

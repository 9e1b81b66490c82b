"""Parse distribution API paths (``/v2/<name>/(manifests|blobs)/<reference>``) strictly.

This is where untrusted request paths become typed values. The raw path (before any server-side
normalisation) is parsed; percent escapes may only encode characters the grammar already allows,
so ``%2f``, ``%2e%2e``, NUL and double encodings are refused outright, and a digest can only ever
be ``algorithm:hex``. Nothing here touches the filesystem: a file path is only ever built from a
validated :class:`~spegel_py.oci.digest.Digest`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from spegel_py.errors import InvalidInputError, InvalidReferenceError
from spegel_py.oci.digest import Digest
from spegel_py.oci.reference import validate_name, validate_registry, validate_tag

# Longest raw path accepted: a 255-character name plus a sha512 digest fits with room to spare.
MAX_PATH = 1024
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Characters that may appear (raw or percent-encoded) in a name, tag or digest, minus "/".
_SAFE_ESCAPED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_RAW_ALLOWED = re.compile(r"[A-Za-z0-9._:/%-]*")


class UnknownPathError(InvalidInputError):
    """A well-formed request for an endpoint this read-only registry does not have."""


class Kind(enum.Enum):
    """Which distribution resource a path names."""

    MANIFESTS = "manifests"
    BLOBS = "blobs"


@dataclass(frozen=True, slots=True)
class DistributionPath:
    """A parsed ``/v2/`` path. ``kind is None`` means the API root ``/v2/``.

    For manifests exactly one of ``tag`` and ``digest`` is set; for blobs ``digest`` is.
    """

    kind: Kind | None
    name: str = ""
    tag: str | None = None
    digest: Digest | None = None


ROOT = DistributionPath(None)


def parse_path(raw_path: str) -> DistributionPath:
    """Parse the raw request path (query string allowed, ignored).

    Raises ``InvalidNameError``, ``InvalidDigestError``, ``InvalidReferenceError`` (a tag that
    cannot exist), ``InvalidInputError`` (bad escapes or characters) or :class:`UnknownPathError`.
    """
    path = raw_path.partition("?")[0]
    if len(path) > MAX_PATH:
        raise InvalidInputError("request path too long")
    if not _RAW_ALLOWED.fullmatch(path):
        raise InvalidInputError("request path has characters outside the distribution grammar")
    path = _unescape(path)
    if path in ("/v2", "/v2/"):
        return ROOT
    if not path.startswith("/v2/"):
        raise UnknownPathError("not a distribution API path")
    parts = path[4:].split("/")
    if len(parts) < 3 or parts[-2] not in ("manifests", "blobs"):
        raise UnknownPathError("no such endpoint")
    name = validate_name("/".join(parts[:-2]))
    kind = Kind(parts[-2])
    reference = parts[-1]
    if kind is Kind.BLOBS:
        return DistributionPath(kind, name, digest=Digest.parse(reference))
    if ":" in reference:
        return DistributionPath(kind, name, digest=Digest.parse(reference))
    return DistributionPath(kind, name, tag=validate_tag(reference))


def parse_ns(values: list[str]) -> str | None:
    """The upstream registry from the ``ns`` query parameter(s); ``None`` when absent.

    containerd sends exactly one (``docker.io``, ``127.0.0.1:5000``); more than one is refused.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidReferenceError("more than one ns parameter")
    return validate_registry(values[0])


def _unescape(path: str) -> str:
    """Decode ``%XX`` escapes, allowing only characters a name, tag or digest may hold."""
    if "%" not in path:
        return path

    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        if char not in _SAFE_ESCAPED:
            raise InvalidInputError(f"escaped character {match.group(0)!r} not allowed in a path")
        return char

    decoded = _ESCAPE.sub(decode, path)
    if "%" in decoded:  # a stray "%" that was not a valid escape
        raise InvalidInputError("malformed percent escape in path")
    return decoded

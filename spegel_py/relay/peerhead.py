"""A peer's response head, parsed strictly: anything unusual is a :class:`PeerProtocolError`.

Why strict: a peer's head becomes the head of our answer to containerd, and a value that the
relay does not expect must not reach aiohttp (which raises on a CR or LF in a header value: a
500) or ``int()`` (which raises on ``'²'``, a digit to ``str.isdigit``). Every failure here is a
:class:`~spegel_py.errors.PeerError`, so the mirror treats the peer as a miss and tries the
next provider, or answers the 404 that sends containerd upstream.

What is accepted (RFC 9112 sections 4 and 5, narrowed to what a registry answers):

- a status line ``HTTP/1.0`` or ``HTTP/1.1``, a space, three ASCII digits (100 to 599), and an
  optional reason phrase (space, tab, visible ASCII or obs-text);
- at most :data:`MAX_HEADERS` header lines of at most :data:`MAX_LINE` bytes each (the whole
  head is bounded by the client too), each ``token ":" OWS value OWS``: no space before the
  colon, no line folding (a line starting with a space or tab), no CR, LF, NUL or other control
  byte except a tab anywhere;
- of those, only :data:`KEPT` are kept (the rest are checked, then dropped): their values must
  be visible ASCII, and a repeated one must repeat the same value;
- ``Content-Length``: 1 to 19 ASCII digits, and never together with ``Transfer-Encoding``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_py.errors import PeerProtocolError

MAX_HEADERS = 64  # a registry's answer carries about ten
MAX_LINE = 4096  # bytes of one header line (a Content-Type with parameters is under 200)

# The peer headers the relay forwards to its client (as values it rebuilds or has checked:
# Content-Type is copied, Content-Length recomputed, Docker-Content-Digest parsed and
# re-rendered, Content-Range checked against the range asked for, Accept-Ranges normalised).
FORWARDED = frozenset(
    {"content-type", "content-length", "docker-content-digest", "content-range", "accept-ranges"}
)
# ... and those it reads for the connection itself. Nothing else is taken from a peer.
KEPT = FORWARDED | {"connection", "transfer-encoding"}

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # no CTL but HTAB (RFC 9110 5.5)
_VISIBLE = re.compile(rb"[\t\x20-\x7e]*")  # what a kept header's value may hold
_LENGTH = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class PeerHead:
    """A parsed response head: ``headers`` has the :data:`KEPT` names only, lower-cased."""

    status: int
    keep_alive: bool  # the peer may be asked again on this connection
    headers: dict[str, str]
    content_length: int | None  # None without Content-Length (or with Transfer-Encoding)


def parse_head(head: bytes) -> PeerHead:
    """Parse ``head`` (the bytes before the blank line that ends it)."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise PeerProtocolError(f"peer sent a malformed status line {lines[0][:80]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise PeerProtocolError(f"peer sent more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, value = _header(line)
        if name not in KEPT:
            continue
        if headers.setdefault(name, value) != value:
            raise PeerProtocolError(f"peer sent two different {name} headers")
    length: int | None = None
    if "content-length" in headers:
        if "transfer-encoding" in headers:
            raise PeerProtocolError("peer sent both Content-Length and Transfer-Encoding")
        if not _LENGTH.fullmatch(headers["content-length"]):
            raise PeerProtocolError(f"peer sent an invalid Content-Length {headers['content-length'][:40]!r}")
        length = int(headers["content-length"])
    connection = headers.get("connection", "").lower()
    keep_alive = "transfer-encoding" not in headers and (
        connection == "keep-alive" if status_line.group(1) == b"0" else connection != "close"
    )
    return PeerHead(int(status_line.group(2)), keep_alive, headers, length)


def _header(line: bytes) -> tuple[str, str]:
    """One header line as (lower-cased name, value without surrounding whitespace)."""
    if len(line) > MAX_LINE:
        raise PeerProtocolError(f"peer sent a header line of more than {MAX_LINE} bytes")
    if line[:1] in (b" ", b"\t"):
        raise PeerProtocolError("peer sent a folded header line (obs-fold)")
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise PeerProtocolError(f"peer sent a malformed header line {line[:80]!r}")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise PeerProtocolError(f"peer sent a control character in header {name[:40]!r}")
    lower = name.decode("ascii").lower()
    if lower in KEPT and not _VISIBLE.fullmatch(value):
        raise PeerProtocolError(f"peer sent a non-ASCII {lower} header")
    return lower, value.decode("ascii" if lower in KEPT else "latin-1")

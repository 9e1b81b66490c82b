"""The ``Range`` request header, as RFC 9110 section 14 asks a server to treat it.

One ``bytes=`` range is honoured (206); a range that starts past the end is unsatisfiable (416);
several ranges, another unit or anything malformed is ignored (a plain 200 with the full body),
which the RFC allows and which keeps every response a single zero-copy body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_py.errors import RangeNotSatisfiableError

# 19 digits bound the integers parsed from a client (a header of a million digits costs nothing).
_SINGLE = re.compile(r"bytes[ \t]*=[ \t]*(?:(\d{1,19})[ \t]*-[ \t]*(\d{0,19})|-[ \t]*(\d{1,19}))[ \t]*")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The half-open byte range ``[start, end)`` of a ``size``-byte representation."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range ``header`` selects, or ``None`` to send everything.

    Raises :class:`RangeNotSatisfiableError` when the range selects nothing (416 with ``bytes */size``).
    """
    if not header:
        return None
    match = _SINGLE.fullmatch(header)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            raise RangeNotSatisfiableError(header, size=size)
        return ByteRange(max(0, size - length), size, size)
    start = int(first)
    if last:
        stop = int(last)
        if stop < start:
            return None  # invalid per RFC 9110: ignore the header
        end = min(stop + 1, size)
    else:
        end = size
    if start >= size:
        raise RangeNotSatisfiableError(header, size=size)
    return ByteRange(start, end, size)

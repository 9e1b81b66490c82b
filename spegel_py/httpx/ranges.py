"""The ``Range`` request header, as RFC 9110 section 14 asks a server to treat it.

One ``bytes=`` range is honoured (206); a range that starts past the end is unsatisfiable (416);
several ranges, another unit or anything malformed is ignored (a plain 200 with the full body),
which the RFC allows and which keeps every response a single zero-copy body.

The relay asks a peer for the client's range (:meth:`RangeSpec.header`, rebuilt from the parsed
numbers, never the client's text) and checks the peer's ``Content-Range`` with
:func:`parse_content_range`. Digits are ASCII only (``[0-9]``, not ``\\d``, which also matches
other scripts' digits) and at most 19 of them, so every number fits a signed 64-bit integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spegel_py.errors import RangeNotSatisfiableError

# 19 digits bound the integers parsed from a client (a header of a million digits costs nothing).
_SINGLE = re.compile(
    r"bytes[ \t]*=[ \t]*(?:([0-9]{1,19})[ \t]*-[ \t]*([0-9]{0,19})|-[ \t]*([0-9]{1,19}))[ \t]*"
)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")


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


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One syntactically valid ``bytes=`` range, before the representation's size is known.

    ``first``/``last`` for ``bytes=first-[last]``, or ``suffix`` alone for ``bytes=-suffix``.
    """

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def header(self) -> str:
        """The range as a ``Range`` header value, rebuilt from the numbers."""
        if self.suffix is not None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"

    def resolve(self, size: int) -> ByteRange:
        """The bytes this range selects of a ``size``-byte representation.

        Raises :class:`RangeNotSatisfiableError` when it selects nothing.
        """
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                raise RangeNotSatisfiableError(self.header(), size=size)
            return ByteRange(max(0, size - self.suffix), size, size)
        assert self.first is not None
        if self.first >= size:
            raise RangeNotSatisfiableError(self.header(), size=size)
        end = size if self.last is None else min(self.last + 1, size)
        return ByteRange(self.first, end, size)


def parse_range_spec(header: str | None) -> RangeSpec | None:
    """The single range ``header`` asks for, or ``None`` when the header is to be ignored."""
    if not header:
        return None
    match = _SINGLE.fullmatch(header)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        return RangeSpec(suffix=int(suffix))
    if last and int(last) < int(first):
        return None  # invalid per RFC 9110: ignore the header
    return RangeSpec(first=int(first), last=int(last) if last else None)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range ``header`` selects, or ``None`` to send everything.

    Raises :class:`RangeNotSatisfiableError` when the range selects nothing (416 with ``bytes */size``).
    """
    spec = parse_range_spec(header)
    if spec is None:
        return None
    try:
        return spec.resolve(size)
    except RangeNotSatisfiableError as exc:
        raise RangeNotSatisfiableError(header or "", size=size) from exc


def parse_content_range(value: str | None) -> ByteRange | None:
    """A ``Content-Range: bytes first-last/size`` of a 206, or ``None`` if it is not exactly that
    (another unit, ``*``, an unknown size, ``last < first`` or ``last >= size``)."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None
    first, last, size = (int(group) for group in match.groups())
    if last < first or last >= size:
        return None
    return ByteRange(first, last + 1, size)

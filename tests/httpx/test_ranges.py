"""Range header parsing as RFC 9110 asks (the HTTP-level table is in tests/serving/test_server.py)."""

from __future__ import annotations

import pytest

from spegel_py.errors import RangeNotSatisfiableError
from spegel_py.httpx.ranges import ByteRange, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("", 10, None),
        ("bytes=0-0", 10, ByteRange(0, 1, 10)),
        ("bytes=0-", 10, ByteRange(0, 10, 10)),
        ("bytes=3-5", 10, ByteRange(3, 6, 10)),
        ("bytes=3-50", 10, ByteRange(3, 10, 10)),
        ("bytes=-3", 10, ByteRange(7, 10, 10)),
        ("bytes=-30", 10, ByteRange(0, 10, 10)),
        ("bytes = 1 - 2", 10, ByteRange(1, 3, 10)),
        ("bytes=0-1,2-3", 10, None),
        ("bytes=5-1", 10, None),
        ("bytes=a-b", 10, None),
        ("bits=0-1", 10, None),
        ("bytes=--1", 10, None),
        ("bytes=" + "1" * 20 + "-", 10, None),
    ],
)
def test_parse(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-0", 0), ("bytes=-1", 0)],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, size)


def test_content_range() -> None:
    assert ByteRange(7, 10, 10).content_range() == "bytes 7-9/10"

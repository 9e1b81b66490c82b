"""Decode an 8-bit RGB/RGBA PNG into rows of (r, g, b) in pure Python (zlib + struct).

Chromium's ``--screenshot`` writes such PNGs; decoding them here lets a test look at pixels
without an image library in the test dependencies.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    pixels: list[tuple[int, int, int]]  # row-major, alpha dropped

    def count(self, colour: tuple[int, int, int], *, tolerance: int = 0) -> int:
        """Pixels within ``tolerance`` of ``colour`` on every channel."""
        r0, g0, b0 = colour
        return sum(
            1
            for r, g, b in self.pixels
            if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance and abs(b - b0) <= tolerance
        )

    def non_white(self, *, threshold: int = 240) -> int:
        return sum(1 for r, g, b in self.pixels if min(r, g, b) < threshold)


def read_png(path: Path) -> Image:
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG")
    pos, idat, header = len(_SIGNATURE), bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in (2, 6) or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace {interlace}")
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(bytes(idat))
    pixels: list[tuple[int, int, int]] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, row, previous, channels)
        pixels.extend((row[i], row[i + 1], row[i + 2]) for i in range(0, stride, channels))
        previous = row
    return Image(width, height, pixels)


def _unfilter(kind: int, row: bytearray, prev: bytearray, bpp: int) -> None:
    """Undo one PNG row filter in place (None, Sub, Up, Average, Paeth)."""
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 0:
            continue
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 2:
            row[i] = (row[i] + up) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            upper_left = prev[i - bpp] if i >= bpp else 0
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
            row[i] = (row[i] + pred) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")

"""The demo's favicon, drawn in code: the pages' brand mark (a rounded square, blue to violet) as
a 32x32 PNG inside an ICO file, so that ``/favicon.ico`` answers without a binary in the
repository."""

from __future__ import annotations

import functools
import struct
import zlib

SIZE = 32
_FROM, _TO = (0x2F, 0x5B, 0xEA), (0x8A, 0x5C, 0xF6)  # batchflow.css: --bf-accent to #8a5cf6
_RADIUS = 7


def _pixel(x: int, y: int) -> bytes:
    # Outside the rounded corners: transparent.
    cx = min(max(x, _RADIUS), SIZE - 1 - _RADIUS)
    cy = min(max(y, _RADIUS), SIZE - 1 - _RADIUS)
    if (x - cx) ** 2 + (y - cy) ** 2 > _RADIUS**2:
        return b"\0\0\0\0"
    t = (x + y) / (2 * (SIZE - 1))  # the 135-degree gradient
    return bytes(round(a + (b - a) * t) for a, b in zip(_FROM, _TO, strict=True)) + b"\xff"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def favicon() -> bytes:
    """The ICO file's bytes (one 32x32 PNG image, which every current browser reads)."""
    rows = b"".join(b"\0" + b"".join(_pixel(x, y) for x in range(SIZE)) for y in range(SIZE))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png

"""Damaged and unusual image files, made on the fly for the bad-input tests.

Every function writes one file and returns its path. Each is a way real files go wrong: a
header that promises more than the data holds (raised height, a huge size over a tiny
body), data cut short, damaged compressed data, a file that is not a regular file.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np


def pattern(h: int = 48, w: int = 64, c: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth image plus noise, ``(H, W, C)`` for C <= 4 (``(H, W)`` for C = 1)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:h, 0:w]
    ramps = [(x * top) // max(w, 1), (y * top) // max(h, 1), ((x + y) * top) // (h + w), ((w - x) * top) // max(w, 1)]
    base = np.stack(ramps[:c], -1)
    noisy = base.astype(np.float64) + rng.normal(0, top / 50, base.shape)
    arr = noisy.clip(0, top).astype(dtype)
    return arr[..., 0] if c == 1 else arr


def png_bytes(
    raw: bytes, w: int, h: int, depth: int, colour: int, interlace: int = 0, bad_idat_crc: bool = False
) -> bytes:
    """A PNG from already filtered scanlines ``raw`` (one IDAT, no ancillary chunks)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) ^ (kind == b"IDAT" and bad_idat_crc)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def scanlines(arr: np.ndarray, filter_type: int = 0) -> bytes:
    """Rows of ``arr`` (big-endian for 16 bits), each after a filter-type byte (0: none)."""
    rows = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    return b"".join(bytes([filter_type]) + rows[r].tobytes() for r in range(arr.shape[0]))


def adam7_png(arr: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit grey or RGB PNG of ``arr``, written by hand (Pillow writes none)."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    raw = b"".join(scanlines(arr[r0::dr, c0::dc]) for r0, c0, dr, dc in passes if arr[r0::dr, c0::dc].size)
    return png_bytes(raw, w, h, 8, colour, interlace=1)


def with_ihdr_size(data: bytes, w: int | None = None, h: int | None = None) -> bytes:
    """``data`` (a PNG) with IHDR's width/height replaced and its CRC fixed."""
    body = bytearray(data[16:29])
    if w is not None:
        body[0:4] = struct.pack(">I", w)
    if h is not None:
        body[4:8] = struct.pack(">I", h)
    return data[:16] + bytes(body) + struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body))) + data[33:]


def with_jpeg_size(data: bytes, w: int | None = None, h: int | None = None) -> bytes:
    """``data`` (a baseline JPEG) with its SOF0 height/width replaced."""
    out = bytearray(data)
    i = out.find(b"\xff\xc0")
    if h is not None:
        out[i + 5 : i + 7] = struct.pack(">H", h)
    if w is not None:
        out[i + 7 : i + 9] = struct.pack(">H", w)
    return bytes(out)


def with_bmp_size(data: bytes, w: int | None = None, h: int | None = None) -> bytes:
    """``data`` (a BMP with a BITMAPINFOHEADER) with its width/height replaced."""
    out = bytearray(data)
    if w is not None:
        out[18:22] = struct.pack("<i", w)
    if h is not None:
        out[22:26] = struct.pack("<i", h)
    return bytes(out)


def with_tiff_height(data: bytes, h: int) -> bytes:
    """``data`` (a little-endian TIFF) with ImageLength (tag 257) replaced in its first IFD."""
    out = bytearray(data)
    (ifd,) = struct.unpack("<I", out[4:8])
    (n,) = struct.unpack("<H", out[ifd : ifd + 2])
    for i in range(n):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", out[entry : entry + 4])
        if tag == 257:
            out[entry + 8 : entry + 12] = struct.pack("<H", h) + b"\0\0" if kind == 3 else struct.pack("<I", h)
    return bytes(out)


def encode(arr: np.ndarray, fmt: str, **options) -> bytes:
    """``arr`` encoded by Pillow as ``fmt``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **options)
    return buf.getvalue()


def damaged_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every damaged case: name -> (file, a regex the decode error must match)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = pattern()
    png = encode(rgb, "PNG")
    jpeg = encode(rgb, "JPEG", quality=90)
    wide = pattern(8, 8, 3, dtype=np.uint16)
    cases = {
        "tall.png": (with_ihdr_size(png, h=96), r"header promises 64x96 pixels .* data holds"),
        "huge.png": (with_ihdr_size(png, w=100_000, h=100_000), r"header claims 100000x100000 pixels"),
        "cut.png": (png[: len(png) // 2], r"truncated"),
        "bad-filter.png": (png_bytes(scanlines(rgb[..., 0], filter_type=9), 64, 48, 8, 0), r"damaged|unrecognized"),
        "bad-filter-16bit-rgb.png": (
            png_bytes(scanlines(wide, filter_type=7), 8, 8, 16, 2),
            r"unknown PNG filter type",
        ),
        "bad-crc-16bit-rgb.png": (png_bytes(scanlines(wide), 8, 8, 16, 2, bad_idat_crc=True), r"CRC is wrong"),
        "bad-zlib.png": (png[:60] + bytes(b ^ 0x5A for b in png[60:-30]) + png[-30:], r"damaged|broken|truncated|CRC"),
        "empty.png": (b"", r"the file is empty \(0 bytes\)"),
        "text.jpg": (b"this is not an image\n", r"not a PNG, JPEG, GIF, BMP, TIFF or WebP file"),
        "huge.jpg": (with_jpeg_size(jpeg, w=60_000, h=60_000), r"header claims 60000x60000 pixels"),
        "cut.jpg": (jpeg[:600], r"cannot decode .*cut\.jpg"),
        "tall.tif": (with_tiff_height(encode(rgb, "TIFF"), 96), r"header promises 64x96 pixels .* covers 3072"),
        "tall.bmp": (with_bmp_size(encode(rgb, "BMP"), h=96), r"truncated"),
        "huge.bmp": (with_bmp_size(encode(rgb, "BMP"), w=100_000, h=100_000), r"header claims 100000x100000"),
        "cut.webp": (encode(rgb, "WEBP")[:200], r"cannot decode .*cut\.webp"),
    }
    out = {}
    for name, (data, message) in cases.items():
        path = folder / name
        path.write_bytes(data)
        out[name] = (path, message)
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    out["fifo.png"] = (fifo, r"it is a FIFO \(named pipe\), not an image file")
    return out


def decode_or_crash(path):
    """``decode_image_file``, except that a file named ``crash*`` kills the process with
    SIGSEGV, as a native decoder does on a file it cannot handle."""
    import signal

    from torchgmm.io.images import decode_image_file

    if Path(path).name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_image_file(path)

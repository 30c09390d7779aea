"""Image files at the edge: discovery, decoding (a DataLoader ``Dataset``) and atomic writes.

:func:`decode_image_file` is the one function that decodes image files, for the jobs and
for :class:`~torchgmm.io.VideoReader`'s image sequences alike: JPEG through a tensor codec
(:func:`image_codec`: torchvision's, else TorchCodec's, else Pillow), PNG, GIF, BMP, TIFF
and WebP through Pillow, each file's header checked before a decoder sees it (see there
why); :func:`write_png` encodes with the same codec. Decoded images are ``(C, H, W)`` tensors, uint8
or uint16 (16-bit PNG/TIFF), with C = 1 (grey) or 3 (RGB): an alpha channel is dropped. A
file that cannot be decoded is never returned empty: the dataset yields an
:class:`ImageItem` carrying the error message, so a run can name it and go on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import io
import os
import re
import signal
import stat
import struct
import tempfile
import time
import warnings
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchgmm.exceptions import OutputFolderBusyError
from torchgmm._checks import ShapeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageSource",
    "ImageItem",
    "find_images",
    "file_kind",
    "decode_image_file",
    "ImageFileDataset",
    "DecodeWorkers",
    "collate_items",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_output_folder",
    "lock_output_folder",
    "OutputFolderBusyError",
    "remove_stale_temporaries",
    "write_png",
    "IMAGE_CODECS",
    "image_codec",
]

#: file extensions picked up when searching folders (lower case)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@contextlib.contextmanager
def _quiet_torchvision() -> Iterator[None]:
    """Silence torchvision 0.29's deprecation notice of its image codecs (one per call).

    They are what this module is built on; TorchCodec is their announced successor.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchVision are deprecated", category=DeprecationWarning)
        yield


#: the tensor image codecs, in the order :func:`image_codec` prefers them
IMAGE_CODECS = ("torchvision", "torchcodec", "pillow")


def image_codec() -> str:
    """The codec that decodes JPEG (and 16-bit colour PNG) and encodes PNG here.

    torchvision's codecs while torchvision ships them (0.29 deprecates them in favour of
    TorchCodec's); else TorchCodec's (the optional ``torchcodec`` extra; its image codecs are
    the same libjpeg-turbo and libpng code, give the same pixels and the same PNG bytes, and
    need no FFmpeg); else Pillow, a dependency (the same JPEG pixels; PNG bytes of its own,
    the same pixels; no 16-bit colour PNG). All other formats are decoded by Pillow.
    The choice is made once per process; docs/benchmarks.md "Image decoders" has the
    measurements behind it.

    torchvision's codecs are its ``image`` library's operators (``torch.ops.image``, what
    ``torchvision.io.decode_image`` and ``encode_png`` call), loaded without importing
    torchvision: its package imports its models and ops, longer than a job that writes one
    PNG spends on it (``torchgmm background``'s ``background.png``).

    Returns:
        one of :data:`IMAGE_CODECS`.

    Example:
        >>> image_codec() in IMAGE_CODECS
        True
    """
    global _CODEC
    if _CODEC is None:
        _CODEC = _first_codec()
    return _CODEC


def _first_codec() -> str:
    if _load_torchvision_image_ops():
        return "torchvision"
    try:
        from torchcodec.decoders import decode_jpeg, decode_png  # noqa: F401
        from torchcodec.encoders import PngEncoder  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, a broken install (a missing libtorchcodec)
        return "pillow"
    return "torchcodec"


def _load_torchvision_image_ops() -> bool:
    """Load torchvision's image operators (``torch.ops.image``) and check them on a tiny
    image; through ``torchvision.io`` when its library is not where this looks first."""
    loaders = [functools.partial(torch.ops.load_library, lib) for lib in _torchvision_image_libraries()]
    for load in [*loaders, _import_torchvision_io]:
        try:
            load()
            tiny = torch.tensor([[[0, 255], [7, 9]]], dtype=torch.uint8)
            if torch.equal(torch.ops.image.decode_image(torch.ops.image.encode_png(tiny, 1), 0, False), tiny):
                return True
        except Exception:  # noqa: BLE001, S112 - a missing or incompatible library: the next way
            continue
    return False


def _torchvision_image_libraries() -> list[str]:
    """The paths of torchvision's image library in its package folder (none: not installed)."""
    try:
        spec = importlib.util.find_spec("torchvision")  # finds the package, runs none of it
    except (ImportError, ValueError):
        return []
    extensions = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    return [
        found.origin
        for folder in (spec.submodule_search_locations or [] if spec else [])
        for name in ("image_stable", "image")  # torchvision 0.29's name, and its earlier one
        if (found := importlib.machinery.FileFinder(folder, extensions).find_spec(name))
    ]


def _import_torchvision_io() -> None:
    with _quiet_torchvision():
        importlib.import_module("torchvision.io").encode_png  # noqa: B018 - removed one day


_CODEC: str | None = None

#: torchvision's ``ImageReadMode`` values, the ``mode`` of its operators
_TORCHVISION_MODES = {"unchanged": 0, "grey": 1, "rgb": 3}


class ImageSource(NamedTuple):
    """An image file and its path relative to the input it was found under."""

    path: Path
    #: path relative to the input folder (the file name for a file given directly)
    relative: Path


def find_images(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[ImageSource]:
    """Image files named by ``inputs``: files as given, folders searched recursively.

    Files found in folders are kept when their extension is in :data:`IMAGE_EXTENSIONS`
    (other files are ignored); a file named directly is always kept (a non-image then fails
    to decode and is reported). Order is sorted and duplicates are dropped. Folders in
    ``exclude`` (and everything below them) are left out of the folder search, so an output
    folder inside an input folder is not read back as input on the next run.

    Args:
        inputs: files and folders; a single ``str`` or path is one input (not a sequence of
            one-letter names).
        exclude: folders whose files are never picked up by a folder search (a file named
            directly in ``inputs`` is still kept).

    Returns:
        the image files, each with its path relative to its input.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found at all.
        ValueError: an input is neither a file nor a folder (a FIFO, a socket, a device).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name in ("b/2.png", "a.jpg", "notes.txt"):
        ...         Path(d, name).parent.mkdir(exist_ok=True); Path(d, name).touch()
        ...     print([src.relative.as_posix() for src in find_images([d])])
        ['a.jpg', 'b/2.png']
    """
    found: dict[Path, ImageSource] = {}
    if isinstance(inputs, (str, os.PathLike)):  # a str is iterable: "dir" would become "d", "i", "r"
        inputs = [inputs]
    inputs = [Path(p) for p in inputs]
    excluded = [Path(p).resolve() for p in exclude]
    n_excluded = 0
    for root in inputs:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    resolved = path.resolve()
                    if any(resolved.is_relative_to(ex) for ex in excluded):
                        n_excluded += 1
                        continue
                    found.setdefault(resolved, ImageSource(path, path.relative_to(root)))
        elif root.is_file():
            found.setdefault(root.resolve(), ImageSource(root, Path(root.name)))
        elif root.exists():
            raise ValueError(f"input {str(root)!r} is {file_kind(root)}, not an image file or a folder.")
        else:
            raise FileNotFoundError(f"input {str(root)!r} does not exist.")
    if not found:
        names = ", ".join(repr(str(p)) for p in inputs) or "(none given)"
        skipped = ""
        if n_excluded:
            skipped = f" ({n_excluded} image(s) left out because they lie in {', '.join(map(str, excluded))})"
        raise FileNotFoundError(
            f"no image files found in {names}{skipped}; expected files or folders holding "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} images."
        )
    return list(found.values())


#: the most pixels (H x W) an image header may claim before any decoder sees the file: a
#: header is a promise, and a 100000x100000 one over a few bytes of data would make the
#: decoder allocate 30 GB. 2**28 (16384 x 16384) is 4 times a 65-megapixel photo.
MAX_IMAGE_PIXELS = 2**28

#: the formats this module decodes, told by their first bytes (never by the file name)
ImageFormat = Literal["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
ImageReadMode = Literal["unchanged", "grey", "rgb"]


def _sniff_format(data: bytes) -> ImageFormat | None:
    """The format of an image file from its signature (magic bytes), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def file_kind(path: str | os.PathLike) -> str:
    """What ``path`` is, for messages: ``"a file"`` (regular), ``"a folder"``, ``"a FIFO
    (named pipe)"``, ``"a socket"``, ``"a device"`` or ``"not a regular file"``.

    Asked before opening anything: opening a FIFO blocks until a writer comes.

    Raises:
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     os.mkfifo(f"{d}/pipe")
        ...     print(file_kind(d), "/", file_kind(f"{d}/pipe"))
        a folder / a FIFO (named pipe)
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _read_image_bytes(path: Path) -> bytes:
    """The bytes of an image file; what is not a non-empty regular file is named as what it is.

    A FIFO is never opened (opening one blocks until a writer comes).
    """
    kind = file_kind(path)  # FileNotFoundError names the path
    if kind != "a file":
        raise ValueError(f"cannot decode {str(path)!r}: it is {kind}, not an image file.")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"cannot decode {str(path)!r}: the file is empty (0 bytes).")
    return data


def _open_header(data: bytes, fmt: ImageFormat) -> Any:
    """Parse the header with Pillow's plugin for ``fmt``, without decoding any pixel.

    The plugin class is used directly instead of ``PIL.Image.open``: the size check is ours
    (:data:`MAX_IMAGE_PIXELS`, one rule for every decoder) and Pillow's own, which warns
    between 89 and 179 megapixels, would print a warning on a normal run.
    """
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    if fmt == "WEBP":
        from PIL import WebPImagePlugin

        return WebPImagePlugin.WebPImageFile(io.BytesIO(data))
    plugin = {
        "PNG": PngImagePlugin.PngImageFile,
        "JPEG": JpegImagePlugin.JpegImageFile,
        "GIF": GifImagePlugin.GifImageFile,
        "BMP": BmpImagePlugin.BmpImageFile,
        "TIFF": TiffImagePlugin.TiffImageFile,
    }[fmt]
    return plugin(io.BytesIO(data))


def _png_header(data: bytes) -> tuple[int, int, int, int, int]:
    """IHDR of a PNG: width, height, bit depth, colour type, interlace method."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("its first chunk is not IHDR")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, colour, interlace


#: samples per pixel of each PNG colour type (grey, RGB, palette, grey+alpha, RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7 passes: (first row, first column, row step, column step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _png_row_layout(width: int, height: int, depth: int, colour: int, interlace: int) -> list[tuple[int, int]]:
    """``(rows, bytes per row incl. the filter byte)`` of each pass of the PNG's image data
    (one pass, or Adam7's seven; empty passes are left out), PNG spec section 8.2."""
    bits = _PNG_SAMPLES[colour] * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    layout = []
    for row0, col0, drow, dcol in passes:
        rows, cols = -(-(height - row0) // drow), -(-(width - col0) // dcol)
        if rows > 0 and cols > 0:
            layout.append((rows, 1 + (cols * bits + 7) // 8))
    return layout


def _png_image_data(data: bytes, *, keep: bool) -> tuple[int, bytes | None, bool]:
    """Walk a PNG's chunks and inflate its IDAT stream.

    Returns how many bytes the stream inflates to, those bytes when ``keep``, and whether
    every chunk's CRC is right. A chunk that runs past the end of the file or a damaged
    zlib stream raises ``ValueError``. The stream is inflated in 1 MiB pieces, so counting
    needs no memory of the image's size.
    """
    inflater = zlib.decompressobj()
    produced, kept, crc_ok, pos = 0, [], True, 8
    try:
        while pos + 12 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind = data[pos + 4 : pos + 8]
            end = pos + 12 + length
            if end > len(data):
                raise ValueError(f"its {kind.decode('latin-1')!r} chunk runs past the end of the file (truncated)")
            body = data[pos + 8 : pos + 8 + length]
            crc_ok &= zlib.crc32(kind + body) == struct.unpack(">I", data[end - 4 : end])[0]
            if kind == b"IDAT":
                while body and not inflater.eof:
                    out = inflater.decompress(body, 1 << 20)
                    produced += len(out)
                    if keep:
                        kept.append(out)
                    body = inflater.unconsumed_tail
            elif kind == b"IEND":
                break
            pos = end
    except zlib.error as exc:
        raise ValueError(f"its image data is damaged ({exc})") from None
    return produced, b"".join(kept) if keep else None, crc_ok


def _check_png_data(data: bytes, header: tuple[int, int, int, int, int], *, validate: bool) -> None:
    """Refuse a PNG whose image data does not hold what its header promises.

    Pillow fills the missing rows of a short PNG with zeros without a word, and libpng
    inside torchvision crashes the process on it (and on any other damage): the inflated
    size must equal what IHDR gives. ``validate`` also checks what libpng would otherwise
    fail on (chunk CRCs, filter types): the files handed to torchvision's decoder.
    """
    width, height, depth, colour, interlace = header
    if colour not in _PNG_SAMPLES or interlace not in (0, 1) or width == 0 or height == 0:
        raise ValueError(f"its header is invalid (colour type {colour}, interlace {interlace}, {width}x{height})")
    layout = _png_row_layout(width, height, depth, colour, interlace)
    expected = sum(rows * stride for rows, stride in layout)
    produced, raw, crc_ok = _png_image_data(data, keep=validate)
    if produced < expected:
        raise ValueError(
            f"its header promises {width}x{height} pixels ({expected} bytes of image data) but "
            f"its data holds {produced} bytes: the file is truncated or its header is wrong"
        )
    if validate:
        if not crc_ok:
            raise ValueError("a chunk's CRC is wrong (the file is damaged)")
        import numpy as np

        offset = 0
        for rows, stride in layout:
            filters = np.frombuffer(raw, np.uint8, rows * stride, offset)[::stride]
            if int(filters.max()) > 4:
                raise ValueError("its image data is damaged (a row has an unknown PNG filter type)")
            offset += rows * stride


def _pil_to_tensor(im: Any) -> Tensor:
    """A loaded Pillow image as a ``(C, H, W)`` uint8/uint16 tensor (alpha kept here)."""
    import numpy as np

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.int64).clip(0, 65535).astype(np.uint16)[None]
        return torch.from_numpy(arr)
    if im.mode not in ("L", "RGB", "RGBA", "LA"):
        im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
    arr = np.array(im, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to_mode(img: Tensor, mode: ImageReadMode) -> Tensor:
    """Drop alpha, then convert to grey (BT.601 luma, rounded) or RGB as ``mode`` asks."""
    if img.shape[0] in (2, 4):  # grey + alpha, RGBA: drop alpha
        img = img[:-1]
    if mode == "grey" and img.shape[0] == 3:
        from torchgmm.pixels import luma

        y = luma(*img.to(torch.float32).unbind(0)).round_()
        img = y.clamp_(0, torch.iinfo(img.dtype).max).to(img.dtype).unsqueeze(0)
    elif mode == "rgb" and img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.contiguous()


def decode_image_file(
    path: str | os.PathLike, mode: ImageReadMode = "unchanged", *, max_pixels: int | None = None
) -> Tensor:
    """Decode an image file to a ``(C, H, W)`` uint8/uint16 tensor, C = 1 or 3.

    The one place where torchgmm decodes image files, and a file cannot take the process
    down from here. The format is told by the file's first bytes (a ``.png`` holding a JPEG
    is decoded as JPEG). Before any decoder sees the pixels, the header's size is checked
    against ``max_pixels``, and a PNG's image data against its header. Then JPEG goes
    through :func:`image_codec`'s codec (libjpeg-turbo, whose errors it raises); PNG, GIF,
    BMP, TIFF and WebP through Pillow, which raises on damage where torchvision's PNG decoder
    crashes the interpreter; 16-bit colour PNG, which Pillow reduces to 8 bits, through
    torchvision's or TorchCodec's PNG decoder after its chunks, CRCs and filter types were
    checked. A JPEG whose data ends before its
    last row is decoded as libjpeg conceals it (the missing rows repeat the last colour;
    libjpeg prints "Corrupt JPEG data" on stderr), as every JPEG reader does.

    Args:
        path: the file.
        mode: ``"unchanged"`` (the file's channels), ``"grey"`` (BT.601 luma of colour
            images, rounded; JPEG's own luma plane for JPEG) or ``"rgb"`` (grey repeated).
        max_pixels: the most pixels (H x W) a header may claim; default
            :data:`MAX_IMAGE_PIXELS`.

    Returns:
        the image; alpha dropped, palette images expanded to RGB.

    Raises:
        ValueError: the file is not a decodable image: unknown format, empty, not a regular
            file (a FIFO is not opened), a header larger than ``max_pixels``, data that does
            not hold what the header promises, damage (the message names the file).
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).

    Shape:
        - output: ``(C, H, W)``, C = 1 (grey) or 3 (RGB); uint8, or uint16 for 16-bit PNG/TIFF

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/x.png", torch.zeros(3, 4, 5, dtype=torch.uint8))
        ...     img = decode_image_file(f"{d}/x.png")
        ...     grey = decode_image_file(f"{d}/x.png", mode="grey")
        >>> img.shape, img.dtype, grey.shape
        (torch.Size([3, 4, 5]), torch.uint8, torch.Size([1, 4, 5]))
    """
    path = Path(path)
    if mode not in ("unchanged", "grey", "rgb"):
        raise ValueError(f"`mode` must be 'unchanged', 'grey' or 'rgb', got {mode!r}.")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    data = _read_image_bytes(path)
    fmt = _sniff_format(data)
    if fmt is None:
        raise ValueError(
            f"cannot decode {str(path)!r}: not a PNG, JPEG, GIF, BMP, TIFF or WebP file (it starts with {data[:8]!r})."
        )
    try:
        im = _open_header(data, fmt)
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise SyntaxError, struct.error, ...
        raise ValueError(f"cannot decode {str(path)!r}: not a valid {fmt} file ({exc}).".replace(" ().", ".")) from exc
    width, height = im.size
    if width * height > limit:
        raise ValueError(
            f"cannot decode {str(path)!r}: its header claims {width}x{height} pixels "
            f"({width * height:,}), more than max_pixels={limit:,}; a damaged or hostile header "
            "is the usual cause (pass a larger max_pixels for a genuinely larger image)."
        )
    try:
        img = _decode_pixels(data, fmt, im, mode)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, Pillow its own errors
        raise ValueError(f"cannot decode {str(path)!r}: {exc}".strip()) from exc
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4) or tuple(img.shape[1:]) != (height, width):
        raise ValueError(
            f"cannot decode {str(path)!r}: decoded shape {tuple(img.shape)} does not match the header's "
            f"{width}x{height}."
        )
    return _to_mode(img, mode)


def _decode_pixels(data: bytes, fmt: ImageFormat, im: Any, mode: ImageReadMode) -> Tensor:
    """The pixels of a file whose header :func:`decode_image_file` has checked."""
    if fmt == "PNG":
        header = _png_header(data)
        wide_colour = header[2] == 16 and header[3] in (2, 4, 6)  # Pillow keeps 8 bits of these
        _check_png_data(data, header, validate=wide_colour)
        if wide_colour:
            return _decode_with_codec(data, "PNG", "unchanged", im)
    if fmt == "JPEG" and im.mode in ("L", "RGB"):  # CMYK and YCCK: Pillow converts them
        return _decode_with_codec(data, "JPEG", mode, im)
    if fmt in ("GIF", "WEBP"):
        im.seek(0)  # the first frame of an animation
    else:
        _check_tiles(im, len(data))
    im.load()
    return _pil_to_tensor(im)


def _check_tiles(im: Any, n_bytes: int) -> None:
    """Refuse an image whose data (Pillow's tiles: strips, tiles or one block) does not cover
    what its header promises: Pillow leaves the rest zero without a word (a TIFF whose
    ImageLength was raised above its strips)."""
    tiles = getattr(im, "tile", None) or []
    width, height = im.size
    covered = 0
    for tile in tiles:
        x0, y0, x1, y1 = tile[1]
        covered += max(0, min(x1, width) - max(x0, 0)) * max(0, min(y1, height) - max(y0, 0))
        if tile[2] >= n_bytes:
            raise ValueError(f"its image data would start at byte {tile[2]}, past the end of the {n_bytes}-byte file")
    if tiles and covered < width * height:
        raise ValueError(
            f"its header promises {width}x{height} pixels but its image data covers {covered} of them: "
            "the file is truncated or its header is wrong"
        )


def _import_decoders() -> None:
    """Import the codec modules :func:`decode_image_file` uses (Pillow's plugins and
    :func:`image_codec`'s: a second or more), so that forked decoding processes inherit
    them instead of each importing them again."""
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401

    image_codec()


def _decode_with_codec(data: bytes, fmt: Literal["JPEG", "PNG"], mode: ImageReadMode, im: Any) -> Tensor:
    """A JPEG, or a 16-bit colour PNG (``mode="unchanged"``), by :func:`image_codec`'s codec;
    ``im`` is the file's Pillow header. Grey JPEG is libjpeg's own luma plane in all three."""
    codec = image_codec()
    if codec == "pillow":
        if fmt == "PNG":
            raise ValueError(
                "a 16-bit colour PNG needs torchvision's or TorchCodec's PNG decoder (Pillow keeps 8 bits "
                'of it): pip install "torchmog[torchcodec]"'
            )
        if mode == "grey" and im.mode == "RGB":
            im.draft("L", im.size)  # libjpeg converts to luma, as the tensor codecs do
        im.load()
        return _pil_to_tensor(im)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if codec == "torchcodec":
        from torchcodec.decoders import decode_jpeg, decode_png

        tc_mode = {"unchanged": "UNCHANGED", "grey": "GRAY", "rgb": "RGB"}[mode]
        if fmt == "PNG":
            return decode_png(encoded, mode=tc_mode, output_dtype="auto")
        return decode_jpeg(encoded, mode=tc_mode)
    return torch.ops.image.decode_image(encoded, _TORCHVISION_MODES[mode], False)  # no EXIF rotation


def _encode_png(image: Tensor, compression_level: int) -> bytes:
    """A ``(C, H, W)`` uint8 CPU image as PNG bytes, by :func:`image_codec`'s codec."""
    codec = image_codec()
    if codec == "torchcodec":
        from torchcodec.encoders import PngEncoder

        return PngEncoder(image).to_tensor(compression_level=compression_level).numpy().tobytes()
    if codec == "pillow":
        from PIL import Image

        pixels = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG", compress_level=compression_level)
        return out.getvalue()
    return torch.ops.image.encode_png(image, compression_level).numpy().tobytes()


@dataclass
class ImageItem:
    """One decoded file (``image`` is None and ``error`` says why when decoding failed)."""

    #: position of the file in the dataset's sources
    index: int
    source: ImageSource
    #: ``(C, H, W)`` uint8/uint16 image (see :func:`decode_image_file`), or None on failure
    image: Tensor | None
    #: the decoding error message, or None on success
    error: str | None
    #: seconds spent reading and decoding the file
    decode_s: float


class ImageFileDataset(Dataset):
    """Decode image files in DataLoader workers; failures come back as items with an error.

    Args:
        sources: from :func:`find_images`.

    Shape:
        - item.image: ``(C, H, W)`` uint8 or uint16, C = 1 or 3 (None when decoding failed)

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/a.png", torch.zeros(1, 2, 3, dtype=torch.uint8))
        ...     _ = Path(d, "b.png").write_text("not a png")
        ...     print([(item.image is None, item.error is None) for item in ImageFileDataset(find_images([d]))])
        [(False, True), (True, False)]
    """

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> ImageItem:
        return _decode_item(index, self.sources[index], decode_image_file)


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _decode_worker(conn: Any, sources: Sequence[ImageSource], decode: Callable[[Path], Tensor]) -> None:
    """A worker process: decode the files whose indices arrive on ``conn``, in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)
    while True:
        try:
            index = conn.recv()
        except EOFError:
            return
        if index is None:
            return
        conn.send(_decode_item(index, sources[index], decode))


def _decode_item(index: int, source: ImageSource, decode: Callable[[Path], Tensor]) -> ImageItem:
    t0 = time.perf_counter()
    try:
        img, err = decode(source.path), None
    except (OSError, ValueError) as exc:
        img, err = None, str(exc)
    return ImageItem(index, source, img, err, time.perf_counter() - t0)


class DecodeWorkers:
    """Decode image files in worker processes, in order; a crash costs only the file it was on.

    Native decoders are C code: a file that makes one crash (a segfault) or exhaust memory
    (the OOM killer) kills the process decoding it. Here that process is a worker, each
    worker decodes one file at a time, and the parent knows which: the file comes back as
    an :class:`ImageItem` whose ``error`` says the decoder crashed on it, a new worker takes
    the dead one's place, and the files after it are decoded as usual. (A ``DataLoader``
    cannot do this: a dead worker ends the whole iteration, without saying which file.)

    Args:
        sources: from :func:`find_images`.
        workers: worker processes (>= 1).
        prefetch: files handed to each worker ahead of the one it decodes.
        decode: ``path -> (C, H, W) tensor``, raising ``ValueError``/``OSError`` on a bad
            file (default :func:`decode_image_file`); a top-level function where processes
            are spawned rather than forked.

    Yields:
        one :class:`ImageItem` per source, in the order of ``sources``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/a.png", torch.zeros(1, 2, 3, dtype=torch.uint8))
        ...     _ = Path(d, "b.png").write_text("not a png")
        ...     with DecodeWorkers(find_images([d]), workers=1) as items:
        ...         print([(item.source.path.name, item.error is None) for item in items])
        [('a.png', True), ('b.png', False)]
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        workers: int,
        prefetch: int = 2,
        decode: Callable[[Path], Tensor] | None = None,
    ) -> None:
        import multiprocessing

        self.sources = list(sources)
        self.workers = workers
        self.prefetch = prefetch
        self.decode = decode_image_file if decode is None else decode
        methods = multiprocessing.get_all_start_methods()
        # fork, as DataLoader on Linux: a worker starts in milliseconds instead of importing torch
        self._context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._procs: list[Any] = []
        self._conns: list[Any] = []

    def _start(self) -> int:
        parent, child = self._context.Pipe()
        proc = self._context.Process(
            target=_decode_worker, args=(child, self.sources, self.decode), daemon=True, name="torchgmm-decode"
        )
        proc.start()
        child.close()
        self._procs.append(proc)
        self._conns.append(parent)
        return len(self._procs) - 1

    def __iter__(self) -> Iterator[ImageItem]:
        from multiprocessing.connection import wait

        n = len(self.sources)
        todo = deque(range(n))  # indices not yet handed to a worker
        assigned: dict[int, deque[int]] = {}  # worker -> its indices, in the order given
        done: dict[int, ImageItem] = {}
        next_out = 0
        if self.decode is decode_image_file and self._context.get_start_method() == "fork":
            _import_decoders()  # once here, not once per worker
        try:
            for _ in range(min(self.workers, n)):
                assigned[self._start()] = deque()
            while next_out < n:
                for w in list(assigned):  # keep every worker busy
                    while todo and len(assigned[w]) <= self.prefetch:
                        index = todo.popleft()
                        try:
                            self._conns[w].send(index)
                        except OSError:  # it died between files: replace it, blame no file
                            todo.appendleft(index)
                            self._collect(w, assigned, done, todo, replace_idle=True)
                            break
                        assigned[w].append(index)
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                if next_out >= n:
                    break
                busy = [w for w, q in assigned.items() if q]
                ready = wait([self._conns[w] for w in busy] + [self._procs[w].sentinel for w in busy])
                for w in busy:
                    conn, proc = self._conns[w], self._procs[w]
                    if conn in ready or proc.sentinel in ready:
                        self._collect(w, assigned, done, todo)
        finally:
            self.close()

    def _collect(
        self,
        w: int,
        assigned: dict[int, deque[int]],
        done: dict[int, ImageItem],
        todo: deque,
        replace_idle: bool = False,
    ) -> None:
        """Take worker ``w``'s finished items; if it died, fail its file and replace it."""
        conn, proc = self._conns[w], self._procs[w]
        try:
            while assigned[w] and conn.poll():
                item = conn.recv()
                assigned[w].remove(item.index)
                done[item.index] = item
        except (EOFError, OSError):
            pass
        if not assigned[w] and replace_idle:
            proc.join()
            del assigned[w]
            conn.close()
            assigned[self._start()] = deque()
            return
        if proc.is_alive() or not assigned[w]:
            return
        proc.join()
        culprit = assigned[w].popleft()  # a worker decodes its files in the order given
        source = self.sources[culprit]
        done[culprit] = ImageItem(
            culprit,
            source,
            None,
            f"cannot decode {str(source.path)!r}: the decoding process was {_signal_name(proc.exitcode)} "
            "on this file (a crash of the image decoder, or out of memory); the other files go on",
            0.0,
        )
        todo.extendleft(reversed(assigned.pop(w)))  # the files it had not started: to the others
        conn.close()
        assigned[self._start()] = deque()

    def close(self) -> None:
        """Stop the workers (also done when iteration ends or fails)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __enter__(self) -> DecodeWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collate_items(items: list[ImageItem]) -> list[ImageItem]:
    """DataLoader ``collate_fn`` keeping a list (images of different sizes do not stack).

    Args:
        items: the dataset items of one batch.

    Returns:
        ``items`` itself, unchanged.

    Shape:
        - item.image: ``(C, H, W)``, the size may differ from item to item

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/big.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
        ...     write_png(f"{d}/small.png", torch.zeros(1, 2, 2, dtype=torch.uint8))
        ...     loader = torch.utils.data.DataLoader(
        ...         ImageFileDataset(find_images([d])), batch_size=2, collate_fn=collate_items)
        ...     print([[tuple(item.image.shape) for item in batch] for batch in loader])
        [[(3, 4, 4), (1, 2, 2)]]
    """
    return items


#: the temporary files of atomic_write_bytes: ``.<name>.<8 random characters>.tmp``
_ATOMIC_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); a file in its place, or in the place of a
    parent, is a ``NotADirectoryError`` that names it. The jobs call this before any work.

    Returns:
        the folder as a ``Path``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "afile").write_text("x")
        ...     make_output_folder(Path(d, "out", "sub")).is_dir()
        ...     try:
        ...         make_output_folder(Path(d, "afile"))
        ...     except NotADirectoryError as exc:
        ...         print("afile' exists and is not a folder" in str(exc))
        True
        True
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"output folder {str(folder)!r} exists and is not a folder; choose another output folder."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a parent folder must be
        raise NotADirectoryError(f"cannot create output folder {str(folder)!r}: {exc}") from exc
    return folder


#: the lock file a job holds in its output folder while it writes there
LOCK_NAME = ".torchgmm.lock"


@contextlib.contextmanager
def lock_output_folder(folder: str | os.PathLike, job: str) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the duration of a job.

    Two runs writing to one folder would both do all the work, and the second's start-up
    clean-up (:func:`remove_stale_temporaries`) could delete the first's files in flight. The
    lock is an OS lock (``flock``) on ``folder/.torchgmm.lock``, so a run that dies, even by
    SIGKILL, releases it with its process; the file itself stays (removing a lock file races
    with the next run taking it) and names the holder. Where ``fcntl`` does not exist
    (Windows) nothing is locked.

    Args:
        folder: an existing output folder.
        job: what holds it, for the message another run gets (e.g. ``"torchgmm segment"``).

    Yields:
        the lock file's path.

    Raises:
        OutputFolderBusyError: another process holds the lock; the message names it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with lock_output_folder(d, "job A"):
        ...         try:
        ...             with lock_output_folder(d, "job B"):
        ...                 pass
        ...         except OutputFolderBusyError as exc:
        ...             print("job A" in str(exc))
        True
    """
    path = Path(folder) / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            raise OutputFolderBusyError(
                f"output folder {str(folder)!r} is in use by {holder}: wait for that run to end, or choose "
                "another output folder."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{job} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed run left in ``folder`` (recursively).

    :func:`atomic_write_bytes` removes its temporary file on any error, but a process killed
    outright (SIGKILL, OOM killer) cannot; the file it was replacing is intact, the
    ``.<name>.<random>.tmp`` beside it is garbage. Jobs call this on their output folder
    before they start, holding the folder's lock (:func:`lock_output_folder`), so never
    while another run writes there.

    Returns:
        how many files were deleted.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, ".a.png.k3j_x9q2.tmp").write_bytes(b"half")
        ...     _ = Path(d, "a.png").write_bytes(b"whole")
        ...     print(remove_stale_temporaries(d), sorted(p.name for p in Path(d).iterdir()))
        1 ['a.png']
    """
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for path in root.rglob(".*.tmp"):
        if path.is_file() and _ATOMIC_TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a resumed run) never sees a half-written file. Missing parent folders are
    created; on failure the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write (replaced when it exists).
        data: its new content.

    Raises:
        OSError: the folder cannot be created or the file cannot be written.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write_bytes(f"{d}/sub/x.bin", b"abc")
        ...     print(os.listdir(f"{d}/sub"), Path(d, "sub", "x.bin").read_bytes())
        ['x.bin'] b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text.

    Args:
        path: the file to write (replaced when it exists).
        text: its new content, encoded as UTF-8 (newlines written as given).

    Raises:
        OSError: the folder cannot be created or the file cannot be written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write_text(f"{d}/x.txt", "héllo")
        ...     print(Path(d, "x.txt").read_text(encoding="utf-8"), len(Path(d, "x.txt").read_bytes()))
        héllo 6
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path: str | os.PathLike, image: Tensor, compression_level: int = 1) -> None:
    """Encode a ``(C, H, W)`` or ``(H, W)`` uint8 tensor as PNG and write it atomically.

    Level 1 (fast) by default: label maps compress almost as well as at level 6, 2-3x faster.
    The tensor may live on any device; it is copied to the host to be encoded. A bool mask
    is written as 0/255 (as :class:`~torchgmm.io.VideoWriter` does); other dtypes must be uint8.

    Args:
        path: the PNG file (parent folders are created).
        image: grey or RGB image.
        compression_level: zlib level 0 (none) to 9 (smallest).

    Raises:
        TypeError: ``image`` is not a uint8 or bool tensor.
        ShapeError: ``image`` is not ``(H, W)`` or ``(C, H, W)`` with C = 1 or 3, or has
            H = 0 or W = 0 (checked before the encoder, which would crash on it).
        OSError: the file cannot be written.

    Shape:
        - image: ``(C, H, W)`` with C = 1 or 3, or ``(H, W)``; uint8

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/eye.png", torch.eye(3, dtype=torch.uint8) * 255)
        ...     print(decode_image_file(f"{d}/eye.png")[0].tolist())
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"write_png({str(path)!r}): `image` must be a torch.Tensor, got {type(image).__name__}.")
    if image.dtype == torch.bool:
        image = image.to(torch.uint8) * 255
    elif image.dtype != torch.uint8:
        raise TypeError(f"write_png({str(path)!r}): `image` must be uint8 or bool, got {image.dtype}.")
    given = tuple(image.shape)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ShapeError(
            f"write_png({str(path)!r}): `image` must have shape (H, W) or (C, H, W) with C = 1 or 3, got {given}."
        )
    if image.shape[1] == 0 or image.shape[2] == 0:  # libpng crashes the interpreter on these
        raise ShapeError(
            f"write_png({str(path)!r}): `image` must have H >= 1 and W >= 1, got shape "
            f"{given}; a PNG cannot hold an empty image."
        )
    atomic_write_bytes(path, _encode_png(image.to("cpu").contiguous(), compression_level))

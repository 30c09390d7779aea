"""Image files at the edge: discovery, decoding (a DataLoader ``Dataset``) and atomic writes.

Decoding uses :func:`torchvision.io.decode_image` (PNG, JPEG, WebP, GIF, ...); BMP and TIFF,
which it does not read, go through Pillow. Decoded images are ``(C, H, W)`` tensors, uint8
or uint16 (16-bit PNG/TIFF), with C = 1 (grey) or 3 (RGB): an alpha channel is dropped. A
file that cannot be decoded is never returned empty: the dataset yields an
:class:`ImageItem` carrying the error message, so a run can name it and go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "ImageItem",
    "find_images",
    "decode_image_file",
    "ImageFileDataset",
    "collate_items",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_png",
]

#: file extensions picked up when searching folders (lower case)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_PIL_EXTENSIONS = frozenset({".bmp", ".tif", ".tiff"})


@contextlib.contextmanager
def _quiet_torchvision() -> Iterator[None]:
    """Silence torchvision 0.29's deprecation notice of its image codecs (one per call).

    They are what this module is built on; TorchCodec is their announced successor.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchVision are deprecated", category=DeprecationWarning)
        yield


class ImageSource(NamedTuple):
    """An image file and its path relative to the input it was found under."""

    path: Path
    #: path relative to the input folder (the file name for a file given directly)
    relative: Path


def find_images(inputs: Iterable[str | os.PathLike]) -> list[ImageSource]:
    """Image files named by ``inputs``: files as given, folders searched recursively.

    Files found in folders are kept when their extension is in :data:`IMAGE_EXTENSIONS`
    (other files are ignored); a file named directly is always kept (a non-image then fails
    to decode and is reported). Order is sorted and duplicates are dropped.

    Args:
        inputs: files and folders.

    Returns:
        the image files, each with its path relative to its input.

    Raises:
        FileNotFoundError: an input does not exist, or no image was found at all.
    """
    found: dict[Path, ImageSource] = {}
    inputs = [Path(p) for p in inputs]
    for root in inputs:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.setdefault(path.resolve(), ImageSource(path, path.relative_to(root)))
        elif root.is_file():
            found.setdefault(root.resolve(), ImageSource(root, Path(root.name)))
        else:
            raise FileNotFoundError(f"input {str(root)!r} does not exist.")
    if not found:
        names = ", ".join(repr(str(p)) for p in inputs) or "(none given)"
        raise FileNotFoundError(
            f"no image files found in {names}; expected files or folders holding "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} images."
        )
    return list(found.values())


def _decode_pil(data: bytes) -> Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.int64).clip(0, 65535).astype(np.uint16)[None]
            return torch.from_numpy(arr)
        if im.mode not in ("L", "RGB", "RGBA", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        arr = np.asarray(im, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))


def decode_image_file(path: str | os.PathLike) -> Tensor:
    """Decode an image file to a ``(C, H, W)`` uint8/uint16 tensor, C = 1 or 3.

    Args:
        path: the file.

    Returns:
        the image; alpha dropped, palette images expanded to RGB.

    Raises:
        ValueError: the file is not a decodable image (the message names the file).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        if path.suffix.lower() in _PIL_EXTENSIONS:
            img = _decode_pil(data)
        else:
            with _quiet_torchvision():
                from torchvision.io import decode_image

                img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    except Exception as exc:  # torchvision raises RuntimeError, Pillow its own errors
        raise ValueError(f"cannot decode {str(path)!r}: {exc}".strip()) from exc
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4) or img.numel() == 0:
        raise ValueError(f"cannot decode {str(path)!r}: unexpected decoded shape {tuple(img.shape)}")
    if img.shape[0] in (2, 4):  # grey + alpha, RGBA: drop alpha
        img = img[:-1]
    return img.contiguous()


@dataclass
class ImageItem:
    """One decoded file (``image`` is None and ``error`` says why when decoding failed)."""

    index: int
    source: ImageSource
    image: Tensor | None
    error: str | None
    decode_s: float


class ImageFileDataset(Dataset):
    """Decode image files in DataLoader workers; failures come back as items with an error.

    Args:
        sources: from :func:`find_images`.

    Example:
        >>> loader = torch.utils.data.DataLoader(ImageFileDataset(srcs), batch_size=8,
        ...                                      collate_fn=collate_items)  # doctest: +SKIP
    """

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> ImageItem:
        src = self.sources[index]
        t0 = time.perf_counter()
        try:
            img, err = decode_image_file(src.path), None
        except (OSError, ValueError) as exc:
            img, err = None, str(exc)
        return ImageItem(index, src, img, err, time.perf_counter() - t0)


def collate_items(items: list[ImageItem]) -> list[ImageItem]:
    """DataLoader ``collate_fn`` keeping a list (images of different sizes do not stack)."""
    return items


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a resumed run) never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path: str | os.PathLike, image: Tensor, compression_level: int = 1) -> None:
    """Encode a ``(C, H, W)`` or ``(H, W)`` uint8 tensor as PNG and write it atomically.

    Level 1 (fast) by default: label maps compress almost as well as at level 6, 2-3x faster.
    """
    with _quiet_torchvision():
        from torchvision.io import encode_png

        if image.ndim == 2:
            image = image.unsqueeze(0)
        data = encode_png(image.to("cpu", torch.uint8).contiguous(), compression_level=compression_level)
    atomic_write_bytes(path, data.numpy().tobytes())

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
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchgmm._checks import ShapeError

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
    "make_output_folder",
    "remove_stale_temporaries",
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
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).

    Shape:
        - output: ``(C, H, W)``, C = 1 (grey) or 3 (RGB); uint8, or uint16 for 16-bit PNG/TIFF

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/x.png", torch.zeros(3, 4, 5, dtype=torch.uint8))
        ...     img = decode_image_file(f"{d}/x.png")
        >>> img.shape, img.dtype
        (torch.Size([3, 4, 5]), torch.uint8)
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
        src = self.sources[index]
        t0 = time.perf_counter()
        try:
            img, err = decode_image_file(src.path), None
        except (OSError, ValueError) as exc:
            img, err = None, str(exc)
        return ImageItem(index, src, img, err, time.perf_counter() - t0)


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


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed run left in ``folder`` (recursively).

    :func:`atomic_write_bytes` removes its temporary file on any error, but a process killed
    outright (SIGKILL, OOM killer) cannot; the file it was replacing is intact, the
    ``.<name>.<random>.tmp`` beside it is garbage. Jobs call this on their output folder
    before they start (never while another run writes there).

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
            f"write_png({str(path)!r}): `image` must have shape (H, W) or (C, H, W) with C = 1 or 3, "
            f"got {given}."
        )
    if image.shape[1] == 0 or image.shape[2] == 0:  # libpng crashes the interpreter on these
        raise ShapeError(
            f"write_png({str(path)!r}): `image` must have H >= 1 and W >= 1, got shape "
            f"{given}; a PNG cannot hold an empty image."
        )
    with _quiet_torchvision():
        from torchvision.io import encode_png

        data = encode_png(image.to("cpu").contiguous(), compression_level=compression_level)
    atomic_write_bytes(path, data.numpy().tobytes())

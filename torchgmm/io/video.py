"""Video files and numbered image sequences at the edge: decoding and encoding with PyAV.

:class:`VideoReader` turns a video file (anything FFmpeg demuxes) or a folder of numbered
images (``input/in000001.jpg`` ...) into uint8 frames ``(C, H, W)`` or batches
``(T, C, H, W)``. Video files are decoded by PyAV (the default) or, with
``backend="torchcodec"``, by TorchCodec (an optional extra; :func:`video_backends` lists
what is installed). Decoding runs in a background thread that keeps ``prefetch`` decoded
items ready, so decoding overlaps whatever the consumer computes; an error in that thread is
re-raised in the consumer. :class:`VideoWriter` writes uint8 (or bool mask) frames to a video
file, lossless by default (FFV1 in ``.mkv``), or to a numbered PNG sequence.

A damaged file is never returned empty or silently short: the frames before the damage are
yielded, then :class:`VideoDecodeError` names the file and the frame index. FFmpeg reads a
truncated Matroska/AVI file to a clean end of stream, so the reader compares the frames it
decoded with the count the container announces (its header, or its duration for a video-only
file) and raises when more than one frame is missing (for a duration estimate, which a
variable frame rate makes wrong: when the frames span less than 98% of the duration). A
classic (non-fragmented) MP4 cut short loses its index and fails when opened; the
fragmented MP4 that :class:`VideoWriter` writes stays readable up to the cut, and the count
check above catches it.

Shape vocabulary: T frames, C channels (1 grey or 3 RGB), H height, W width.
"""

from __future__ import annotations

import importlib
import itertools
import math
import numbers
import os
import queue
import re
import threading
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from torchgmm.defaults import VIDEO_BACKENDS
from torchgmm.exceptions import VideoDecodeError
from torchgmm._checks import ShapeError, add_note, check_positive_int, check_tensor
from torchgmm.io.images import IMAGE_EXTENSIONS, file_kind

__all__ = [
    "VideoBackend",
    "VideoDecodeError",
    "VideoReader",
    "VideoWriter",
    "WriterThread",
    "list_image_sequence",
    "parse_position",
    "parse_size",
    "video_backends",
]

#: the decoders :class:`VideoReader` can read video files with
VideoBackend = Literal["pyav", "torchcodec"]
_BACKENDS: tuple[str, ...] = VIDEO_BACKENDS
#: frames TorchCodec decodes per call when the reader yields single frames
_TORCHCODEC_CHUNK = 8

_END = object()  # end-of-stream sentinel in the prefetch queue
#: containers whose default lossless codec is FFV1 (the others get H.264 RGB with qp 0)
_FFV1_CONTAINERS = frozenset({".mkv", ".avi", ".nut", ".mka"})
#: muxer options that keep a file playable when the process dies without closing it (SIGKILL,
#: OOM killer): fragmented MP4 (no index at the end) and Matroska clusters of at most 1 s,
#: each handed to the OS as soon as it is muxed. Costs a few hundred bytes per second.
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000"}
_CRASH_SAFE_MUXER_OPTIONS = {".mp4": _FRAGMENTED_MP4, ".mov": _FRAGMENTED_MP4, ".mkv": {"cluster_time_limit": "1000"}}
#: ``durable=True``: a fragment / cluster per frame (the muxer closes it when the next frame
#: arrives, so a hard kill loses at most the last frame written)
_MP4_FRAGMENT_PER_FRAME = {"movflags": "frag_every_frame+empty_moov+default_base_moof"}
_DURABLE_MUXER_OPTIONS = {
    ".mp4": _MP4_FRAGMENT_PER_FRAME,
    ".mov": _MP4_FRAGMENT_PER_FRAME,
    ".mkv": {"cluster_time_limit": "0"},
}


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("torchgmm.io.video needs PyAV (FFmpeg bindings): install it with `pip install av`.") from exc
    return av


def _import_torchcodec() -> Any:
    """TorchCodec's ``decoders`` module, or an ImportError that says how to install it.

    Without the FFmpeg shared libraries it was built for, TorchCodec up to 0.16 fails to
    import (a RuntimeError); from 0.17 it imports (its image decoders need no FFmpeg) and
    marks its video operators unavailable, raising at the first decode: both are reported
    here, before any file is opened."""
    cause: BaseException | None = None
    try:
        decoders = importlib.import_module("torchcodec.decoders")
        if getattr(importlib.import_module("torchcodec._core.ops"), "_FFMPEG_AVAILABLE", True):
            return decoders
        reason = "it imports, but finds none of the FFmpeg shared libraries it was built for"
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError/OSError for FFmpeg's libraries
        cause, lines = exc, str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    raise ImportError(
        f"VideoReader(backend='torchcodec') needs TorchCodec, which cannot be used here ({reason}). "
        'Install the optional extra with `pip install "torchmog[torchcodec]"` (the distribution of '
        'torchgmm is named torchmog; from a checkout: `pip install -e ".[torchcodec]"`); TorchCodec '
        "also needs FFmpeg's shared libraries (e.g. `apt-get install ffmpeg`). Or use "
        "backend='pyav', the default."
    ) from cause


def video_backends(names: Sequence[str] = _BACKENDS) -> tuple[str, ...]:
    """The backends :class:`VideoReader` can decode video files with in this environment.

    ``"pyav"`` (the default backend; PyAV is a dependency of torchgmm) when PyAV imports,
    ``"torchcodec"`` when TorchCodec and the FFmpeg libraries it needs import (``pip install
    "torchmog[torchcodec]"``). Image folders are read without either. Only the backends in
    ``names`` are tried: importing TorchCodec takes seconds, which a job that decodes with
    PyAV should not pay.

    Args:
        names: the backends to try, in the order returned (default: all, ``"pyav"`` first).

    Returns:
        the backend names of ``names`` that import, e.g. ``("pyav", "torchcodec")`` or
        ``("pyav",)``.

    Example:
        >>> backends = video_backends()
        >>> backends[0], set(backends) <= {"pyav", "torchcodec"}
        ('pyav', True)
        >>> video_backends(["pyav"])
        ('pyav',)
    """
    importers = {"pyav": _import_av, "torchcodec": _import_torchcodec}
    if isinstance(names, str) or any(name not in _BACKENDS for name in names):
        raise ValueError(f"`names` must be backend names among {', '.join(map(repr, _BACKENDS))}, got {names!r}.")
    found = []
    for name in names:
        try:
            importers[name]()
        except ImportError:
            continue
        found.append(name)
    return tuple(found)


def _check_backend(backend: object) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"`backend` must be one of {', '.join(repr(b) for b in _BACKENDS)}, got {backend!r}.")
    return str(backend)


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 images ``(T, C, H, W)`` resized to ``size`` ``(H, W)``: bilinear, antialiased when
    shrinking (``interpolate(antialias=True)``), rounded. The resize of image folders and of
    TorchCodec's frames; PyAV's frames are resized by swscale as they are converted."""
    out = torch.nn.functional.interpolate(
        images.float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _torchcodec_message(exc: BaseException) -> str:
    """TorchCodec's error text without the C++ function and source line it starts with."""
    return re.sub(r"^[^,]*, \S+\.cpp:\d+, ", "", str(exc)).strip()


def _natural_key(path: Path) -> tuple:
    """Sort key ordering ``in2.jpg`` before ``in10.jpg`` (numbers compared as numbers)."""
    parts = re.split(r"(\d+)", path.name)
    return tuple(int(p) if p.isdigit() else p.lower() for p in parts)


def list_image_sequence(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder, sorted naturally by the numbers in their names.

    Args:
        folder: a folder of numbered images (``in000001.jpg``, ``in000002.jpg`` ...).

    Returns:
        the image paths in frame order (hidden files and non-images are ignored).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name in ("in10.png", "in2.png", ".hidden.png", "notes.txt"):
        ...         Path(d, name).touch()
        ...     print([path.name for path in list_image_sequence(d)])
        ['in2.png', 'in10.png']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image sequence folder {str(folder)!r} does not exist.")
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise FileNotFoundError(
            f"no image files in {str(folder)!r}; expected numbered images with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}."
        )
    return sorted(files, key=_natural_key)


def _frame_number(path: Path) -> int | None:
    """The frame number in an image file's name (the last run of digits: ``in000012.jpg`` ->
    12), or None when it has none."""
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else None


def _numbering_gap(files: list[Path]) -> tuple[int, int, Path] | None:
    """The first place a numbered sequence skips numbers, ``(previous, next, next's path)``;
    None when it does not (or when a name holds no number)."""
    numbers = [_frame_number(p) for p in files]
    if None in numbers:
        return None
    for prev, cur, path in zip(numbers, numbers[1:], files[1:]):
        if cur != prev + 1:
            return prev, cur, path
    return None


def _warn_on_numbering_gap(files: list[Path]) -> None:
    """Warn once when a numbered sequence skips numbers: its frames are read as consecutive."""
    gap = _numbering_gap(files)
    if gap is not None:
        prev, cur, path = gap
        warnings.warn(
            f"the image sequence {str(path.parent)!r} jumps from frame number {prev} to {cur} "
            f"({path.name}); its frames are read one after the other as if consecutive.",
            stacklevel=3,
        )


def _to_index(value: int | float | None, fps: float, name: str, default: int | None) -> int | None:
    """A frame index from an int (index) or a float (seconds, converted with ``fps``)."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int (frame index) or a float (seconds), got bool.")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}.")
        return int(value)
    if isinstance(value, numbers.Real):  # float, numpy floats
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` (seconds) must be finite and >= 0, got {value}.")
        # first frame whose timestamp index / fps is >= value (tolerant to float rounding)
        return int(math.ceil(float(value) * fps - 1e-6))
    raise TypeError(f"`{name}` must be an int (frame index) or a float (seconds), got {type(value).__name__}.")


_POSITION = re.compile(r"^\s*(?:(?P<index>[+-]?\d+)|(?P<seconds>[+-]?(?:\d+\.?\d*|\.\d+))\s*s)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_position(text: str, name: str = "position") -> int | float:
    """A frame position as written on a command line, as :class:`VideoReader`'s ``start``/``end``.

    ``"300"`` is the frame index 300 (an int); ``"12.5s"`` is 12.5 seconds (a float), which
    the reader turns into the index of the first frame at or after that time (with its
    :attr:`~VideoReader.fps`). The range (>= 0) is checked by the reader, in one place.

    Args:
        text: an integer, or a number followed by ``s``.
        name: the option's name, for the error message.

    Raises:
        ValueError: ``text`` is neither (e.g. ``"12.5"``, which is no frame index).

    Example:
        >>> parse_position("300"), parse_position("12.5s"), parse_position("2s")
        (300, 12.5, 2.0)
    """
    match = _POSITION.match(text)
    if match is None:
        raise ValueError(
            f"`{name}` must be a frame index (e.g. 300) or a time in seconds with an s suffix "
            f"(e.g. 12.5s), got {text!r}."
        )
    if match["index"] is not None:
        return int(match["index"])
    return float(match["seconds"])


def parse_size(text: str, name: str = "size") -> tuple[int, int]:
    """A frame size written ``WxH`` (width first, as video sizes are written), as the
    ``(H, W)`` that :class:`VideoReader`'s ``size`` takes.

    Args:
        text: ``"640x360"``: width and height in pixels, both >= 1.
        name: the option's name, for the error message.

    Raises:
        ValueError: not two positive integers joined by ``x``.

    Example:
        >>> parse_size("640x360")  # (H, W)
        (360, 640)
    """
    match = _SIZE.match(text)
    if match is None or not int(match[1]) or not int(match[2]):
        raise ValueError(f"`{name}` must be WIDTHxHEIGHT in pixels, both >= 1 (e.g. 640x360), got {text!r}.")
    return int(match[2]), int(match[1])


class VideoReader:
    """Read a video file or a numbered image folder as uint8 frames or batches.

    Frames are decoded by FFmpeg (PyAV) with frame threading, converted to planar RGB (or grey)
    by swscale, optionally resized, and stacked in a background thread that keeps ``prefetch``
    items queued. Iterate it inside a ``with`` block (or call :meth:`close`) so the thread and
    the file are released.

    Selection: frames ``start <= index < end`` (``end`` exclusive) are read, every ``step``-th
    from ``start``. ``start``/``end`` are frame indices when ``int`` and seconds when ``float``
    (converted with :attr:`fps`, i.e. constant frame rate is assumed). Frames before ``start``
    are decoded and skipped (no seeking), so the indices are exact.

    Args:
        path: a video file, or a folder of numbered images (sorted by the number in the name).
        start: first frame, as an index (int) or a time in seconds (float). Default: 0.
        end: stop before this frame (index or seconds). Default: the end of the input.
        step: keep every ``step``-th frame.
        gray: decode to one grey channel (C = 1) instead of RGB (C = 3). Frames are uint8:
            a 16-bit image of a sequence is reduced by its effective bit depth
            (:func:`torchgmm.pixels.to_uint8`, the rule of the segmentation too), so a 12-bit
            sequence spans 0..255.
        size: ``(H, W)`` to resize every frame to, exactly (the aspect ratio is not kept), or
            None to keep the size. Bilinear, antialiased when shrinking: swscale's bilinear
            filter for video files read by PyAV (it widens with the reduction, so a shrunk
            pixel averages the pixels it covers; applied with the conversion to RGB/grey),
            torch's ``interpolate(mode="bilinear", antialias=True)`` for image folders and
            for video files read by TorchCodec.
        batch_size: yield ``(T, C, H, W)`` batches of up to this many frames instead of single
            ``(C, H, W)`` frames (the last batch may be shorter).
        device: where yielded tensors live; with a CUDA device frames are staged in pinned
            memory and copied with ``non_blocking=True``.
        threads: let FFmpeg decode with frame/slice threads (``thread_type="AUTO"``).
        prefetch: how many decoded items (frames or batches) the background thread keeps ready;
            0 decodes in the consumer's thread.
        fps: frame rate of an image folder (ignored for video files, which carry their own).
        on_damage: ``"stop"`` (default): a frame that cannot be decoded ends the iteration
            with :class:`VideoDecodeError` after the frames before it. ``"skip"``: go on past
            it, as FFmpeg's own players do: the packets the decoder refuses (or the images
            of a sequence) are left out, a warning names each skipped range, and
            :attr:`skipped` lists them; a video's frame indices then come from the frames'
            timestamps, so the frames after a gap keep their true index. A file that ends
            early still raises at its end. Only with ``backend="pyav"``.
        backend: what decodes video files: ``"pyav"`` (default) or ``"torchcodec"`` (the
            optional extra ``pip install "torchmog[torchcodec]"``; see :func:`video_backends`
            and "TorchCodec" below). Image folders are read by torchgmm's image decoder
            with either.

    TorchCodec: the file is probed with PyAV as above (so :attr:`fps`, :attr:`frame_count`,
    :attr:`rotation`, the refusal of still images and the truncation check follow the same
    rules), and its pixels are decoded by TorchCodec's ``VideoDecoder`` (``seek_mode="exact"``,
    so indices are exact; ``start`` is reached by seeking, not by decoding every frame before
    it). Its RGB frames equal PyAV's bit for bit on lossless RGB video, and differ by a level
    or two on YUV video (the two link different FFmpeg builds). Grey and resizing follow the
    rules of image folders: ``gray=True`` is the BT.601 luma of the RGB frames
    (:func:`torchgmm.pixels.to_grey_uint8`), which PyAV's swscale grey matches within 1
    level on RGB video (on YUV video swscale takes the luma plane, and the two differ where
    the colours clip: mean 1.2, at most 21 levels on ``vtest.avi``); ``size`` is torch's
    antialiased bilinear resize (as for image folders), which on lossless RGB video differs
    from PyAV's (swscale's bilinear filter) by at most a level when enlarging and by up to
    about 30 levels (mean under 1.5) at sharp edges when shrinking. (TorchCodec's own
    ``Resize``, swscale in its FFmpeg, is not used: with FFmpeg 5.1 it shifts the colours of
    odd-width frames it shrinks by up to 100 levels.) Grey and resized frames cost more than
    with PyAV, which converts and resizes in one swscale pass (see the background guide for
    the measured frames/s). A frame TorchCodec cannot decode ends the iteration with
    :class:`VideoDecodeError` as above; ``on_damage="skip"`` is refused.

    Frames are turned as the video's display matrix says (a phone video recorded upright
    carries a 90 degree rotation; :attr:`rotation`), so they come out as players show them
    and ``size``, :attr:`height` and :attr:`width` are of the turned frames. Flips in the
    matrix are not applied.

    Note:
        On a CPU with few cores and small frames, leave one core to decoding
        (``torch.set_num_threads(cores - 1)``): PyTorch's OpenMP workers stall when the
        decoding thread takes one of their cores (``torchgmm background`` does it by itself).

    Shape:
        - Output: ``(C, H, W)`` uint8, or ``(T, C, H, W)`` uint8 with ``batch_size``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: ``path`` is not a readable video (at construction), or decoding fails
            or the file ends early (while iterating; frames before the damage are yielded first).
        ValueError: the file has no video stream or is a single image, or an argument is out
            of range.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with VideoWriter(f"{d}/clip.mkv", fps=10) as writer:
        ...         writer.write(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))
        ...     with VideoReader(f"{d}/clip.mkv", batch_size=2, gray=True) as reader:
        ...         print(reader.shape, [tuple(batch.shape) for batch in reader])  # (T, 1, H, W) uint8
        (1, 8, 8) [(2, 1, 8, 8), (2, 1, 8, 8), (1, 1, 8, 8)]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        start: int | float | None = None,
        end: int | float | None = None,
        step: int = 1,
        gray: bool = False,
        size: tuple[int, int] | None = None,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        threads: bool = True,
        prefetch: int = 2,
        fps: float = 25.0,
        on_damage: Literal["stop", "skip"] = "stop",
        backend: VideoBackend = "pyav",
    ) -> None:
        self.path = Path(path)
        #: what decodes video files: ``"pyav"`` or ``"torchcodec"``
        self.backend = _check_backend(backend)
        if on_damage not in ("stop", "skip"):
            raise ValueError(f"`on_damage` must be 'stop' or 'skip', got {on_damage!r}.")
        if on_damage == "skip" and self.backend == "torchcodec":
            raise ValueError(
                "`on_damage='skip'` needs backend='pyav': TorchCodec cannot decode past a packet "
                "the decoder refuses; use on_damage='stop' or backend='pyav'."
            )
        self.on_damage = on_damage
        #: ``(first, last, reason)``: source frame ranges skipped as damaged (``on_damage="skip"``)
        self.skipped: list[tuple[int, int, str]] = []
        self._rotation = 0  # degrees counter-clockwise the display matrix asks for
        self._first: Any = None  # a video's first frame, decoded at open (see _open_video)
        self.step = check_positive_int(step, "step")
        self.gray = bool(gray)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.prefetch = check_positive_int(prefetch, "prefetch", minimum=0)
        self.device = torch.device(device)
        self.threads = bool(threads)
        if size is not None:
            if len(size) != 2:
                raise ValueError(f"`size` must be (H, W), got {size!r}.")
            size = (check_positive_int(int(size[0]), "size[0]"), check_positive_int(int(size[1]), "size[1]"))
        self.size = size
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"`device` is {str(self.device)!r} but CUDA is not available; use device='cpu'.")
        # pinned staging buffers make the host-to-device copies asynchronous
        self._pin = self.device.type == "cuda"

        self._container: Any = None
        self._stream: Any = None
        self._decoder: Any = None  # TorchCodec's VideoDecoder (backend="torchcodec")
        self._files: list[Path] | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._started = False
        self._closed = False

        torchcodec = _import_torchcodec() if self.backend == "torchcodec" else None  # its decoders module
        if not self.path.exists():
            raise FileNotFoundError(f"video {str(self.path)!r} does not exist.")
        kind = file_kind(self.path)
        if kind not in ("a file", "a folder"):  # FFmpeg would block on a FIFO until a writer came
            raise ValueError(f"{str(self.path)!r} is {kind}, not a video file or a folder of images.")
        if self.path.is_dir():
            self._files = list_image_sequence(self.path)
            _warn_on_numbering_gap(self._files)
            if not (isinstance(fps, (int, float)) and 0 < fps < float("inf")):
                raise ValueError(f"`fps` must be a positive finite number, got {fps!r}.")
            self._fps = float(fps)
            first = self._decode_image(self._files[0], 0, resize=False)
            self._src_h, self._src_w = int(first.shape[-2]), int(first.shape[-1])
            self._frame_count = len(self._files)
            self._count_exact = True
            self._count_reliable = True
        else:
            self._open_video()
            if torchcodec is not None:
                self._open_torchcodec(torchcodec)
        self._start = _to_index(start, self._fps, "start", 0)
        self._end = _to_index(end, self._fps, "end", None)

    # ------------------------------------------------------------------ opening
    def _open_video(self) -> None:
        av = _import_av()
        try:
            container = av.open(str(self.path), mode="r")
        except av.FFmpegError as exc:
            raise VideoDecodeError(
                f"cannot open {str(self.path)!r} as a video: {exc}. Is it a complete video file "
                f"(a classic .mp4 cut short loses its index and cannot be opened)?",
                self.path,
            ) from exc
        if container.format.name.endswith("_pipe") or container.format.name == "image2":
            # FFmpeg opens a still image (png_pipe, jpeg_pipe, ...) as a one-frame video; a model
            # fed one frame learns nothing. Animated PNG (apng) and GIF are videos.
            container.close()
            raise ValueError(
                f"{str(self.path)!r} is a single image, not a video: to read numbered images as a "
                f"sequence, pass their folder ({str(self.path.parent)!r})."
            )
        if not container.streams.video:
            n_streams = len(container.streams)  # read before closing: a closed container has none
            container.close()
            raise ValueError(f"{str(self.path)!r} has no video stream (it has {n_streams} other stream(s)).")
        stream = container.streams.video[0]
        if self.threads:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = 0  # FFmpeg picks the number of threads
        if not stream.width or not stream.height:
            container.close()
            raise VideoDecodeError(
                f"{str(self.path)!r}: video stream has no frame size; the file looks damaged.", self.path
            )
        self._container, self._stream = container, stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self._fps = float(rate) if rate else 25.0
        self._src_h, self._src_w = int(stream.height), int(stream.width)
        # The display matrix travels with the frames (FFmpeg copies the stream's onto each):
        # the first frame tells, decoded now and handed out first when iteration starts.
        self._decoded = self._decode_frames(av)
        try:
            self._first = next(self._decoded, None)
        except av.FFmpegError:
            self._first = None  # raised again, with the frame index, when iterating
            self._decoded = self._decode_frames(av, reopen=True)
        if isinstance(self._first, av.VideoFrame):
            self._rotation = int(round(self._first.rotation / 90)) * 90 % 360
            if self._rotation in (90, 270):
                self._src_h, self._src_w = self._src_w, self._src_h
        # frame count: exact from the header when present, else estimated from a duration.
        # ``_count_reliable``: trusted enough to call a file that ends earlier truncated
        # (a container duration may include audio, so it is trusted only for video-only files)
        self._count_exact = bool(stream.frames)
        self._count_reliable = True
        #: the announced duration in seconds, when the count is estimated from it
        self._duration_s: float | None = None
        if stream.frames:
            self._frame_count = int(stream.frames)
        elif stream.duration is not None and stream.time_base is not None:
            self._duration_s = float(stream.duration * stream.time_base)
            self._frame_count = int(round(self._duration_s * self._fps))
        elif container.duration is not None:
            self._duration_s = container.duration / 1_000_000
            self._frame_count = int(round(self._duration_s * self._fps))
            self._count_reliable = len(container.streams) == 1
        else:
            self._frame_count = 0

    def _open_torchcodec(self, decoders: Any) -> None:
        """Hand decoding over to TorchCodec once PyAV has probed the file (``_open_video``)."""
        self._container.close()  # the probe's container, first frame and decoder are not needed
        self._container = self._stream = self._decoded = self._first = None
        # (not TorchCodec's decoder-native Resize: with FFmpeg 5.1 it shifts the colours of
        # odd-width frames it shrinks by up to 100 levels; see the class docstring)
        try:
            decoder = decoders.VideoDecoder(
                str(self.path), seek_mode="exact", num_ffmpeg_threads=0 if self.threads else 1, device="cpu"
            )
        except (RuntimeError, ValueError) as exc:
            raise VideoDecodeError(
                f"TorchCodec cannot open {str(self.path)!r} as a video: {_torchcodec_message(exc)}", self.path
            ) from exc
        shape = (decoder.metadata.height, decoder.metadata.width)  # after rotation
        if shape != self.source_size:
            raise VideoDecodeError(
                f"TorchCodec reads {str(self.path)!r} as {shape[1]}x{shape[0]} frames, PyAV as "
                f"{self._src_w}x{self._src_h}; read it with backend='pyav'.",
                self.path,
            )
        self._decoder = decoder

    # ------------------------------------------------------------------ properties
    @property
    def fps(self) -> float:
        """Frames per second (the stream's average rate, or the ``fps`` argument for images)."""
        return self._fps

    @property
    def frame_count(self) -> int:
        """Frames in the whole input (before start/end/step); estimated from the duration when
        the container has no frame count (0 when unknown). See :attr:`frame_count_exact`."""
        return self._frame_count

    @property
    def frame_count_exact(self) -> bool:
        """Whether :attr:`frame_count` comes from a header (or file listing) rather than a duration."""
        return self._count_exact

    @property
    def duration(self) -> float:
        """Duration of the whole input in seconds (``frame_count / fps``)."""
        return self._frame_count / self._fps

    @property
    def height(self) -> int:
        """Height H of the yielded frames (after ``size``)."""
        return self.size[0] if self.size else self._src_h

    @property
    def width(self) -> int:
        """Width W of the yielded frames (after ``size``)."""
        return self.size[1] if self.size else self._src_w

    @property
    def channels(self) -> int:
        """C: 1 with ``gray=True``, else 3."""
        return 1 if self.gray else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one yielded frame."""
        return (self.channels, self.height, self.width)

    @property
    def rotation(self) -> int:
        """Degrees (0, 90, 180, 270) the frames are turned counter-clockwise, as the video's
        display matrix asks; 0 for image sequences."""
        return self._rotation

    @property
    def source_size(self) -> tuple[int, int]:
        """``(H, W)`` of the input's frames, before ``size``."""
        return (self._src_h, self._src_w)

    @property
    def start_index(self) -> int:
        """``start`` as a frame index: the first frame read (seconds converted with :attr:`fps`)."""
        return self._start

    @property
    def end_index(self) -> int | None:
        """``end`` as a frame index (exclusive), or None for the end of the input."""
        return self._end

    @property
    def indices(self) -> range:
        """Source frame indices that iteration yields (bounded by :attr:`frame_count` when known)."""
        end = self._end if self._end is not None else self._frame_count
        if self._end is not None and self._frame_count:
            end = min(end, self._frame_count)
        return range(self._start, max(end, self._start), self.step)

    def __len__(self) -> int:
        """Number of items (frames or batches) iteration yields; estimated for some containers."""
        n = len(self.indices)
        return n if self.batch_size is None else -(-n // self.batch_size)

    # ------------------------------------------------------------------ decoding
    def _decode_image(self, path: Path, index: int, resize: bool = True) -> Tensor:
        from torchgmm.io.images import decode_image_file

        try:
            img = decode_image_file(path, mode="grey" if self.gray else "rgb")
        except (OSError, ValueError) as exc:
            raise VideoDecodeError(
                f"cannot decode frame {index} of the image sequence {str(self.path)!r} ({path.name}): {exc}",
                path,
                index,
            ) from exc
        if img.dtype != torch.uint8:  # 16-bit PNG/TIFF: by its effective bit depth, as segment does
            from torchgmm.pixels import to_uint8

            img = to_uint8(img[None])[0]
        if resize and self.size is not None and tuple(img.shape[-2:]) != self.size:
            img = _resize(img[None], self.size)[0]
        elif resize and (img.shape[-2], img.shape[-1]) != (self._src_h, self._src_w):
            raise VideoDecodeError(
                f"frame {index} of the image sequence {str(self.path)!r} ({path.name}) is "
                f"{img.shape[-1]}x{img.shape[-2]}, the first frame is {self._src_w}x{self._src_h}; "
                f"pass `size=(H, W)` to resize all frames.",
                path,
                index,
            )
        return img.contiguous()

    def _frame_into(self, frame: Any, out: np.ndarray) -> None:
        """Convert a PyAV frame into ``out`` (C, H, W) uint8: swscale to planar, copy planes,
        then turn it as the display matrix says."""
        if self._rotation:
            k = self._rotation // 90
            coded = np.empty((out.shape[0], *out.shape[1:][:: (-1) ** k]), np.uint8)  # before turning
            self._coded_into(frame, coded)
            out[:] = np.rot90(coded, k, axes=(1, 2))  # counter-clockwise, as np.rot90
            return
        self._coded_into(frame, out)

    def _coded_into(self, frame: Any, out: np.ndarray) -> None:
        h, w = out.shape[1], out.shape[2]
        if not self.gray and w % 16:
            # swscale's YUV -> planar gbrp (libswscale 9.5) corrupts the last columns when
            # W mod 16 is 2..8 (e.g. 854x480); packed rgb24 is exact, at 2-3x the cost
            out[:] = frame.to_ndarray(width=w, height=h, format="rgb24").transpose(2, 0, 1)
            return
        fmt = "gray" if self.gray else "gbrp"
        f = frame.reformat(width=w, height=h, format=fmt)
        planes = f.planes
        # gbrp stores G, B, R planes; out is R, G, B
        order = (0,) if self.gray else (2, 0, 1)
        for c, p in enumerate(order):
            plane = planes[p]
            arr = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
            out[c] = arr[:h, :w]

    def _source_frames(self) -> Iterator[tuple[int, Any]]:
        """(index, frame) for the selected frames; frames are PyAV frames or image paths."""
        start, end, step = self._start, self._end, self.step
        if self._files is not None:
            stop = len(self._files) if end is None else min(end, len(self._files))
            for i in range(start, stop, step):
                yield i, self._files[i]
            return
        av = _import_av()
        index = -1
        first_time = last_time = None  # presentation times (s) of the first and last frames
        decoder = self._decoded
        first, self._first = self._first, None
        if first is not None:
            decoder = itertools.chain([first], decoder)
        damage: str | None = None  # the decoder's last refusal, when skipping
        stream_start = self._stream.start_time
        zero_time = float(stream_start * self._stream.time_base) if stream_start is not None else None
        while True:
            try:
                frame = next(decoder)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                read = f"frames 0..{index} were read" if index >= 0 else "no frame was read"
                raise VideoDecodeError(
                    f"cannot decode {str(self.path)!r} at frame {index + 1}: {exc} ({read}).",
                    self.path,
                    index + 1,
                ) from exc
            if isinstance(frame, Exception):  # on_damage="skip": a packet the decoder refused
                damage = str(frame)
                continue
            previous = index
            index += 1
            if self.on_damage == "skip" and frame.time is not None and zero_time is not None:
                # the frame's own time says where it is, whatever was lost before it
                index = max(index, int(round((frame.time - zero_time) * self._fps)))
                if index > previous + 1:
                    self._skip(previous + 1, index - 1, damage or "no frame was decoded there")
                damage = None
            if frame.time is not None:
                first_time = frame.time if first_time is None else first_time
                last_time = frame.time
            if end is not None and index >= end:
                return
            if index >= start and (index - start) % step == 0:
                yield index, frame
        spanned = None if last_time is None else last_time - first_time + 1 / self._fps
        self._check_complete(index + 1, spanned)

    def _check_complete(self, decoded: int, spanned: float | None) -> None:
        """Raise when the file ended (after ``decoded`` frames spanning ``spanned`` seconds,
        None when unknown) short of what its header announces.

        A truncated file ends without an FFmpeg error: compare with the header's promise.
        A frame count from the header: at most 1 frame short (edit lists may drop one). A
        count estimated from the duration is wrong for variable frame rate, so then the
        time the frames span is compared with the duration instead (2 % and 2 frames slack).
        """
        end = self._end
        expected = self._frame_count
        if self._count_exact or self._duration_s is None or spanned is None:
            slack = 1 if self._count_exact else max(2, int(0.02 * expected))
            short = decoded < expected - slack
        else:
            short = spanned < 0.98 * self._duration_s - 2 / self._fps
        if expected and self._count_reliable and short:
            if end is None or decoded < end:
                read = f"frames 0..{decoded - 1} were read" if decoded else "no frame could be decoded"
                raise VideoDecodeError(
                    f"{str(self.path)!r} ended at frame {decoded} but its header announces "
                    f"{'' if self._count_exact else 'about '}{expected} frames: the file is truncated "
                    f"or damaged ({read}).",
                    self.path,
                    decoded,
                )

    def _decode_frames(self, av: Any, reopen: bool = False) -> Iterator[Any]:
        """The stream's frames; with ``on_damage="skip"`` a packet the decoder refuses comes
        out as its exception, and decoding goes on with the next packet."""
        if reopen:  # a failed first decode at open: start again, so the error gets its index
            self._container.seek(0)
        if self.on_damage == "stop":
            yield from self._container.decode(self._stream)
            return
        for packet in self._container.demux(self._stream):  # ends with a flush packet
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                yield exc
                continue
            yield from frames

    def _skip(self, first: int, last: int, reason: str) -> None:
        """Record (and warn about) source frames ``first..last`` skipped as damaged."""
        self.skipped.append((first, last, reason))
        frames = f"frame {first}" if first == last else f"frames {first}..{last}"
        warnings.warn(f"{str(self.path)!r}: {frames} could not be decoded and were skipped ({reason}).", stacklevel=2)

    def _image_or_skip(self, src: Path, index: int) -> Tensor | None:
        """A sequence's image, or None when it is damaged and ``on_damage="skip"``."""
        try:
            return self._decode_image(src, index)
        except VideoDecodeError as exc:
            if self.on_damage == "stop":
                raise
            self._skip(index, index, str(exc.__cause__ or exc))
            return None

    def _new_buffer(self, t: int | None) -> tuple[Tensor, np.ndarray]:
        shape = self.shape if t is None else (t, *self.shape)
        tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=self._pin)
        return tensor, tensor.numpy()

    def _produce(self) -> Iterator[Tensor]:
        """Decoded CPU items (frames or batches), in order."""
        if self._decoder is not None:
            yield from self._produce_torchcodec()
            return
        bs = self.batch_size
        if bs is None:
            for index, src in self._source_frames():
                if self._files is not None:
                    img = self._image_or_skip(src, index)
                    if img is not None:
                        yield img.pin_memory() if self._pin else img
                else:
                    tensor, buf = self._new_buffer(None)
                    self._frame_into(src, buf)
                    yield tensor
            return
        tensor, buf = self._new_buffer(bs)
        n = 0
        try:
            for index, src in self._source_frames():
                if self._files is not None:
                    img = self._image_or_skip(src, index)
                    if img is None:
                        continue
                    tensor[n] = img
                else:
                    self._frame_into(src, buf[n])
                n += 1
                if n == bs:
                    yield tensor
                    tensor, buf = self._new_buffer(bs)
                    n = 0
        except VideoDecodeError:
            if n:  # the frames before the damage come first, then the error
                yield tensor[:n]
            raise
        if n:
            yield tensor[:n]

    def _produce_torchcodec(self) -> Iterator[Tensor]:
        """``_produce`` with TorchCodec: each call decodes up to ``batch_size`` selected frames
        (8 when yielding single frames) into one ``(T, 3, H, W)`` tensor; grey, then the
        resize, are vectorised steps on it, in the order and with the rules of image folders
        (:func:`torchgmm.pixels.to_grey_uint8`, :func:`_resize`)."""
        from torchgmm.pixels import to_grey_uint8

        decoder = self._decoder
        n_frames = len(decoder)  # exact: seek_mode="exact" counted the stream's frames
        stop = n_frames if self._end is None else min(self._end, n_frames)
        wanted = range(self._start, max(stop, self._start), self.step)
        chunk = self.batch_size or _TORCHCODEC_CHUNK
        for first in range(0, len(wanted), chunk):
            frames, error = self._torchcodec_frames(wanted[first : first + chunk])
            if frames.shape[0]:
                if self.gray:
                    frames = to_grey_uint8(frames)
                if self.size is not None and self.size != self.source_size:
                    frames = _resize(frames, self.size)
                # TorchCodec's NCHW is a view of NHWC: one copy makes it (T, C, H, W) contiguous
                frames = frames.contiguous()
                if self._pin:
                    frames = frames.pin_memory()
                if self.batch_size is None:
                    yield from frames.unbind(0)
                else:
                    yield frames
            if error is not None:
                raise error
        if self._end is None or self._end > n_frames:  # read to the end of the file
            metadata = decoder.metadata
            begin, end = metadata.begin_stream_seconds_from_content, metadata.end_stream_seconds_from_content
            self._check_complete(n_frames, None if begin is None or end is None else end - begin)

    def _torchcodec_frames(self, selected: range) -> tuple[Tensor, VideoDecodeError | None]:
        """The frames ``selected`` as ``(T, 3, H, W)`` uint8, or, when one cannot be decoded,
        the frames before it and the error naming it (found again frame by frame)."""
        try:
            # (a sliced range may stop past the last frame: stop just after the last selected one)
            return self._decoder.get_frames_in_range(selected.start, selected[-1] + 1, selected.step).data, None
        except RuntimeError:
            pass
        good: list[Tensor] = []
        error: VideoDecodeError | None = None
        for index in selected:
            try:
                good.append(self._decoder.get_frame_at(index).data)
            except RuntimeError as exc:
                read = f"frames 0..{index - 1} were read" if index else "no frame was read"
                error = VideoDecodeError(
                    f"cannot decode {str(self.path)!r} at frame {index}: {_torchcodec_message(exc)} ({read}).",
                    self.path,
                    index,
                )
                error.__cause__ = exc
                break
        if good:
            return torch.stack(good), error
        h, w = self.height, self.width
        return torch.empty(0, 3, h, w, dtype=torch.uint8), error

    def _worker(self) -> None:
        q = self._queue
        assert q is not None
        try:
            for item in self._produce():
                while not self._stop.is_set():
                    try:
                        q.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = _END
        except BaseException as exc:  # re-raised in the consumer
            item = exc
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _to_device(self, item: Tensor) -> Tensor:
        if self.device.type == "cpu":
            return item
        with torch.inference_mode(False):  # an ordinary tensor (see _next_item)
            return item.to(self.device, non_blocking=self._pin)

    @staticmethod
    def _next_item(items: Iterator[Tensor]) -> Any:
        """The next decoded item (or ``_END``), made as an ordinary tensor.

        Frames are ordinary tensors whatever the consumer's context: one read under
        ``torch.inference_mode()`` would otherwise be an inference tensor (other dispatch
        keys), and a compiled model fed both kinds compiles twice (measured: ~1 s lost per
        process on CUDA). The prefetch thread is outside inference mode anyway.
        """
        with torch.inference_mode(False):
            return next(items, _END)

    def __iter__(self) -> Iterator[Tensor]:
        if self._started:  # (a finished iteration also closes the reader)
            raise ValueError(
                f"VideoReader for {str(self.path)!r} is {'closed' if self._closed else 'being iterated'}: "
                "a reader can be iterated once; open a new reader to read again."
            )
        if self._closed:
            raise ValueError(f"VideoReader for {str(self.path)!r} is closed.")
        self._started = True
        # One iteration per reader: when it ends, fails or is abandoned (a ``break`` without
        # ``with``: the generator is closed), the decoding thread stops and the file is closed.
        # Without this, the thread (whose target holds the reader) kept both alive for good.
        try:
            if self.prefetch == 0:
                items = self._produce()
                while (item := self._next_item(items)) is not _END:
                    yield self._to_device(item)
                return
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._worker, name=f"VideoReader({self.path.name})", daemon=True)
            self._thread.start()
            while True:
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set():  # close() from elsewhere: the worker puts nothing more
                        raise ValueError(
                            f"VideoReader for {str(self.path)!r} was closed while it was being iterated."
                        ) from None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(item)
        finally:
            self.close()

    # ------------------------------------------------------------------ resources
    def close(self) -> None:
        """Stop the decoding thread and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # (never from the decoding thread itself: a garbage-collected iterator may close there)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        if self._container is not None:
            self._container.close()
            self._container = None
        self._decoder = None  # TorchCodec closes the file when its decoder is freed

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; prefer ``with`` or ``close()``
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, frames={self._frame_count}, fps={self._fps:g}, "
            f"shape={self.shape}, step={self.step}, batch_size={self.batch_size}, backend={self.backend!r})"
        )


class VideoWriter:
    """Write uint8 frames (or bool masks) to a video file or a numbered PNG sequence.

    The encoder is set up from the first frame (size and channels). Defaults are lossless:

    - ``.mkv``/``.avi``/``.nut``: FFV1 with ``gray`` (C = 1) or ``bgr0`` (C = 3) pixels;
    - other containers (``.mp4``, ``.mov``): lossless H.264 (``qp=0``, preset ``ultrafast``
      with CABAC on: several times faster than x264's default ``medium`` on 768x576 masks
      for a few percent more bytes), grey
      (``libx264``, ``gray``, one plane) for C = 1 and RGB (``libx264rgb``) for C = 3; FFV1
      is faster still and smaller on masks.

    With ``lossless=False`` the default is H.264 ``yuv420p`` (``yuv444p`` for odd sizes), CRF 18,
    preset ``veryfast`` (on ``vtest.avi`` 2.2x faster than ``medium``, and smaller).
    A folder path (an existing folder, a path without suffix, or ``format="png"``) writes
    ``%06d.png`` files, each atomically (temporary file + ``os.replace``).

    The output is finalised (encoder flushed, container closed) when the ``with`` block ends,
    also through an exception or ``KeyboardInterrupt``, so what was written stays playable.
    ``.mp4``/``.mov`` files are fragmented MP4 and ``.mkv`` clusters last at most a second, both
    handed to the OS as they are muxed, so even a process killed outright (SIGKILL) leaves
    a playable file with all but about the last second (plus the encoder's delay) of frames.
    With ``durable=True`` (for runs that checkpoint) every frame gets its own fragment or
    cluster and H.264 runs without frame delay (``tune=zerolatency``), so a hard kill loses at
    most the last frame written; PNG frames are durable as written.

    Args:
        path: output file, or folder for a PNG sequence.
        fps: frame rate written into the file.
        codec: FFmpeg encoder name (e.g. ``"ffv1"``, ``"libx264"``, ``"mpeg4"``); default above.
        lossless: choose a lossless default codec and settings.
        format: ``"png"`` for an image sequence; None infers it from ``path``.
        pix_fmt: encoder pixel format; default chosen from the codec and C (an explicit
            codec gets its native format, ``yuv444p`` for odd sizes where it has it).
        options: extra encoder options (strings), e.g. ``{"crf": "23"}``.
        container_options: muxer options (strings); when given they replace the crash-safe
            defaults above, e.g. ``{"movflags": "faststart"}`` for a classic (not fragmented)
            MP4 with its index at the front.
        durable: lose at most the last frame on a hard kill (above); MP4 files grow by about
            120 bytes per frame, Matroska by about 15.
        start_number: number of the first PNG file.

    Shape:
        - Input: ``(C, H, W)`` or ``(T, C, H, W)``, uint8 or bool, C = 1 or 3; bool is written 0/255.
          Every frame has the first frame's size; after a 3-channel first frame, 1-channel
          frames are accepted and written as three equal channels.

    Example:
        >>> import tempfile
        >>> frames = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with VideoWriter(f"{d}/clip.mkv", fps=10) as writer:  # lossless FFV1
        ...         writer.write(frames)
        ...     with VideoReader(f"{d}/clip.mkv") as reader:
        ...         back = torch.stack(list(reader))
        >>> writer.frames_written, back.shape, torch.equal(back, frames)
        (5, torch.Size([5, 3, 16, 16]), True)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float = 25,
        codec: str | None = None,
        lossless: bool = True,
        format: Literal["png"] | None = None,
        pix_fmt: str | None = None,
        options: dict[str, str] | None = None,
        container_options: dict[str, str] | None = None,
        durable: bool = False,
        start_number: int = 0,
    ) -> None:
        self.path = Path(path)
        if not (isinstance(fps, (int, float, Fraction)) and 0 < fps < float("inf")):
            raise ValueError(f"`fps` must be a positive finite number, got {fps!r}.")
        if format not in (None, "png"):
            raise ValueError(f"`format` must be None or 'png', got {format!r}.")
        self.fps = fps
        self.codec = codec
        self.lossless = bool(lossless)
        self.pix_fmt = pix_fmt
        self.options = dict(options or {})
        self.container_options = dict(container_options or {})
        self.durable = bool(durable)
        if format is None and self.path.suffix and self.path.is_dir():
            # a folder named like a video file: the caller meant a file (or should say format="png")
            raise IsADirectoryError(
                f"cannot write the video {str(self.path)!r}: it is an existing folder; remove it, or pass "
                "format='png' to write a numbered PNG sequence into it."
            )
        self.is_sequence = format == "png" or self.path.is_dir() or self.path.suffix == ""
        self.frames_written = 0
        self._start_number = check_positive_int(start_number, "start_number", minimum=0)
        self._shape: tuple[int, int, int] | None = None
        self._container: Any = None
        self._stream: Any = None
        #: "encoder (pix_fmt)" for error messages, read when the stream is set up: after the
        #: encoder failed to open, PyAV 19 crashes (SIGSEGV) on reading ``codec_context.name``
        self._encoder = ""
        self._closed = False
        if self.is_sequence:
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            _import_av()
            if not self.path.parent.exists():
                raise FileNotFoundError(f"output folder {str(self.path.parent)!r} does not exist.")

    def _open(self, c: int, h: int, w: int) -> None:
        av = _import_av()
        suffix = self.path.suffix.lower()
        codec, pix_fmt, options = self.codec, self.pix_fmt, dict(self.options)
        if codec is None:
            if self.lossless:
                # one grey plane where there is one channel (masks): lossless H.264 4:0:0 at
                # qp 0 encodes a 768x576 mask in 0.75x the time of three equal RGB planes and
                # is 2.5x smaller
                codec = "ffv1" if suffix in _FFV1_CONTAINERS else ("libx264" if c == 1 else "libx264rgb")
            else:
                codec = "libx264"
        if pix_fmt is None:
            try:
                supported = [f.name for f in (av.Codec(codec, "w").video_formats or ())]
            except Exception:  # noqa: BLE001 - an unknown codec is reported by add_stream below
                supported = []
            if codec == "ffv1":
                pix_fmt = "gray" if c == 1 else "bgr0"
            elif codec == "libx264rgb":
                pix_fmt = "rgb24"
            elif codec in ("libx264", "h264") and self.lossless:
                # no chroma subsampling (RGB -> YUV still rounds; libx264rgb is exact)
                pix_fmt = "gray" if c == 1 else "yuv444p"
            elif (h % 2 or w % 2) and (not supported or "yuv444p" in supported):
                pix_fmt = "yuv444p"
            elif supported:
                pix_fmt = supported[0]  # the encoder's native format (libx264 yuv420p, mjpeg yuvj420p)
            else:
                pix_fmt = "yuv420p"
        if codec.startswith("libx264"):
            if self.durable:
                options.setdefault("tune", "zerolatency")  # no B-frames or lookahead: no frame delay
            if self.lossless:
                # ultrafast with CABAC back on: on vtest.avi's 795 masks 0.76 ms a mask against
                # superfast's 1.63, for 4% more bytes (ultrafast alone: 0.67 ms, 1.9x the bytes)
                options.setdefault("qp", "0")
                options.setdefault("preset", "ultrafast")
                options.setdefault("x264-params", "cabac=1")
            else:
                options.setdefault("crf", "18")
                options.setdefault("preset", "veryfast")
        safe = (_DURABLE_MUXER_OPTIONS if self.durable else _CRASH_SAFE_MUXER_OPTIONS).get(suffix, {})
        muxer_options = {"flush_packets": "1", **(self.container_options or safe)}
        try:
            container = av.open(str(self.path), mode="w", options=muxer_options)
        except (av.FFmpegError, ValueError) as exc:  # ValueError: PyAV knows no container for the suffix
            raise ValueError(f"cannot create video {str(self.path)!r}: {exc}") from exc
        try:
            rate = Fraction(self.fps).limit_denominator(100_000)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
            if options:
                stream.options = options
            if codec == "ffv1":
                stream.codec_context.thread_count = 0
            elif pix_fmt.startswith("gray"):
                # H.264 has no grey pixel format: decoders return the plane as limited-range
                # luma (16..235) and stretch it, so a mask's 127 read back as 129. Signalling
                # full range (AVCOL_RANGE_JPEG) makes the plane read back as written.
                stream.codec_context.color_range = 2
        except Exception as exc:
            container.close()
            raise ValueError(
                f"cannot set up encoder {codec!r} ({pix_fmt}, {w}x{h}) for {str(self.path)!r}: {exc}"
            ) from exc
        self._container, self._stream = container, stream
        self._encoder = f"{stream.codec_context.name} ({pix_fmt})"
        self._input_format = "gray" if (c == 1 and pix_fmt.startswith("gray")) else "rgb24"

    def write(self, frames: Tensor) -> None:
        """Append one frame ``(C, H, W)`` or a batch ``(T, C, H, W)`` (uint8 or bool, any device).

        Args:
            frames: uint8 frames, or bool masks (written as 0/255); C = 1 or 3. The first
                frame written fixes the size and channel count of the output.

        Shape:
            - frames: ``(C, H, W)`` or ``(T, C, H, W)``, uint8 or bool

        Raises:
            ShapeError: wrong shape, or a size/channel count differing from the first frame.
            TypeError: not a uint8/bool tensor.
            ValueError: the writer is closed, or the encoder cannot be set up or fails.
        """
        if self._closed:
            raise ValueError(f"VideoWriter for {str(self.path)!r} is closed.")
        check_tensor(frames, "frames")
        if frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if frames.ndim != 4 or frames.shape[1] not in (1, 3) or not (frames.shape[2] and frames.shape[3]):
            raise ShapeError(
                f"`frames` must have shape (C, H, W) or (T, C, H, W) with C = 1 or 3 and H, W >= 1, "
                f"got {tuple(frames.shape)} (writing {str(self.path)!r})."
            )
        if frames.dtype == torch.bool:
            frames = frames.to(torch.uint8) * 255
        elif frames.dtype != torch.uint8:
            raise TypeError(f"`frames` must be uint8 or bool, got {frames.dtype}; convert with `.to(torch.uint8)`.")
        shape = tuple(frames.shape[1:])
        if self._shape is None:
            if not self.is_sequence:
                self._open(*shape)
            self._shape = shape  # type: ignore[assignment]
        elif shape != self._shape:
            if shape[0] == 1 and self._shape[0] == 3 and shape[1:] == self._shape[1:]:
                # grey into an RGB output (e.g. masks appended to frames copied on resume): lossless
                frames = frames.expand(-1, 3, -1, -1)
                shape = self._shape
            else:
                raise ShapeError(
                    f"frames written to {str(self.path)!r} must all be {self._shape} (or 1-channel "
                    f"into a 3-channel output), got {shape}."
                )
        frames = frames.cpu()
        if self.is_sequence:
            from torchgmm.io.images import write_png

            for frame in frames:
                write_png(self.path / f"{self._start_number + self.frames_written:06d}.png", frame)
                self.frames_written += 1
            return
        av = _import_av()
        c = shape[0]
        array = frames.permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
        for a in array:
            if self._input_format == "gray":
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a[..., 0]), format="gray")
            else:
                a = np.repeat(a, 3, axis=2) if c == 1 else np.ascontiguousarray(a)
                frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            try:
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            except av.FFmpegError as exc:
                raise ValueError(
                    f"cannot encode frame {self.frames_written} of {str(self.path)!r} with {self._encoder}: {exc}"
                ) from exc
            self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            av = _import_av()
            try:
                if self._stream.codec_context.is_open:  # not open when the first encode failed
                    for packet in self._stream.encode():
                        self._container.mux(packet)
            except av.FFmpegError as exc:
                raise ValueError(f"cannot finish video {str(self.path)!r}: {exc}") from exc
            finally:
                self._container.close()
                self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        # runs for exceptions and KeyboardInterrupt alike: what was written stays playable
        _close_on_exit(self, exc)

    def __repr__(self) -> str:
        kind = "png sequence" if self.is_sequence else (self.codec or "default codec")
        return f"VideoWriter({str(self.path)!r}, {kind}, fps={self.fps}, frames_written={self.frames_written})"


class WriterThread:
    """Run a :class:`VideoWriter`'s encoding on its own thread, behind a bounded queue.

    ``write`` hands the frames over and returns at once (it waits only while ``maxsize``
    items are queued), so encoding frame t overlaps whatever the caller computes for frame
    t + 1; encoders (libx264, FFV1, zlib) release the GIL. An error of the thread is raised
    by the next ``write``, ``drain`` or ``close``, as the writer itself would have raised it.

    Args:
        writer: the writer to feed (closed by :meth:`close`).
        maxsize: items queued at most; 0 writes in the caller's thread, in step (for runs
            that must lose at most the last frame on a hard kill).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with WriterThread(VideoWriter(f"{d}/m.mkv", fps=10)) as writer:
        ...         for _ in range(3):
        ...             writer.write(torch.zeros(1, 8, 8, dtype=torch.bool))
        ...     print(writer.frames_written)
        3
    """

    def __init__(self, writer: VideoWriter, maxsize: int = 8) -> None:
        self.writer = writer
        self.path = writer.path
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        if maxsize > 0:
            self._thread = threading.Thread(target=self._run, name=f"WriterThread({self.path.name})", daemon=True)
            self._thread.start()

    @property
    def frames_written(self) -> int:
        """Frames the writer has encoded so far (queued ones not yet)."""
        return self.writer.frames_written

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _END:
                    return
                if self._error is None:  # after an error, the rest is dropped
                    self.writer.write(item)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, frames: Tensor) -> None:
        """Queue ``frames`` (as :meth:`VideoWriter.write` takes them) for the thread."""
        if self._closed:
            raise ValueError(f"writer thread for {str(self.path)!r} is closed.")
        self._raise()
        if self._thread is None:
            self.writer.write(frames)
            return
        self._queue.put(frames)

    def drain(self) -> None:
        """Wait until every queued frame is handed to the writer (before a checkpoint)."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what is queued, stop the thread and close the writer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join()
        try:
            self._raise()
        finally:
            self.writer.close()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        _close_on_exit(self, exc)


def _close_on_exit(writer: VideoWriter | WriterThread, exc: BaseException | None) -> None:
    """Close ``writer`` leaving a ``with`` block; an error while closing after another error
    becomes a note on the first, which is the one raised."""
    if exc is None:
        writer.close()
        return
    try:
        writer.close()
    except Exception as close_exc:  # keep the original error; report this one with it
        add_note(exc, f"while closing {str(writer.path)!r}: {type(close_exc).__name__}: {close_exc}")

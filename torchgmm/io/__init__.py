"""Decoding and encoding at the edge: image files and folders, videos and image sequences.

PyAV (``av``) is imported lazily, on the first video opened; TorchCodec (an optional
backend of :class:`VideoReader`, see :func:`video_backends`) only when asked for.
"""

from __future__ import annotations

from torchgmm.io.images import (
    ImageFileDataset,
    atomic_write_bytes,
    atomic_write_text,
    decode_image_file,
    find_images,
    image_codec,
    write_png,
)
from torchgmm.io.video import (
    VideoDecodeError,
    VideoReader,
    VideoWriter,
    list_image_sequence,
    parse_position,
    parse_size,
    video_backends,
)

__all__ = [
    "find_images",
    "decode_image_file",
    "ImageFileDataset",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_png",
    "image_codec",
    "VideoReader",
    "VideoWriter",
    "VideoDecodeError",
    "list_image_sequence",
    "parse_position",
    "parse_size",
    "video_backends",
]

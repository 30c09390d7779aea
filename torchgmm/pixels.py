"""Pixel conversions, one home for each rule: bit depth, grey, and the checks they share.

Used by the segmentation, by :func:`~torchgmm.io.decode_image_file` (its ``mode="grey"``)
and by :class:`~torchgmm.io.VideoReader` (16-bit image sequences), so that an image means
the same to every job.

- **Bit depth**: a uint16 image is shifted right by its own effective bit depth
  (:func:`to_uint8`), so 12-bit data keeps its 256 grey levels instead of 16.
- **Grey**: ITU-R BT.601 luma, ``Y = 0.299 R + 0.587 G + 0.114 B``, rounded to the nearest
  level (:func:`luma`, :func:`to_grey_uint8`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchgmm._checks import ShapeError, check_ndim, check_tensor

__all__ = ["BT601", "to_uint8", "to_grey_uint8", "luma", "check_images"]

#: ITU-R BT.601 luma weights of R, G, B
BT601 = (0.299, 0.587, 0.114)


def check_images(images: object, name: str = "images") -> Tensor:
    images = check_tensor(images, name)
    check_ndim(images, name, (4,), "(B, C, H, W) with C = 1 or 3")
    if images.dtype not in (torch.uint8, torch.uint16):
        raise TypeError(
            f"`{name}` must be uint8 (or uint16 for 16-bit images), got dtype {images.dtype}; "
            "convert float images with (x * 255).round().to(torch.uint8)."
        )
    if images.shape[1] not in (1, 3):
        raise ShapeError(
            f"`{name}` must have 1 (grey) or 3 (RGB) channels, got shape {tuple(images.shape)}; "
            "drop an alpha channel with images[:, :3] first."
        )
    return images


def to_uint8(images: Tensor) -> Tensor:
    """Return uint8 images; each uint16 image is shifted right by its own effective bit depth.

    A 16-bit container often holds fewer significant bits (12-bit cameras and microscopes
    write 0..4095). Image ``b`` is shifted right by ``max(0, bit_length(max_b) - 8)`` bits,
    ``max_b`` its largest value over all channels and pixels, so that its highest set bit
    lands on bit 7 and its data spans up to 256 grey levels: 12-bit data (max 2048..4095)
    shifts by 4, full-range 16-bit data (max >= 32768) by 8 (the high byte), and data that
    fits in 8 bits (max <= 255) is kept as it is. Only powers of two are used, so the
    result is a plain truncation of each value's low bits, as for the high byte. Each image
    gets its own shift (images of one batch may have different depths); grey levels of
    different 16-bit images are therefore comparable only when their shifts are equal. The
    maximum alone decides: one value of 4096 or more (a hot pixel) in 12-bit data shifts
    the whole image by more than 4.

    Args:
        images: uint8 or uint16 images, dim 0 indexing the images.

    Returns:
        uint8 tensor of the same shape (``images`` itself when already uint8).

    Raises:
        TypeError: ``images`` is neither uint8 nor uint16.
        ShapeError: ``images`` is 0-d (no image dimension).

    Shape:
        - images: ``(B, ...)``, e.g. ``(B, C, H, W)``, uint8 or uint16
        - output: the same shape, uint8

    Example:
        >>> twelve_bit = torch.tensor([0, 1600, 4095], dtype=torch.uint16).view(1, 1, 1, 3)
        >>> full = torch.tensor([0, 257, 65535], dtype=torch.uint16).view(1, 1, 1, 3)
        >>> to_uint8(torch.cat([twelve_bit, full])).flatten(1).tolist()
        [[0, 100, 255], [0, 1, 255]]
    """
    if images.dtype == torch.uint8:
        return images
    if images.dtype != torch.uint16:
        raise TypeError(f"`images` must be uint8 or uint16, got dtype {images.dtype}.")
    if images.ndim == 0:
        raise ShapeError("`images` must have an image dimension (B, ...), got a 0-d tensor.")
    if images.numel() == 0:
        return images.to(torch.uint8)
    wide = images.to(torch.int32)
    shift = _bit_shift(wide)
    return (wide >> shift.view(-1, *(1,) * (wide.ndim - 1))).to(torch.uint8)


def _bit_shift(images: Tensor) -> Tensor:
    """``(B,)`` int32 right shift of each image for :func:`to_uint8`: ``max(0, bit_length(max) - 8)``.

    Computed on the device for the whole batch: no loop over images and no host sync (no
    host-made tensor either: copying one to a GPU waits for the GPU's queue).
    ``bit_length(m)`` is the number of shifts ``j`` with ``m >> j >= 1``, i.e. of powers of
    two ``2^j <= m`` (0 for m = 0).
    """
    peak = images.reshape(images.shape[0], -1).amax(dim=1).to(torch.int32)  # (B,)
    shifts = torch.arange(16, device=images.device, dtype=torch.int32)
    bit_length = ((peak.unsqueeze(1) >> shifts) > 0).sum(dim=1, dtype=torch.int32)
    return (bit_length - 8).clamp_min(0)


def to_grey_uint8(images: Tensor) -> Tensor:
    """Grey uint8 images: luminance (ITU-R BT.601) of RGB input, 16-bit reduced to 8 bits.

    uint16 images are first reduced to 8 bits by their own effective bit depth
    (:func:`to_uint8`), then converted to luminance.

    Args:
        images: uint8 or uint16 images.

    Returns:
        uint8 grey images.

    Raises:
        TypeError: ``images`` is not a uint8/uint16 tensor.
        ShapeError: ``images`` is not ``(B, C, H, W)`` with C = 1 or 3.

    Shape:
        - images: ``(B, 1, H, W)`` or ``(B, 3, H, W)``, uint8 or uint16
        - output: ``(B, 1, H, W)`` uint8

    Example:
        >>> rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> to_grey_uint8(rgb).shape
        torch.Size([2, 1, 8, 8])
    """
    images = to_uint8(check_images(images))
    if images.shape[1] == 1:
        return images
    # Y = 0.299 R + 0.587 G + 0.114 B, rounded to the nearest grey level
    y = luma(*images.to(torch.float32).unbind(1)).unsqueeze(1)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def luma(red: Tensor, green: Tensor, blue: Tensor) -> Tensor:
    """BT.601 luma of the channels (any equal shapes). The weights are Python numbers: a
    weight tensor made on the host and copied to a GPU would wait for the GPU's queue."""
    return red * BT601[0] + green * BT601[1] + blue * BT601[2]

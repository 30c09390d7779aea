"""Batched clean-up of foreground masks: median filter, morphological opening, small-blob removal.

Pure functions on ``(B, 1, H, W)`` bool tensors; they run on the masks' device, use only
pooling/convolution ops and never copy to the host (except the convergence check of
:func:`remove_small_blobs`, one sync every few iterations).

Shape vocabulary: B frames (batch), H height, W width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torchgmm._checks import ShapeError, check_positive_int, check_tensor

__all__ = ["median_filter_mask", "binary_erosion", "binary_dilation", "binary_opening", "remove_small_blobs"]


def _check_mask(mask: Tensor, name: str = "mask") -> None:
    check_tensor(mask, name)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ShapeError(f"`{name}` must have shape (B, 1, H, W), got {tuple(mask.shape)}.")
    if mask.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a bool tensor, got {mask.dtype}; use `mask != 0`.")


def _check_kernel(kernel_size: int) -> int:
    check_positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
    return kernel_size


def median_filter_mask(mask: Tensor, kernel_size: int = 5) -> Tensor:
    """Median (majority) filter of a binary mask over a ``k x k`` window.

    The border is replicated (as ``cv2.medianBlur`` does), so an object touching the frame
    edge keeps its corners.

    Args:
        mask: foreground masks.
        kernel_size: odd window size k.

    Returns:
        True where more than half of the ``k * k`` window is foreground.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor, or ``kernel_size`` is not an int.
        ValueError: ``kernel_size`` is not a positive odd number.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool

    Example:
        >>> m = torch.zeros(1, 1, 5, 5, dtype=torch.bool); m[0, 0, 2, 2] = True
        >>> median_filter_mask(m, 3).any().item()   # an isolated pixel is removed
        False
    """
    _check_mask(mask)
    k = _check_kernel(kernel_size)
    r = k // 2
    padded = F.pad(mask.to(torch.float32), (r, r, r, r), mode="replicate")
    counts = F.avg_pool2d(padded, k, stride=1) * (k * k)
    return counts > (k * k) / 2


def binary_erosion(mask: Tensor, kernel_size: int = 3) -> Tensor:
    """Erode with a ``k x k`` square (outside the image counts as foreground, as in OpenCV).

    A pixel stays foreground only when its whole ``k x k`` window is foreground.

    Args:
        mask: foreground masks.
        kernel_size: odd size k of the square structuring element.

    Returns:
        the eroded masks.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor, or ``kernel_size`` is not an int.
        ValueError: ``kernel_size`` is not a positive odd number.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool

    Example:
        >>> m = torch.zeros(1, 1, 5, 5, dtype=torch.bool); m[0, 0, 1:4, 1:4] = True
        >>> binary_erosion(m, 3)[0, 0].nonzero().tolist()   # only the centre of the square stays
        [[2, 2]]
    """
    _check_mask(mask)
    k = _check_kernel(kernel_size)
    inv = (~mask).to(torch.float32)
    return F.max_pool2d(inv, k, stride=1, padding=k // 2) == 0


def binary_dilation(mask: Tensor, kernel_size: int = 3) -> Tensor:
    """Dilate with a ``k x k`` square (outside the image counts as background).

    A pixel becomes foreground when any pixel of its ``k x k`` window is foreground.

    Args:
        mask: foreground masks.
        kernel_size: odd size k of the square structuring element.

    Returns:
        the dilated masks.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor, or ``kernel_size`` is not an int.
        ValueError: ``kernel_size`` is not a positive odd number.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool

    Example:
        >>> m = torch.zeros(1, 1, 5, 5, dtype=torch.bool); m[0, 0, 2, 2] = True
        >>> int(binary_dilation(m, 3).sum())   # one pixel grows into a 3x3 square
        9
    """
    _check_mask(mask)
    k = _check_kernel(kernel_size)
    return F.max_pool2d(mask.to(torch.float32), k, stride=1, padding=k // 2) > 0


def binary_opening(mask: Tensor, kernel_size: int = 3) -> Tensor:
    """Morphological opening (erosion then dilation): removes specks thinner than ``k``.

    Args:
        mask: foreground masks.
        kernel_size: odd size k of the square structuring element.

    Returns:
        the opened masks.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor, or ``kernel_size`` is not an int.
        ValueError: ``kernel_size`` is not a positive odd number.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool

    Example:
        >>> m = torch.zeros(1, 1, 6, 6, dtype=torch.bool); m[0, 0, 1:4, 1:4] = True; m[0, 0, 5, 5] = True
        >>> int(binary_opening(m, 3).sum())   # the 3x3 square stays, the speck goes
        9
    """
    return binary_dilation(binary_erosion(mask, kernel_size), kernel_size)


def remove_small_blobs(mask: Tensor, min_area: int, *, check_every: int = 8) -> Tensor:
    """Drop 8-connected foreground components smaller than ``min_area`` pixels.

    Components are labelled by iterative max propagation: every foreground pixel starts with
    a unique label (its flat index + 1) and takes the maximum over its 3x3 neighbourhood
    (restricted to foreground) until nothing changes; then areas are counted per label with
    ``scatter_add``. The number of iterations grows with the longest path inside a component,
    so this suits masks of moderate size (CDnet, 640x480); it checks for convergence (one
    host sync) every ``check_every`` iterations.

    Args:
        mask: foreground masks.
        min_area: components with fewer pixels are removed; ``<= 1`` returns ``mask`` unchanged.
        check_every: iterations between convergence checks.

    Returns:
        the mask without small components.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor, or ``min_area``/``check_every`` is not an int.
        ValueError: ``check_every`` is not positive.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool

    Example:
        >>> m = torch.zeros(1, 1, 6, 6, dtype=torch.bool); m[0, 0, :3, :3] = True; m[0, 0, 5, 5] = True
        >>> int(remove_small_blobs(m, 4).sum())
        9
    """
    _check_mask(mask)
    if isinstance(min_area, bool) or not isinstance(min_area, int):
        raise TypeError(f"`min_area` must be an int, got {type(min_area).__name__}.")
    check_positive_int(check_every, "check_every")
    if min_area <= 1 or mask.numel() == 0:
        return mask
    b, _, h, w = mask.shape
    # float32 holds integers exactly up to 2**24; use float64 beyond
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    fg = mask.to(dtype)
    labels = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, 1, h, w) * fg
    it = 0
    while True:
        new = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        it += 1
        if it % check_every == 0:
            if torch.equal(new, labels):
                break
        labels = new
    flat = labels.view(b, h * w).to(torch.int64)  # 0 = background, else 1..H*W
    area = torch.zeros(b, h * w + 1, dtype=torch.int64, device=mask.device)
    area.scatter_add_(1, flat, torch.ones_like(flat))
    keep = torch.gather(area, 1, flat) >= min_area
    return (keep & (flat > 0)).view(b, 1, h, w)

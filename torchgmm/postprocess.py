"""Batched clean-up of foreground masks: median filter, morphological opening, small-blob removal.

Pure functions on ``(B, 1, H, W)`` bool tensors; they run on the masks' device, use only
elementwise ops on shifted slices, gathers and scatters, and never copy to the host, except
in the connected-component labelling (one sync for the foreground count and one per
iteration for the convergence check).

Shape vocabulary: B frames (batch), H height, W width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torchgmm._checks import ShapeError, check_positive_int, check_tensor

__all__ = [
    "median_filter_mask", "binary_erosion", "binary_dilation", "binary_opening", "remove_small_blobs",
    "connected_component_labels",
]

#: pointer jumps per labelling iteration (4 measured converging in 4-6 iterations on noise,
#: blobs and serpentines; see _label_foreground)
_POINTER_JUMPS = 4


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


def _window_max(x: Tensor, k: int) -> Tensor:
    """Maximum over each ``k x k`` window of ``(..., H, W)`` values >= 0; outside counts as 0.

    4.7x faster than ``max_pool2d`` on 8 x 640x480 float32 (3x3, 2 threads), and it works on
    bool directly.
    """
    r = k // 2
    return _separable_window(F.pad(x, (r, r, r, r)), k, torch.maximum)


def _window_count(mask: Tensor, k: int) -> Tensor:
    """Number of True pixels in each ``k x k`` window of ``(..., H, W)`` bool, border replicated."""
    r = k // 2
    h, w = mask.shape[-2:]
    dtype = torch.uint8 if k * k <= 255 else torch.int32
    # replicate padding by index: works for every dtype on every device
    rows_index = torch.arange(-r, h + r, device=mask.device).clamp_(0, h - 1)
    cols_index = torch.arange(-r, w + r, device=mask.device).clamp_(0, w - 1)
    padded = mask.to(dtype).index_select(-1, cols_index).index_select(-2, rows_index)
    return _separable_window(padded, k, torch.add)


def _separable_window(padded: Tensor, k: int, combine) -> Tensor:  # noqa: ANN001
    """Reduce each ``k x k`` window of ``padded`` (``(..., H + k - 1, W + k - 1)``) with an
    associative ``combine``: along rows, then columns, from 2 (k - 1) shifted slices."""
    h, w = padded.shape[-2] - (k - 1), padded.shape[-1] - (k - 1)
    rows = padded[..., :, 0:w]
    for shift in range(1, k):
        rows = combine(rows, padded[..., :, shift : shift + w])
    out = rows[..., 0:h, :]
    for shift in range(1, k):
        out = combine(out, rows[..., shift : shift + h, :])
    return out


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
    if mask.numel() == 0:  # H or W = 0: nothing to index the border from
        return mask.clone()
    return _window_count(mask, k) > (k * k) // 2


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
    return ~_window_max(~mask, k)


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
    return _window_max(mask, k)


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


def remove_small_blobs(mask: Tensor, min_area: int, *, check_every: int = 1) -> Tensor:
    """Drop 8-connected foreground components smaller than ``min_area`` pixels.

    Components are labelled by max-label hooking with pointer jumping (a variant of the
    data-parallel connected-components scheme of Shiloach and Vishkin): every foreground
    pixel starts with a unique label, its rank among the foreground pixels, which always
    names a pixel of its own component. Each iteration (1) takes the best label in the 3x3
    neighbourhood, (2) *hooks*: raises the label of the pixel that each pixel's label names
    (its root) to that neighbour label, so a whole labelled region joins its neighbour at
    once, and (3) *jumps*: replaces each label by the label of the pixel it names, a few
    times. At the fixed point every pixel holds its component's last pixel. Plain max
    propagation needs as many iterations as the longest path inside a component (thousands
    for a snake-like mask); this converged in 4-6 on 640x480 masks (noise, blobs,
    serpentines, spirals, diagonal zig-zags); the worst shape found, a Hilbert curve, needs
    about log2 of its side (12 at 2048x2048). Areas are then counted per label.

    Args:
        mask: foreground masks.
        min_area: components with fewer pixels are removed; ``<= 1`` returns ``mask`` unchanged.
        check_every: iterations between convergence checks (each is one host sync).

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
    pixels, labels = _label_foreground(mask, check_every=check_every, jumps=_POINTER_JUMPS)
    area = torch.bincount(labels, minlength=pixels.numel())  # pixels per root
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    keep[pixels] = area[labels] >= min_area
    return keep.view(mask.shape)


def connected_component_labels(mask: Tensor, *, check_every: int = 1, jumps: int = _POINTER_JUMPS) -> Tensor:
    """Label the 8-connected foreground components of a batch of masks.

    See :func:`remove_small_blobs` for the scheme. Labels are not consecutive: each
    component is named by its largest flat pixel index + 1 (so the labels of one mask are
    unique and stable under batching); background is 0.

    Args:
        mask: foreground masks.
        check_every: iterations between convergence checks (each is one host sync).
        jumps: pointer jumps per iteration.

    Returns:
        ``int64`` labels.

    Raises:
        ShapeError: ``mask`` is not ``(B, 1, H, W)``.
        TypeError: ``mask`` is not a bool tensor.
        ValueError: ``check_every`` or ``jumps`` is not positive.

    Shape:
        - mask: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` int64

    Example:
        >>> m = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1]], dtype=torch.bool)[None, None]
        >>> connected_component_labels(m)[0, 0].tolist()   # diagonal neighbours connect
        [[6, 0, 0, 12], [0, 6, 0, 12], [0, 0, 0, 12]]
    """
    _check_mask(mask)
    check_positive_int(check_every, "check_every")
    check_positive_int(jumps, "jumps")
    b, _, h, w = mask.shape
    pixels, labels = _label_foreground(mask, check_every=check_every, jumps=jumps)
    out = torch.zeros(mask.numel(), dtype=torch.int64, device=mask.device)
    out[pixels] = pixels[labels] % (h * w) + 1  # the root is the component's last pixel
    return out.view(b, 1, h, w)


def _label_foreground(mask: Tensor, *, check_every: int, jumps: int) -> tuple[Tensor, Tensor]:
    """Components of the foreground pixels, by hooking and pointer jumping.

    Returns ``pixels``, the ``(n,)`` flat indices of the foreground pixels in ascending
    order, and ``labels``, ``(n,)`` int64: for each of them the position (in ``pixels``) of
    the last pixel of its component, its root. The labels live in this compact form, so the
    hooks and jumps cost O(n), not O(B H W); only the 3x3 neighbourhood maximum is taken on
    the dense image (on masks with 13% foreground 3x faster than labelling every pixel).
    """
    b, _, h, w = mask.shape
    pixels = mask.reshape(-1).nonzero().squeeze(1)  # one host sync, for n
    n = pixels.numel()
    labels = torch.arange(n, device=mask.device)  # each names a pixel of its own component
    if n == 0:
        return pixels, labels
    # the dense image holds label + 1 (0 = background); float32 is exact below 2**24
    dtype = torch.float32 if n < 2**24 else torch.float64
    image = torch.zeros(b * h * w, dtype=dtype, device=mask.device)
    iteration = 0
    while True:
        image[pixels] = (labels + 1).to(dtype)
        # best label in the 3x3 neighbourhood (its own included, so never below its own)
        neighbour = _window_max(image.view(b, h, w), 3).view(-1)[pixels].long() - 1
        # hook: the root a label names takes the best neighbour label of any pixel naming it
        new = torch.maximum(labels.scatter_reduce(0, labels, neighbour, reduce="amax"), neighbour)
        for _ in range(jumps):
            new = new[new]
        iteration += 1
        # labels only grow and stay inside their component, so no change means every pixel
        # holds the maximum of its neighbourhood: one label per component
        if iteration % check_every == 0 and torch.equal(new, labels):
            return pixels, labels
        labels = new

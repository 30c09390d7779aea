"""The pixel-wise connected-component labelling that torchgmm used before it labelled row runs.

The algorithm of ``torchgmm.postprocess`` as of commit feb223e (``_label_foreground`` and
its callers; here the 3x3 window maximum is ``max_pool2d`` and the label image float64):
max-label hooking and pointer jumping over the foreground pixels, with a dense 3x3 window
maximum each iteration. Slower, and over a different graph (pixels and their 8 neighbours,
not runs and their first touching runs), so the run labelling must agree with it exactly:
same partition, same labels, same kept pixels.

Shapes: B masks, H, W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reference_component_labels", "reference_remove_small_blobs"]


def _window_max3(x: Tensor) -> Tensor:
    """Maximum over each 3x3 window of ``(B, H, W)`` values >= 0; outside counts as 0."""
    return F.max_pool2d(x[:, None], 3, stride=1, padding=1)[:, 0] if x.numel() else x


def _label_foreground(mask: Tensor, jumps: int = 4) -> tuple[Tensor, Tensor]:
    """``pixels``: flat indices of the foreground pixels; ``labels``: for each, the position
    (in ``pixels``) of the last pixel of its component."""
    b, _, h, w = mask.shape
    pixels = mask.reshape(-1).nonzero().squeeze(1)
    n = pixels.numel()
    labels = torch.arange(n, device=mask.device)
    if n == 0:
        return pixels, labels
    image = torch.zeros(b * h * w, dtype=torch.float64, device=mask.device)  # label + 1, 0 = background
    while True:
        image[pixels] = (labels + 1).double()
        neighbour = _window_max3(image.view(b, h, w)).reshape(-1)[pixels].long() - 1
        new = torch.maximum(labels.scatter_reduce(0, labels, neighbour, reduce="amax"), neighbour)
        for _ in range(jumps):
            new = new[new]
        if torch.equal(new, labels):
            return pixels, labels
        labels = new


def reference_component_labels(mask: Tensor) -> Tensor:
    """``(B, 1, H, W)`` int64: each 8-connected component named by its largest flat pixel index
    in its mask + 1; background 0."""
    b, _, h, w = mask.shape
    pixels, labels = _label_foreground(mask)
    out = torch.zeros(mask.numel(), dtype=torch.int64, device=mask.device)
    out[pixels] = pixels[labels] % (h * w) + 1
    return out.view(b, 1, h, w)


def reference_remove_small_blobs(mask: Tensor, min_area: int) -> Tensor:
    """``(B, 1, H, W)`` bool: ``mask`` without its components of fewer than ``min_area`` pixels."""
    pixels, labels = _label_foreground(mask)
    area = torch.bincount(labels, minlength=pixels.numel())
    keep = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    keep[pixels] = area[labels] >= min_area
    return keep.view(mask.shape)

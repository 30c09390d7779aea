"""Adaptive per-pixel Gaussian-mixture background model (Stauffer and Grimson, CVPR 1999).

Every pixel of a static-camera video is a mixture of K Gaussians that is updated online
with each frame; a pixel is foreground when it matches none of the components that make up
the background. The functional core is two pure functions of tensors,
:func:`mog_update` (learn from a frame, return the mask and the new state) and
:func:`mog_foreground` (classify a frame against a frozen state), plus the rate schedule
:func:`mog_learning_rate`. :class:`BackgroundSubtractorMOG` is the ``nn.Module`` that holds
the state in buffers and runs the update fused by ``torch.compile``.

State layout, batch first so a stream can be sliced out (B streams, K components,
C channels):

=================  =============================================
``weight``         ``(B, K, H, W)``
``mean``           ``(B, K, C, H, W)``
``variance``       ``(B, K, H, W)`` spherical, ``(B, K, C, H, W)`` diag
=================  =============================================

Components are kept in rank order (index 0 is the most probable background component,
rank ``w / sigma``). The update for one frame, per pixel, with rate ``a`` (equations of
the paper, section 3.1-3.2; variable names as in the code)::

    d2_k      = |x - mu_k|^2                          squared distance, summed over C
    match_k   = w_k > 0  and  d2_k < lambda^2 C sigma2_k     (sigma2_k: per-channel variance)
    hit       = first k in rank order that matches
    w_k      <- (1 - a) w_k + a [k = hit]                               (paper eq. 5)
    mu_hit   <- mu_hit + rho (x - mu_hit)                               (eq. 6)
    s2_hit   <- max(s2_hit + rho (d2_hit / C - s2_hit), min_var)        (eq. 7, old mean)
    no hit:  component K-1 <- (init_weight, x, init_var)
    w        <- w / sum(w); sort by w / sigma, descending (stable)
    background = the first components whose cumulative weight exceeds T

``rho`` is ``a * N(x | mu, sigma)`` (``"paper"``), ``a / w_hit`` (``"inverse_weight"``: a
component's rate follows its share of the data, as in many practical implementations) or
``a`` (``"constant"``, the default, OpenCV contrib ``bgsegm`` MOG's choice: it scored higher
on CDnet, where a young component's fast ``a / w`` lets a slow object into its mean). The
match test scales the threshold by C, as OpenCV's MOG does: for RGB a plain 2.5-sigma test
on the 3-D distance would call about 10% of a static pixel's frames foreground, this one
about 0.03%.

Why a pure function and a buffer swap: the update reads and writes the whole state once per
frame (about 124 bytes per pixel for RGB with K=3 in float32), and on a CPU that traffic
costs about as much as the arithmetic (``scripts/bench_roofline.py``, 640x480, 2 threads:
traffic alone 84% of the step's time, arithmetic alone 67%); on a GPU it dominates. Written
with K and C unrolled and only elementwise ops, inductor fuses it into one loop (OpenMP C++
on CPU, one Triton kernel on CUDA) that reads the state once and writes the new state once;
the module then rebinds its buffers to the new tensors. Writing in place into views of the
state inside the compiled function measured about 4x slower on CPU, because the aliasing
forces extra passes. On CPU, call :func:`retain_freed_memory` once in an application (the
``torchgmm`` command does): otherwise glibc returns each freed state to the kernel and the
next frame pays for page faults.
"""

from __future__ import annotations

import logging
import math
import types
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from torchgmm._streams import StreamBatchMixin
from torchgmm._checks import (
    ShapeError,
    add_note,
    check_choice,
    check_finite,
    check_positive_int,
    check_real,
    check_tensor,
)
from torchgmm._shadows import shadow_planes

__all__ = [
    "RhoMode",
    "BackgroundCovariance",
    "mog_learning_rate",
    "mog_update",
    "mog_foreground",
    "mog_shadow",
    "component_major",
    "BackgroundSubtractorMOG",
    "retain_freed_memory",
]

RhoMode = Literal["inverse_weight", "paper", "constant"]
BackgroundCovariance = Literal["spherical", "diag"]
_RHO_MODES = ("inverse_weight", "paper", "constant")
_COVARIANCE_TYPES = ("spherical", "diag")


# ----------------------------------------------------------------------------------------
# Functional core
# ----------------------------------------------------------------------------------------
def mog_learning_rate(frames_seen: Tensor, learning_rate: Tensor | float, warmup: bool) -> Tensor:
    """The rate ``a`` used for the next frame, computed on the device without a sync.

    The first frame (``frames_seen == 0``) always gets ``a = 1``: it initialises the model.
    With ``warmup`` the rate is ``max(learning_rate, 1 / t)`` on frame ``t = frames_seen + 1``,
    the sufficient-statistics schedule of KaewTraKulPong and Bowden (2001): the first ``1 /
    learning_rate`` frames are averaged with equal weight, so the model is usable after a
    few frames instead of hundreds.

    Args:
        frames_seen: ``()`` int64 tensor, frames the state has learned from.
        learning_rate: ``alpha``, a float or a ``()`` floating tensor (its dtype is the
            result's; a float gives float64).
        warmup: use the schedule above instead of a constant rate.

    Returns:
        ``()`` tensor on ``frames_seen``'s device.

    Example:
        >>> mog_learning_rate(torch.tensor(3), 0.01, warmup=True)
        tensor(0.2500, dtype=torch.float64)
        >>> mog_learning_rate(torch.tensor(0), 0.01, warmup=False)
        tensor(1., dtype=torch.float64)
    """
    rate = (
        torch.as_tensor(learning_rate, dtype=torch.float64, device=frames_seen.device)
        if not isinstance(learning_rate, Tensor)
        else learning_rate
    )
    if warmup:
        t = (frames_seen + 1).to(rate.dtype)
        rate = torch.maximum(rate, 1.0 / t)
    return torch.where(frames_seen == 0, torch.ones_like(rate), rate)


def _unpack(frame: Tensor, weight: Tensor, mean: Tensor, variance: Tensor):  # noqa: ANN202
    """Split the state into per-component, per-channel ``(B, H, W)`` planes (K and C unrolled)."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    n_components, n_channels = weight.shape[1], frame.shape[1]
    x = frame.to(compute)
    if frame.is_floating_point():
        x = x * 255.0  # float frames are on torchvision's [0, 1] scale
    xs = [x[:, c] for c in range(n_channels)]
    ws = [weight[:, k].to(compute) for k in range(n_components)]
    mus = [[mean[:, k, c].to(compute) for c in range(n_channels)] for k in range(n_components)]
    if variance.ndim == 4:  # spherical: one variance per component
        vs = [[variance[:, k].to(compute)] for k in range(n_components)]
    else:
        vs = [[variance[:, k, c].to(compute) for c in range(n_channels)] for k in range(n_components)]
    return xs, ws, mus, vs


def _per_channel_variance(v: list[Tensor]) -> Tensor:
    """sigma2 of a component: its variance (spherical) or the mean of its channel variances."""
    if len(v) == 1:
        return v[0]
    total = v[0]
    for vc in v[1:]:
        total = total + vc
    return total / len(v)


def _squared_distance(xs: list[Tensor], mu: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """``|x - mu|^2`` summed in channel order, and the per-channel differences."""
    diffs = [xc - mc for xc, mc in zip(xs, mu)]
    d2 = diffs[0] * diffs[0]
    for d in diffs[1:]:
        d2 = d2 + d * d
    return d2, diffs


def _match(xs, ws, mus, vs, match_sigma: float):  # noqa: ANN001, ANN202
    """First matching component in rank order: ``(hit (K of (B, H, W) bool), d2, diffs)``."""
    threshold = match_sigma * match_sigma * len(xs)  # lambda^2 C: OpenCV MOG's scaling of the test
    hits, d2s, diffs = [], [], []
    matched_before = None
    for w, mu, v in zip(ws, mus, vs):
        d2, diff = _squared_distance(xs, mu)
        matched = (w > 0) & (d2 < threshold * _per_channel_variance(v))
        hit = matched if matched_before is None else matched & ~matched_before
        matched_before = matched if matched_before is None else matched_before | matched
        hits.append(hit)
        d2s.append(d2)
        diffs.append(diff)
    return hits, d2s, diffs, matched_before


def _exclusive_cumsum(ws: list[Tensor]) -> list[Tensor]:
    """``[0, w0, w0 + w1, ...]``, summed in index order."""
    cums = [torch.zeros_like(ws[0])]
    for w in ws[:-1]:
        cums.append(cums[-1] + w)
    return cums


def _gaussian_density(d2: Tensor, diff: list[Tensor], v: list[Tensor], n_channels: int) -> Tensor:
    """``N(x | mu, sigma)`` for the ``"paper"`` rate (spherical or diagonal covariance)."""
    if len(v) == 1:
        return (2 * math.pi * v[0]).pow(-n_channels / 2) * torch.exp(-d2 / (2 * v[0]))
    density = None
    for dc, vc in zip(diff, v):
        term = (2 * math.pi * vc).pow(-0.5) * torch.exp(-(dc * dc) / (2 * vc))
        density = term if density is None else density * term
    return density


def _check_state(frame: Tensor, weight: Tensor, mean: Tensor, variance: Tensor) -> None:
    check_tensor(frame, "frame")
    if frame.ndim != 4:
        raise ShapeError(f"`frame` must have shape (B, C, H, W), got shape {tuple(frame.shape)}.")
    b, c, h, w = frame.shape
    if weight.ndim != 4 or weight.shape[0] != b or weight.shape[2:] != (h, w):
        raise ShapeError(
            f"`weight` must have shape (B, K, H, W) = ({b}, K, {h}, {w}) to match the frame, got {tuple(weight.shape)}."
        )
    k = weight.shape[1]
    if mean.shape != (b, k, c, h, w):
        raise ShapeError(f"`mean` must have shape (B, K, C, H, W) = {(b, k, c, h, w)}, got {tuple(mean.shape)}.")
    if variance.shape not in ((b, k, h, w), (b, k, c, h, w)):
        raise ShapeError(
            f"`variance` must have shape (B, K, H, W) = {(b, k, h, w)} (spherical) or "
            f"(B, K, C, H, W) = {(b, k, c, h, w)} (diag), got {tuple(variance.shape)}."
        )


def mog_update(
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    learning_rate: Tensor | float,
    *,
    background_ratio: float = 0.65,
    match_sigma: float = 2.5,
    init_var: float = 100.0,
    min_var: float = 100.0,
    init_weight: float = 0.05,
    rho: RhoMode = "constant",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Learn one frame: return the foreground mask and the new state (inputs are not modified).

    One Stauffer-Grimson step per pixel (the module docstring has the equations). K and C
    are unrolled and every op is elementwise, so ``torch.compile`` fuses the whole step into
    one pass over the state. The covariance type is read from ``variance``'s shape.

    Args:
        frame: ``(B, C, H, W)`` ``uint8`` (0..255) or floating on the [0, 1] scale.
        weight: ``(B, K, H, W)`` component weights, in rank order (all zero = fresh state).
        mean: ``(B, K, C, H, W)`` component means on the 0..255 scale.
        variance: ``(B, K, H, W)`` (spherical) or ``(B, K, C, H, W)`` (diag) per-channel
            variances.
        learning_rate: the rate ``a`` of this frame (see :func:`mog_learning_rate`), a float
            or a ``()`` tensor; must be > 0.
        background_ratio: ``T``, the share of the data the background accounts for.
        match_sigma: ``lambda``, the match threshold in standard deviations.
        init_var: variance of a component created for an unmatched pixel.
        min_var: variance floor.
        init_weight: weight of a new component (before renormalisation).
        rho: ``"constant"`` (``a``, default), ``"inverse_weight"`` (``a / w``) or ``"paper"``
            (``a N(x | mu, sigma)``).

    The float settings may also be ``()`` tensors (the module passes them so, so that
    changing a value does not recompile the fused step).

    Returns:
        ``(mask, weight, mean, variance)``: ``mask`` ``(B, 1, H, W)`` bool (True =
        foreground) and the new state, same shapes and dtypes as the inputs, computed in
        float32 (float64 for a float64 state), laid out component-major (see
        :func:`component_major`; on the CPU pass B > 1 frames through it too, for one
        fused loop).

    Example:
        >>> frame = torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)
        >>> w, m, v = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 1, 2, 2), torch.full((1, 3, 2, 2), 900.0)
        >>> mask, w, m, v = mog_update(frame, w, m, v, 1.0)  # the first frame initialises
        >>> mask.any().item(), w[0, :, 0, 0].tolist(), m[0, 0, 0, 0, 0].item()
        (False, [1.0, 0.0, 0.0], 100.0)
        >>> mask, *_ = mog_update(frame + 100, w, m, v, 0.01)  # 200 is 10 sigma (init_var 100) away
        >>> mask.all().item()
        True
    """
    _check_state(frame, weight, mean, variance)
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    # A tensor rate: torch computes `float / tensor` as float * reciprocal, 1 ulp off a / w.
    a = (
        learning_rate
        if isinstance(learning_rate, Tensor)
        else torch.tensor(learning_rate, dtype=xs[0].dtype, device=frame.device)
    )
    mask, ws, mus, vs = _update_planes(
        xs,
        ws,
        mus,
        vs,
        a,
        background_ratio=background_ratio,
        match_sigma=match_sigma,
        init_var=init_var,
        min_var=min_var,
        init_weight=init_weight,
        rho=rho,
    )
    return (mask[:, None], *_pack(ws, mus, vs, weight, mean, variance))


def _pack(
    ws: list[Tensor], mus: list[list[Tensor]], vs: list[list[Tensor]], weight: Tensor, mean: Tensor, variance: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-component planes -> ``(weight, mean, variance)`` shaped and typed like the old state."""
    # One flat stack per buffer: a nested stack would make inductor write (B, C, H, W)
    # temporaries and copy them, an extra pass over the means. Stacked component-major
    # (see component_major).
    state_dtype = weight.dtype
    new_weight = _from_planes(ws, weight.shape, state_dtype)
    new_mean = _from_planes([m for mu in mus for m in mu], mean.shape, state_dtype)
    new_variance = _from_planes([u for v in vs for u in v], variance.shape, state_dtype)
    return new_weight, new_mean, new_variance


def _update_planes(xs, ws, mus, vs, a, *, background_ratio, match_sigma, init_var, min_var, init_weight, rho):  # noqa: ANN001, ANN202
    """One step on unpacked planes (see :func:`_unpack`): ``(mask (B, H, W), ws, mus, vs)``.

    Planes in, planes out, so that several frames can be chained without stacking the state
    in between (a stacked state is a buffer inductor writes out; chained planes fuse).
    """
    n_components, n_channels = len(ws), len(xs)

    # 1. Match in rank order.
    hits, d2s, diffs, any_hit = _match(xs, ws, mus, vs, match_sigma)

    # 2. Weights (eq. 5): w <- (1 - a) w + a M.
    ws = [(1 - a) * w + a * hit.to(w.dtype) for w, hit in zip(ws, hits)]

    # 3. The matched component's mean and variance (eqs. 6-7), with the old mean's diff.
    for k in range(n_components):
        if rho == "constant":
            r = a  # () tensor, broadcast in the updates below
        elif rho == "inverse_weight":
            r = a / ws[k]
        else:
            r = a * _gaussian_density(d2s[k], diffs[k], vs[k], n_channels)
        r = torch.clamp(r, max=1.0)
        mus[k] = [torch.where(hits[k], m + r * d, m) for m, d in zip(mus[k], diffs[k])]
        if len(vs[k]) == 1:
            updated = [torch.clamp(vs[k][0] + r * (d2s[k] / n_channels - vs[k][0]), min=min_var)]
        else:
            updated = [torch.clamp(v + r * (d * d - v), min=min_var) for v, d in zip(vs[k], diffs[k])]
        vs[k] = [torch.where(hits[k], u, v) for u, v in zip(updated, vs[k])]

    # 4. No match: the least probable component (last in rank order) becomes the pixel.
    no_hit = ~any_hit
    last = n_components - 1
    ws[last] = torch.where(no_hit, init_weight, ws[last])
    mus[last] = [torch.where(no_hit, xc, m) for xc, m in zip(xs, mus[last])]
    vs[last] = [torch.where(no_hit, init_var, v) for v in vs[last]]
    hits[last] = hits[last] | no_hit  # the new component is the one this pixel belongs to

    # 5. Renormalise.
    total = ws[0]
    for w in ws[1:]:
        total = total + w
    ws = [w / total for w in ws]

    # 6. Stable sort by w / sigma, descending: odd-even transposition network, K rounds of
    #    adjacent compare-swaps (strict compare: equal keys never pass each other).
    keys = [w / torch.sqrt(_per_channel_variance(v)) for w, v in zip(ws, vs)]
    fields = [keys, ws, hits, mus, vs]
    for round_ in range(n_components):
        for i in range(round_ % 2, n_components - 1, 2):
            swap = keys[i + 1] > keys[i]
            for field in fields:
                field[i], field[i + 1] = _swap_where(swap, field[i], field[i + 1])

    # 7. Background = components whose exclusive cumulative weight is <= T.
    cums = _exclusive_cumsum(ws)
    background = None
    for hit, cum in zip(hits, cums):
        term = hit & (cum <= background_ratio)
        background = term if background is None else background | term
    mask = ~background
    return mask, ws, mus, vs


def _from_planes(planes: list[Tensor], shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """K (or K*C) ``(B, H, W)`` planes -> one state tensor of ``shape``, component-major."""
    b, *middle = shape[:-2]
    stacked = torch.stack(planes).to(dtype)  # (K*C, B, H, W), contiguous
    return stacked.view(*middle, b, *shape[-2:]).movedim(len(middle), 0)


def component_major(state: Tensor) -> Tensor:
    """``state`` ``(B, K, ..., H, W)`` laid out in memory as ``(K, ..., B, H, W)`` (same values).

    The layout the update returns and the module keeps. For B > 1 each per-component
    (per-channel) plane ``state[:, k, c]`` is then one contiguous run of B*H*W values, as
    every temporary of the update is, so ``torch.compile`` fuses the step into one loop over
    B*H*W. Batch-major state (``state[:, k]`` strided by K*H*W) gives it loops over (B, H*W)
    and B*H*W that it cannot fuse: three passes with temporaries. Measured in one run
    (640x480 RGB, K = 3, 2 CPU threads): B = 2 streams 86 -> 242 frames/s, B = 4 66 -> 232.
    On CUDA (H200, 3840x2160) the layout is neutral: 2,509 vs 2,532 frames/s at B = 4.
    For B = 1 both layouts are the same memory, but not the same strides: the result always
    has the strides the update returns, since ``torch.compile`` guards on strides, even of
    size-1 dimensions (a fresh B = 1 state with batch-major strides recompiled the step on
    the second frame: 4.8 s more per process with a cold cache, and dynamic strides after).

    Args:
        state: ``(B, K, H, W)`` or ``(B, K, C, H, W)`` (also frames ``(B, C, H, W)``), any dtype.

    Returns:
        The same values: ``state`` itself when already so laid out, a view when only the
        strides of size-1 dimensions differ, else a copy.

    Example:
        >>> w = component_major(torch.zeros(4, 3, 2, 2))  # (B, K, H, W)
        >>> w.shape, w.stride()
        (torch.Size([4, 3, 2, 2]), (4, 16, 2, 1))
        >>> component_major(torch.zeros(1, 3, 2, 2)).stride()   # B = 1: same memory, same strides
        (4, 4, 2, 1)
    """
    strides = _component_major_strides(state.shape)
    if state.stride() == strides:
        return state
    if _is_component_major(state):  # the same memory; only strides of size-1 dimensions differ
        return state.as_strided(state.shape, strides)
    return _empty_component_major(state.shape, state).copy_(state)


def _component_major_strides(shape: torch.Size) -> tuple[int, ...]:
    """Strides of a ``(B, K, ..., H, W)`` tensor stored as ``(K, ..., B, H, W)``: contiguous
    strides of that order, put back in the original dimension order."""
    ndim = len(shape)
    order = (*range(1, ndim - 2), 0, ndim - 2, ndim - 1)  # B just before H, W
    strides = [0] * ndim
    step = 1
    for dim in reversed(order):
        strides[dim] = step
        step *= shape[dim]
    return tuple(strides)


def _empty_component_major(shape: torch.Size, like: Tensor) -> Tensor:
    """A new (not a view) uninitialised tensor of ``shape`` with component-major strides."""
    return torch.empty_strided(shape, _component_major_strides(shape), dtype=like.dtype, device=like.device)


def _is_component_major(state: Tensor) -> bool:
    return state.movedim(0, state.ndim - 3).is_contiguous()


def _swap_where(swap: Tensor, first, second):  # noqa: ANN001, ANN202
    """Exchange two components' values (a tensor or a list of per-channel tensors) where ``swap``."""
    if isinstance(first, list):
        pairs = [_swap_where(swap, f, s) for f, s in zip(first, second)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return torch.where(swap, second, first), torch.where(swap, first, second)


def mog_foreground(
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    *,
    background_ratio: float = 0.65,
    match_sigma: float = 2.5,
) -> Tensor:
    """Classify a frame against a frozen state (learning rate 0): the foreground mask.

    A pixel is foreground when it matches no component, or its first match in rank order
    lies beyond the background (exclusive cumulative weight > ``background_ratio``).

    Args:
        frame: ``(B, C, H, W)`` ``uint8`` or floating on the [0, 1] scale.
        weight, mean, variance: the state, as in :func:`mog_update`.
        background_ratio: ``T``.
        match_sigma: ``lambda``.

    Returns:
        ``(B, 1, H, W)`` bool, True = foreground.

    Example:
        >>> w = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
        >>> m = torch.full((1, 2, 1, 1, 1), 100.0)
        >>> v = torch.full((1, 2, 1, 1), 16.0)
        >>> frames = torch.tensor([105, 111], dtype=torch.uint8).view(2, 1, 1, 1)
        >>> [mog_foreground(f[None], w, m, v).item() for f in frames]  # threshold 2.5 * 4 = 10
        [False, True]
    """
    _check_state(frame, weight, mean, variance)
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    hits, _, _, _ = _match(xs, ws, mus, vs, match_sigma)
    background = None
    for hit, cum in zip(hits, _exclusive_cumsum(ws)):
        term = hit & (cum <= background_ratio)
        background = term if background is None else background | term
    return ~background[:, None]


def _shadow_colour(xs, ws, mus, vs, background_ratio, match_sigma, shadow_threshold):  # noqa: ANN001, ANN202
    """:func:`mog_shadow` on unpacked planes (see :func:`_unpack`): ``(B, H, W)`` bool.

    The shared test (``torchgmm._shadows``) with this model's inputs: its sigma2 (the
    variance, or the mean of the channel variances: the one the match test uses), its match
    bound ``lambda^2 C`` for the distortion, and the components with ``w > 0`` (the only
    ones that can match).
    """
    threshold = match_sigma * match_sigma * len(xs)  # lambda^2 C, as in _match
    sigma2 = [[_per_channel_variance(v)] for v in vs]
    in_use = [w > 0 for w in ws]
    return shadow_planes(xs, ws, mus, sigma2, in_use, threshold, background_ratio, shadow_threshold)


def mog_shadow(
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    *,
    background_ratio: Tensor | float = 0.65,
    match_sigma: Tensor | float = 2.5,
    shadow_threshold: Tensor | float = 0.5,
) -> Tensor:
    """Where a frame is a shadow on the background: OpenCV's shadow test in this model's terms.

    A pixel is shadow-coloured when, for one of the background components (the ones
    :func:`mog_foreground` counts: ``w > 0`` and exclusive cumulative weight <= ``T``,
    visited in rank order), its brightness ratio ``a = x.mu / |mu|^2`` lies in
    ``[shadow_threshold, 1]`` (darker, by at most ``1 / tau``) and its chromaticity
    distortion passes the match test scaled by ``a^2``: ``|a mu - x|^2 < lambda^2 C sigma2
    a^2``, with the model's per-channel variance ``sigma2`` (the variance, or for
    ``diag`` the mean of the channel variances, as in the match test). This is
    :func:`~torchgmm.mog2.detect_shadow_gmm` (OpenCV's ``detectShadowGMM``) with
    ``var_threshold = lambda^2 C`` and the background set of this model; the maths is
    shared (``torchgmm._shadows``).

    This is only the colour test: :class:`BackgroundSubtractorMOG` labels a pixel shadow
    where it is foreground and this is True, on the state after the frame's update. For
    grey frames (C = 1) the distortion is 0, so every darker pixel in the ratio range is
    shadow-coloured.

    Args:
        frame: ``(B, C, H, W)`` ``uint8`` (0..255) or floating on the [0, 1] scale.
        weight, mean, variance: the state, as in :func:`mog_update` (spherical or diag).
        background_ratio: ``T``.
        match_sigma: ``lambda`` of the distortion test (the model's ``shadow_match_sigma``,
            by default its ``match_sigma``).
        shadow_threshold: ``tau`` in (0, 1].

    The float settings may also be ``()`` tensors.

    Returns:
        ``(B, 1, H, W)`` bool, True = shadow-coloured.

    Example:
        >>> w = torch.ones(1, 1, 1, 2)
        >>> mu = torch.full((1, 1, 3, 1, 2), 200.0)
        >>> var = torch.full((1, 1, 1, 2), 36.0)
        >>> frame = torch.tensor([[140, 140, 140], [140, 170, 140]], dtype=torch.uint8).T.reshape(1, 3, 1, 2)
        >>> mog_shadow(frame, w, mu, var)  # grey 140 on 200 is a shadow; a green cast is not
        tensor([[[[ True, False]]]])
    """
    _check_state(frame, weight, mean, variance)
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    compute, device = xs[0].dtype, frame.device
    settings = (
        torch.as_tensor(value, device=device).to(compute) for value in (background_ratio, match_sigma, shadow_threshold)
    )
    return _shadow_colour(xs, ws, mus, vs, *settings)[:, None]


def _mog_step(frame, weight, mean, variance, frames_seen, base_rate, warmup, settings, shadows):  # noqa: ANN001, ANN202
    """Rate schedule + update + frame count: the function the module compiles.

    ``shadows`` None: ``(mask, weight, mean, variance, frames_seen)``, the plain update, with
    the ``(B, 1, H, W)`` mask as ``uint8`` 0 / 1 (see below).
    ``shadows`` a dict of ``()`` tensors (``match_sigma``, ``shadow_threshold``, int32
    ``shadow_value``): ``(code, weight, mean, variance, frames_seen)`` with the shadow test
    fused into the same step and the labels as one ``(B, 1, H, W)`` int32 code per pixel:
    0 background, 255 foreground, ``shadow_value + 256`` shadow (MOG2's code, see
    ``torchgmm.mog2._mog2_step``: apply's mask is its low byte). One int32 output, not two
    bool masks: Inductor's C++ code stores bool vectors through a scratch buffer, which made
    two bool outputs 1.6x slower than one and one bool mask slower than the int32 code; the
    plain step's mask is uint8 for the same reason.

    The test runs on the NEW state, as OpenCV's MOG2 does, and for a reason of this model:
    the foreground decision (step 7) is taken on the new weights and rank order, so testing
    the same state makes the components tried for a shadow exactly the background set that
    just called the pixel foreground. A foreground pixel's own component (matched or new)
    is never in that set, and the background components' means and variances are those of
    the old state (only a hit moves them), so the test sees the background as it was, with
    the updated weights.
    """
    rate = mog_learning_rate(frames_seen, base_rate, warmup)
    if shadows is None:
        mask, weight, mean, variance = mog_update(frame, weight, mean, variance, rate, **settings)
        # uint8 0/1, which the module views as bool for free: Inductor's C++ code stores a
        # bool vector through a scratch buffer, a uint8 one directly
        return mask.to(torch.uint8), weight, mean, variance, frames_seen + 1
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    mask, ws, mus, vs = _update_planes(xs, ws, mus, vs, rate, **settings)
    shadow = mask & _shadow_colour(
        xs, ws, mus, vs, settings["background_ratio"], shadows["match_sigma"], shadows["shadow_threshold"]
    )
    code = torch.where(mask & ~shadow, 255, torch.where(shadow, shadows["shadow_value"] + 256, 0))  # int32
    return (code[:, None], *_pack(ws, mus, vs, weight, mean, variance), frames_seen + 1)


def _quiet_cuda_home_notice() -> None:
    """Keep torch's "No CUDA runtime is found, using CUDA_HOME=..." off a CPU compile.

    Inductor imports ``torch.utils.cpp_extension`` on its first CPU compile, which logs that
    notice at import on every machine with a CUDA build of torch and no GPU: it tells the
    user nothing about their run. Only raised to ERROR while nobody has set that logger's
    level, so a user who configured it keeps their choice.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


#: Inductor's options for the per-pixel steps, compiled just in time or ahead of time
INDUCTOR_OPTIONS = {"max_fusion_size": 4096}
#: compiled steps by (configuration, C++ wrapper), shared by all modules
_compiled_steps: dict[tuple, object] = {}
#: configurations whose C++-wrapper compile failed (they use the Python wrapper from then on)
_cpp_wrapper_failures: set[tuple] = set()


def _get_compiled_step(config: tuple, cpp_wrapper: bool = False):  # noqa: ANN202
    """The compiled step for one configuration (K, C, dtypes, device type, rho, ...).

    Dynamo keeps its compiled graphs on the function's code object and allows at most
    ``recompile_limit`` (8) of them per code object; one process running more configurations
    (K = 3 and 5, grey and RGB, float32 and float16, ...) through one compiled function hits
    the limit and fails. Each configuration therefore compiles its own copy of the code
    object, whose budget only shape changes use (the first change makes H and W dynamic).

    ``cpp_wrapper`` (CPU only) has Inductor emit the step's wrapper in C++. Its Python
    wrapper calls the fused C++ kernel with the GIL held, so a decoder thread's Python glue
    stalls for the whole step; the C++ wrapper releases it (torch >= 2.4, pytorch/pytorch
    #123897. 2 cores, 640x480 RGB K = 3: a PyAV decode thread ran at 100-240 frames/s
    beside the model, 1,900 with it; the step's own time and the compile time unchanged).
    """
    return compile_step(_mog_step, config, cpp_wrapper)


def compile_step(step_fn, config: tuple, cpp_wrapper: bool = False):  # noqa: ANN001, ANN201
    """``step_fn`` compiled for one configuration, cached in :data:`_compiled_steps`: the
    compile path of every per-pixel model (this one and :mod:`torchgmm.mog2`), for the
    reasons in :func:`_get_compiled_step`."""
    key = (step_fn.__qualname__, config, cpp_wrapper)
    step = _compiled_steps.get(key)
    if step is None:
        _quiet_cuda_home_notice()
        fresh = types.FunctionType(step_fn.__code__.replace(), step_fn.__globals__, step_fn.__name__)
        # Inductor caps a fused kernel at 64 nodes by default; K = 5 exceeds it and was split
        # into 4 loops with (B, H, W) temporaries, 7-10x slower than K = 3. One loop: 1.6x.
        options = {**INDUCTOR_OPTIONS, "cpp_wrapper": cpp_wrapper}
        step = _compiled_steps[key] = torch.compile(fresh, fullgraph=True, options=options)
    return step


def check_compile_mode(compile: object) -> None:  # noqa: A002 - the models' argument
    """The models' ``compile`` argument: None, True, False or ``"aot"``."""
    if compile not in (None, True, False, "aot") or (isinstance(compile, int) and not isinstance(compile, bool)):
        raise ValueError(f"`compile` must be None, True, False or 'aot', got {compile!r}.")


# ----------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------
class BackgroundSubtractorMOG(StreamBatchMixin, nn.Module):
    """Stauffer-Grimson adaptive mixture background model for B video streams at once.

    Named after OpenCV's ``BackgroundSubtractorMOG``: call it (or :meth:`apply`) on every
    frame to learn from it and get the foreground mask. The state lives in buffers, shaped by
    the first frame: ``.to(device)``, ``state_dict()`` / ``load_state_dict()`` (also into a
    fresh module) continue a video exactly where it stopped.

    The batch dimension B counts independent **streams**, one state each: the frames of one
    video go in one at a time (``frames[t:t + 1]``) or as a clip through :meth:`process`;
    a ``(T, C, H, W)`` clip passed to ``forward`` would start T separate streams.

    Learning is online and is the model's job at inference time too, so ``train()`` /
    ``eval()`` and ``torch.inference_mode()`` do not change it (unlike BatchNorm's running
    statistics): to use a learned background without updating it, pass
    ``learning_rate=0`` to ``forward`` (see there).

    Args:
        n_components: K Gaussians per pixel.
        learning_rate: ``alpha``; about ``1 / alpha`` frames of memory. The default 0.001
            (the CDnet 2014 Stauffer-Grimson entry's rate) keeps an object that stops, or a
            person who sits still, in the foreground for hundreds of frames.
        background_ratio: ``T``: the background is the first components (in ``w / sigma``
            rank order) whose cumulative weight exceeds ``T``. Above ``1 - init_weight / (1 +
            init_weight)`` (0.952 by default) even the component just created for an
            unmatched pixel is inside it while learning, so new objects read as background
            (as in OpenCV bgsegm); inference at ``learning_rate=0`` still calls them foreground.
            The default 0.65 lets a second mode into the background once the first holds
            no more than 65% of the weight (a pixel that alternates 60 / 40 between two
            values is background); a higher ``T`` absorbs still objects sooner.
        match_sigma: ``lambda``: a pixel matches a component when ``|x - mu|^2 < lambda^2 C
            sigma^2``.
        init_var: variance of a new component (pixel units on the 0..255 scale); default
            sigma 10, wide next to sensor noise yet narrow enough that a passing object does
            not fall inside it.
        min_var: variance floor; default sigma 10, as ``init_var``: it keeps a perfectly
            static pixel from matching nothing and JPEG artefacts, sensor noise and small
            illumination flicker from reading as motion (the floor that mattered most on
            CDnet: docs "Accuracy on CDnet"). Lower it for clean, low-contrast footage.
        init_weight: weight of a new component, before renormalisation.
        rho: the mean/variance rate of the matched component: ``"constant"`` (``alpha``,
            OpenCV contrib ``bgsegm`` MOG; default), ``"inverse_weight"`` (``alpha / w``,
            which follows a young component faster) or ``"paper"`` (``alpha N(x | mu,
            sigma)``, which is tiny for wide components and so adapts slowly).
        covariance_type: ``"spherical"`` (one variance per component, the paper) or
            ``"diag"`` (one per channel, OpenCV's MOG).
        warmup: rate ``max(alpha, 1/t)`` on frame ``t`` (KaewTraKulPong and Bowden), so a model
            is usable after a few frames.
        detect_shadows: label shadows (OpenCV MOG2's test, :func:`mog_shadow`): a foreground
            pixel that is a darker copy, of the same chromaticity, of a background component
            is a shadow, and then not foreground. Off by default: grey and dark objects on
            grey ground pass the test too, and on each CDnet baseline sequence tried it lowered
            the F-measure (on highway it labelled grey cars shadow and few of the hard
            shadows, which are darker than ``1 / tau``; the guide's "Shadows" has the
            numbers). The learned state is the same either way.
        shadow_threshold: ``tau`` in (0, 1]: a shadow is at most ``1 / tau`` times darker than
            the background (OpenCV's default 0.5).
        shadow_value: the value of shadow pixels in :meth:`apply`'s mask (0..255; OpenCV 127).
        shadow_match_sigma: ``lambda`` of the shadow's chromaticity-distortion test
            ``|a mu - x|^2 < lambda^2 C sigma2 a^2``; None (default) uses ``match_sigma``.
        state_dtype: dtype of the state buffers. ``float32`` (default); ``float64`` for exact
            comparisons; ``float16``/``bfloat16`` halve the memory traffic but round small
            mean updates away: with ``float16`` a mean near 200 moves in steps of 1/8 grey
            level, so an update ``rho (x - mu)`` smaller than 1/16 is lost and the means
            follow slow illumination drift only coarsely (the masks of a synthetic noisy
            scene agree with float32 on >= 99% of pixels; ``tests/test_background.py``).
            The arithmetic is float32 in every case.
        compile: how the update is fused into one kernel. ``"aot"``: the kernel compiled
            ahead of time by AOTInductor, one package per configuration and thread count
            (every frame size) kept in Inductor's cache directory, which loads in
            milliseconds without Dynamo or Inductor; a missing package is built by a
            background process while the eager step runs (the same masks), so the first
            frame comes at once (:mod:`torchgmm._aot`; CPU only). ``True``: ``torch.compile``,
            raising on failure. ``None`` (default): ``"aot"`` on the CPU and ``torch.compile``
            on CUDA, each falling back (to ``torch.compile``, then to eager) with a warning
            if compiling fails. ``False``: eagerly (about 10x slower per frame on CPU).

    Shape:
        - frames: ``(B, C, H, W)``, C = 1 or 3, ``uint8`` (0..255) or floating in [0, 1].
        - output: ``(B, 1, H, W)`` bool, True = foreground (shadows excluded); with
          ``return_shadows``, also the ``(B, 1, H, W)`` bool shadow mask. :meth:`apply`:
          ``(B, 1, H, W)`` ``uint8``, 0 / ``shadow_value`` / 255.

    Buffers (empty until the first frame):
        ``weight`` ``(B, K, H, W)``, ``mean`` ``(B, K, C, H, W)``, ``variance``
        ``(B, K, H, W)`` or ``(B, K, C, H, W)``, ``frames_seen`` ``()`` int64. The shadow
        settings are not state: they change no buffer, so a state learned with shadows off
        loads into a model with them on (and the other way round).

    Example:
        >>> model = BackgroundSubtractorMOG(n_components=3, learning_rate=0.01, compile=False)
        >>> frames = torch.full((20, 1, 8, 8), 90, dtype=torch.uint8)
        >>> frames[15:, :, 2:5, 2:5] = 200  # an object enters
        >>> masks = model.process(frames)
        >>> masks.shape, masks[:15].any().item(), masks[15, 0, 2:5, 2:5].all().item()
        (torch.Size([20, 1, 8, 8]), False, True)
        >>> model.background_image()[0, 0, 0, 0].item()
        90

    Shadows: a darker region of the same colour reads as shadow, not foreground.

        >>> model = BackgroundSubtractorMOG(detect_shadows=True, compile=False)
        >>> frames = torch.full((20, 3, 8, 8), 150, dtype=torch.uint8)
        >>> frames[18:, :, 2:5, 2:5] = 250  # an object enters
        >>> frames[18:, :, 5:, 2:5] = 100  # and casts a shadow below it
        >>> _ = model.process(frames[:19])
        >>> foreground, shadow = model(frames[19:], return_shadows=True)
        >>> foreground[0, 0, :, 3].tolist()  # the object, not its shadow
        [False, False, True, True, True, False, False, False]
        >>> shadow[0, 0, :, 3].tolist()
        [False, False, False, False, False, True, True, True]
        >>> model.apply(frames[19:])[0, 0, ::3, 3].tolist()  # OpenCV's mask: 0, 255 object, 127 shadow
        [0, 255, 127]
    """

    weight: Tensor
    mean: Tensor
    variance: Tensor
    frames_seen: Tensor

    def __init__(
        self,
        n_components: int = 3,
        learning_rate: float = 0.001,
        background_ratio: float = 0.65,
        match_sigma: float = 2.5,
        init_var: float = 100.0,
        min_var: float = 100.0,
        init_weight: float = 0.05,
        rho: RhoMode = "constant",
        covariance_type: BackgroundCovariance = "spherical",
        warmup: bool = True,
        state_dtype: torch.dtype = torch.float32,
        compile: bool | Literal["aot"] | None = None,  # noqa: A002 - the flag's natural name
        *,
        detect_shadows: bool = False,
        shadow_threshold: float = 0.5,
        shadow_value: int = 127,
        shadow_match_sigma: float | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(n_components, "n_components")
        _check_rate(learning_rate, "learning_rate")
        check_real(background_ratio, "background_ratio", minimum=0, maximum=1, exclusive_minimum=True)
        check_real(match_sigma, "match_sigma", minimum=0, exclusive_minimum=True)
        check_real(min_var, "min_var", minimum=0, exclusive_minimum=True)
        check_real(init_var, "init_var", minimum=min_var)
        check_real(init_weight, "init_weight", minimum=0, maximum=1, exclusive_minimum=True)
        check_choice(rho, "rho", _RHO_MODES)
        check_choice(covariance_type, "covariance_type", _COVARIANCE_TYPES)
        if not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise TypeError(f"`state_dtype` must be a floating torch.dtype, got {state_dtype!r}.")
        if not isinstance(detect_shadows, bool):
            raise TypeError(f"`detect_shadows` must be a bool, got {type(detect_shadows).__name__}.")
        check_real(shadow_threshold, "shadow_threshold", minimum=0, maximum=1, exclusive_minimum=True)
        check_positive_int(shadow_value, "shadow_value", minimum=0)
        if shadow_value > 255:
            raise ValueError(f"`shadow_value` must be a uint8 value (0..255), got {shadow_value}.")
        if shadow_match_sigma is not None:
            check_real(shadow_match_sigma, "shadow_match_sigma", minimum=0, exclusive_minimum=True)
        self.n_components = n_components
        self.learning_rate = float(learning_rate)
        self.background_ratio = float(background_ratio)
        self.match_sigma = float(match_sigma)
        self.init_var = float(init_var)
        self.min_var = float(min_var)
        self.init_weight = float(init_weight)
        self.rho = rho
        self.covariance_type = covariance_type
        self.warmup = bool(warmup)
        self.detect_shadows = detect_shadows
        self.shadow_threshold = float(shadow_threshold)
        self.shadow_value = shadow_value
        self.shadow_match_sigma = None if shadow_match_sigma is None else float(shadow_match_sigma)
        check_compile_mode(compile)
        self.use_compile = compile  # not `self.compile`: that is nn.Module.compile()
        self._compile_failed = False
        self._scalars: dict[tuple, Tensor] = {}
        self._settings_cache: tuple | None = None
        #: (B, K, H, W) component weights, rank order
        self.register_buffer("weight", torch.empty(0, dtype=state_dtype))
        #: (B, K, C, H, W) component means, 0..255 scale
        self.register_buffer("mean", torch.empty(0, dtype=state_dtype))
        #: (B, K, H, W) spherical or (B, K, C, H, W) diag per-channel variances
        self.register_buffer("variance", torch.empty(0, dtype=state_dtype))
        #: () frames the state has learned from
        self.register_buffer("frames_seen", torch.zeros((), dtype=torch.int64))

    # -- state ------------------------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        """Whether a first frame has shaped the state."""
        return self.weight.numel() > 0

    def reset(self) -> None:
        """Forget everything learned; the next frame initialises the model (keeps device, dtype)."""
        for name in ("weight", "mean", "variance"):
            setattr(self, name, self.weight.new_empty(0))
        self.frames_seen = torch.zeros_like(self.frames_seen)

    def _state_shapes(self, b: int, c: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        k = self.n_components
        variance = (b, k, h, w) if self.covariance_type == "spherical" else (b, k, c, h, w)
        return {"weight": (b, k, h, w), "mean": (b, k, c, h, w), "variance": variance}

    def _initialise(self, b: int, c: int, h: int, w: int) -> None:
        # Fresh state: no component has weight, so the first frame (rate 1) fills component 0.
        # component-major, as the update returns it (see component_major)
        shapes = self._state_shapes(b, c, h, w)
        # New tensors, not views: compiled steps guard on whether an input is a view, so
        # state that is a view on the first frame only would recompile the step on the second.
        self.weight = _empty_component_major(shapes["weight"], self.weight).zero_()
        self.mean = _empty_component_major(shapes["mean"], self.weight).zero_()
        self.variance = _empty_component_major(shapes["variance"], self.weight).fill_(self.init_var)
        self.frames_seen = torch.zeros_like(self.frames_seen)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # Lazily shaped buffers: take the incoming shapes (as a lazy module does), then copy.
        incoming = {n: state_dict.get(prefix + n) for n in ("weight", "mean", "variance")}
        if all(isinstance(t, Tensor) for t in incoming.values()) and incoming["weight"].ndim == 4:
            b, k, h, w = incoming["weight"].shape
            c = incoming["mean"].shape[2] if incoming["mean"].ndim == 5 else 0
            expected = self._state_shapes(b, c, h, w)
            if k != self.n_components or any(incoming[n].shape != expected[n] for n in expected):
                error_msgs.append(
                    f"state of shapes { {n: tuple(t.shape) for n, t in incoming.items()} } does not fit a "
                    f"BackgroundSubtractorMOG(n_components={self.n_components}, "
                    f"covariance_type={self.covariance_type!r}): expected {expected}."
                )
                return
            problem = _state_problem(incoming)
            if problem:
                error_msgs.append(f"cannot load this BackgroundSubtractorMOG state: {problem}.")
                return
            for name, shape in expected.items():  # copied into below, keeping the layout
                setattr(self, name, _empty_component_major(shape, self.weight))
        elif all(isinstance(t, Tensor) and t.numel() == 0 for t in incoming.values()):
            for name in incoming:
                setattr(self, name, self.weight.new_empty(0))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- frames -----------------------------------------------------------------------
    def _check_frames(self, frames: Tensor) -> None:
        check_tensor(frames, "frames")
        if frames.ndim != 4:
            raise ShapeError(
                f"`frames` must have shape (B, C, H, W); got shape {tuple(frames.shape)}. "
                "Add a batch dimension with frames[None] for one stream, or use process() for a clip."
            )
        if frames.shape[1] not in (1, 3):
            raise ShapeError(
                f"`frames` must have C = 1 (grey) or 3 (colour) channels, got C = {frames.shape[1]} "
                f"in shape {tuple(frames.shape)} (drop an alpha channel with frames[:, :3])."
            )
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise TypeError(f"`frames` must be uint8 or floating, got dtype {frames.dtype}.")
        if frames.device != self.weight.device:
            raise ValueError(
                f"`frames` are on {frames.device} but the model is on {self.weight.device}: "
                "move one of them (model.to(device) or frames.to(device))."
            )
        if frames.is_floating_point() and frames.numel():
            # one reduction and sync (as a NaN check alone would cost): a 0..255 float frame
            # would otherwise be scaled by 255 again and silently give wrong masks
            low, high = torch.stack(torch.aminmax(frames)).tolist()
            if not (math.isfinite(low) and math.isfinite(high)):
                check_finite(frames, "frames", "the model update")
            if low < 0 or high > 1:
                raise ValueError(
                    f"floating `frames` must be on torchvision's [0, 1] scale, got values in [{low:g}, {high:g}]: "
                    "divide 0..255 values by 255, or pass uint8 frames."
                )
        if self.is_initialized:
            b, c, h, w = frames.shape
            expected = (self.mean.shape[0], self.mean.shape[2], *self.mean.shape[3:])
            if (b, c, h, w) != expected:
                raise ShapeError(
                    f"`frames` of shape (B, C, H, W) = {(b, c, h, w)} do not fit the model's state, "
                    f"shaped by earlier frames as {expected}. B counts independent streams: feed the "
                    "frames of one video one at a time (frames[t:t + 1]) or as a clip with process(); "
                    "call reset() to start a new video."
                )

    def _scalar(self, value: float) -> Tensor:
        # Settings and rates go to the compiled step as 0-d tensors, so that a new value does
        # not recompile it; cached so that they cost no host-to-device copy per frame.
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        key = (value, self.weight.device, compute)
        rate = self._scalars.get(key)
        if rate is None:
            if len(self._scalars) > 64:  # e.g. a new explicit rate every frame
                self._scalars.clear()
            rate = self._scalars[key] = torch.tensor(value, dtype=compute, device=self.weight.device)
        return rate

    def _settings(self) -> dict:
        floats = dict(
            background_ratio=self.background_ratio,
            match_sigma=self.match_sigma,
            init_var=self.init_var,
            min_var=self.min_var,
            init_weight=self.init_weight,
        )
        # rebuilt only when a setting, the device or the dtype changed (saves ~15 us a frame)
        key = (tuple(floats.values()), self.rho, self.weight.device, self.weight.dtype)
        if self._settings_cache is None or self._settings_cache[0] != key:
            settings = {**{k: self._scalar(v) for k, v in floats.items()}, "rho": self.rho}
            self._settings_cache = (key, settings)
        return self._settings_cache[1]

    def _shadow_settings(self) -> dict[str, Tensor]:
        """The shadow test's settings as cached ``()`` tensors (a new value does not recompile)."""
        sigma = self.match_sigma if self.shadow_match_sigma is None else self.shadow_match_sigma
        key = ("i32", self.shadow_value, self.weight.device)
        value = self._scalars.get(key)
        if value is None:
            value = self._scalars[key] = torch.tensor(self.shadow_value, dtype=torch.int32, device=self.weight.device)
        return {
            "match_sigma": self._scalar(sigma),
            "shadow_threshold": self._scalar(self.shadow_threshold),
            "shadow_value": value,
        }

    @torch.no_grad()  # the state is updated online, never differentiated: no autograd graph
    def forward(
        self, frames: Tensor, learning_rate: float | None = None, return_shadows: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Learn from one frame per stream and return the foreground masks.

        Runs without autograd (frames with ``requires_grad`` are fine; no graph is kept).

        Args:
            frames: ``(B, C, H, W)`` ``uint8`` or floating in [0, 1].
            learning_rate: ``None`` uses the model's schedule; a value in [0, 1] overrides it
                for this frame; ``0`` classifies without learning (state unchanged). The
                first frame always initialises the model.
            return_shadows: also return the shadow mask (all False unless ``detect_shadows``).

        Returns:
            ``(B, 1, H, W)`` bool, True = foreground (with ``detect_shadows``, a shadow is not
            foreground); with ``return_shadows``, ``(foreground, shadow)``, both ``(B, 1, H,
            W)`` bool and disjoint.
        """
        labels = self._learn(frames, learning_rate)
        if not self.detect_shadows:
            return (labels, torch.zeros_like(labels)) if return_shadows else labels
        foreground = labels == 255
        return (foreground, labels >= 256) if return_shadows else foreground

    def _learn(self, frames: Tensor, learning_rate: float | None) -> Tensor:
        """Learn a frame: the ``(B, 1, H, W)`` bool foreground, or with ``detect_shadows`` the
        int32 code of :func:`_mog_step` (0, 255, ``shadow_value + 256``)."""
        self._check_frames(frames)
        if learning_rate is not None:
            _check_rate(learning_rate, "learning_rate")
        if not self.is_initialized:
            self._initialise(*frames.shape)
        elif learning_rate == 0 or (learning_rate is None and self.learning_rate == 0 and not self.warmup):
            foreground = mog_foreground(
                frames,
                self.weight,
                self.mean,
                self.variance,
                background_ratio=self.background_ratio,
                match_sigma=self.match_sigma,
            )
            if not self.detect_shadows:
                return foreground
            shadows = self._shadow_settings()
            shadow = foreground & mog_shadow(
                frames,
                self.weight,
                self.mean,
                self.variance,
                background_ratio=self._scalar(self.background_ratio),
                match_sigma=shadows["match_sigma"],
                shadow_threshold=shadows["shadow_threshold"],
            )
            return torch.where(foreground & ~shadow, 255, torch.where(shadow, shadows["shadow_value"] + 256, 0))
        if frames.device.type == "cpu":
            # Channel-major frames for B > 1, like the state (see component_major): one cheap
            # copy of the uint8 frames keeps the fused C++ update a single loop. Not on CUDA:
            # Triton's kernel reads batch-major frames fastest (H200, 4K RGB K = 3, B = 4 and
            # 16: 2,530 frames/s, channel-major 2,220).
            frames = component_major(frames)
        explicit = learning_rate is not None
        base = self._scalar(float(learning_rate) if explicit else self.learning_rate)
        warmup = self.warmup and not explicit
        # shadows off: None, and the step's graph and outputs are those of the plain update
        shadows = self._shadow_settings() if self.detect_shadows else None
        args = (
            frames,
            self.weight,
            self.mean,
            self.variance,
            self.frames_seen,
            base,
            warmup,
            self._settings(),
            shadows,
        )
        # what changes the compiled graph beyond shapes (K and C are unrolled)
        config = (
            frames.dtype,
            self.weight.dtype,
            frames.device.type,
            tuple(self.mean.shape[1:3]),
            self.covariance_type,
            self.rho,
            warmup,
            self.detect_shadows,
        )
        labels, *state = self._step(config, args)
        # Swap the buffers for the new state tensors (the update is out of place, so nothing
        # is copied). Straight into _buffers: nn.Module.__setattr__ costs ~10 us per buffer,
        # a third of the module's per-frame Python overhead.
        for name, tensor in zip(("weight", "mean", "variance", "frames_seen"), state):
            self._buffers[name] = tensor
        return labels if self.detect_shadows else labels.view(torch.bool)  # uint8 0 / 1: no copy

    def _step(self, config: tuple, args: tuple):  # noqa: ANN202
        if self.use_compile is False or self._compile_failed:
            return _mog_step(*args)
        if self.use_compile in (None, "aot") and config[2] == "cpu":
            from torchgmm._aot import run_ahead_of_time

            out = run_ahead_of_time(_mog_step, config, args)  # eager while its package is built
            if out is not None:
                return out
        cpp_error: Exception | None = None
        try:
            if config[2] == "cpu" and config not in _cpp_wrapper_failures:
                try:
                    return _get_compiled_step(config, cpp_wrapper=True)(*args)
                except Exception as exc:  # noqa: BLE001 - the C++ wrapper only adds decode overlap
                    _cpp_wrapper_failures.add(config)
                    cpp_error = exc
            return _get_compiled_step(config)(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            if cpp_error is not None:
                add_note(
                    exc, f"compiling with Inductor's C++ wrapper failed first: {type(cpp_error).__name__}: {cpp_error}"
                )
            if self.use_compile is True:
                raise
            self._compile_failed = True
            warnings.warn(
                f"torch.compile of the background update failed ({type(exc).__name__}: {exc}); "
                "running eagerly (slower). Pass compile=False to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
            return _mog_step(*args)

    def apply(self, frames, learning_rate: float | None = None):  # type: ignore[override]  # noqa: ANN001, ANN201
        """OpenCV's ``apply``: learn and return its uint8 mask; a function goes to ``nn.Module.apply``.

        The mask is OpenCV's: 0 background, ``shadow_value`` shadow (only with
        ``detect_shadows``), 255 foreground. A parent module's ``apply(fn)`` (e.g. a weight
        initialiser run over a whole model) calls ``apply(fn)`` on every child, so a
        function is handed on to ``nn.Module.apply`` rather than taken for frames.

        Args:
            frames: ``(B, C, H, W)`` frames, as for :meth:`forward`; or a function of a module.
            learning_rate: as for :meth:`forward`.

        Returns:
            ``(B, 1, H, W)`` ``uint8`` masks; or this module, for a function.

        Example:
            >>> model = BackgroundSubtractorMOG(compile=False)
            >>> frames = torch.zeros(2, 1, 1, 4, dtype=torch.uint8)
            >>> model.apply(frames).shape, model.apply(frames + 200)[0, 0, 0].tolist()
            (torch.Size([2, 1, 1, 4]), [255, 255, 255, 255])
            >>> nn.Sequential(model).apply(lambda m: None)[0] is model
            True
        """
        if callable(frames) and not isinstance(frames, Tensor):
            return super().apply(frames)
        labels = self._learn(frames, learning_rate)
        if self.detect_shadows:
            return labels.to(torch.uint8)  # the code's low byte: 0, 255 or shadow_value
        return labels.view(torch.uint8) * 255  # bool -> 0 / 255 in one pass

    def process(self, clip: Tensor, learning_rate: float | None = None) -> Tensor:
        """Feed a clip of one stream frame by frame.

        Args:
            clip: ``(T, C, H, W)`` frames of one stream, in order.
            learning_rate: as in :meth:`forward`, for every frame.

        Returns:
            ``(T, 1, H, W)`` bool masks.
        """
        check_tensor(clip, "clip")
        if clip.ndim != 4:
            raise ShapeError(f"`clip` must have shape (T, C, H, W), got shape {tuple(clip.shape)}.")
        if clip.shape[0] == 0:  # nothing to learn; the masks of no frames
            return torch.empty((0, 1, *clip.shape[2:]), dtype=torch.bool, device=clip.device)
        return torch.cat([self(clip[t : t + 1], learning_rate) for t in range(clip.shape[0])])

    def background_image(self) -> Tensor:
        """The mean of each pixel's most probable background component.

        Returns:
            ``(B, C, H, W)`` ``uint8``.

        Raises:
            RuntimeError: before the first frame.
        """
        if not self.is_initialized:
            raise RuntimeError("background_image() needs at least one frame: call the model on a frame first.")
        return self.mean[:, 0].float().round().clamp(0, 255).to(torch.uint8)

    def extra_repr(self) -> str:
        return (
            f"n_components={self.n_components}, learning_rate={self.learning_rate}, "
            f"background_ratio={self.background_ratio}, match_sigma={self.match_sigma}, "
            f"init_var={self.init_var}, min_var={self.min_var}, init_weight={self.init_weight}, "
            f"rho={self.rho!r}, covariance_type={self.covariance_type!r}, warmup={self.warmup}, "
            f"detect_shadows={self.detect_shadows}, shadow_threshold={self.shadow_threshold}, "
            f"shadow_value={self.shadow_value}, shadow_match_sigma={self.shadow_match_sigma}, "
            f"state_dtype={self.weight.dtype}"
        )


def _state_problem(state: dict[str, Tensor]) -> str | None:
    """What makes a loaded state unusable (None when it is fine): non-finite values, weights
    outside [0, 1], variances <= 0. One reduction per buffer, at load time only."""
    for name, tensor in state.items():
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            return f"`{name}` holds NaN or infinite values"
    weight, variance = state["weight"], state["variance"]
    if weight.numel() and not bool(((weight >= 0) & (weight <= 1 + 1e-3)).all()):  # renormalised: may pass 1 by an ulp
        return "`weight` holds values outside [0, 1]"
    if variance.numel() and not bool((variance > 0).all()):
        return "`variance` holds values <= 0"
    return None


def _check_rate(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1], got {type(value).__name__}.")
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be in [0, 1], got {value}.")


def retain_freed_memory() -> bool:
    """Let the process keep and reuse freed CPU memory instead of returning it to the OS.

    The fused update allocates a new state every frame and frees the old one (the buffer
    swap). glibc's ``malloc`` serves large blocks with ``mmap`` and hands them back to the
    kernel when freed, so every frame's state is built in fresh pages that the kernel must
    fault in and zero: measured 1,200-1,600 page faults per 640x480 RGB frame (about 45% of
    the frame time with two threads) and 18,000 at 1920x1080. This sets glibc's
    ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and ``M_TRIM_THRESHOLD`` to 1 GB
    (freed heap memory stays with the process), after which the state is recycled with no
    page faults. jemalloc or tcmalloc via ``LD_PRELOAD``, as PyTorch's CPU performance guide
    suggests, has the same effect.

    It changes process-wide allocator settings, so the library never calls it on its own:
    the ``torchgmm`` command and the benchmarks do. CUDA memory is unaffected (PyTorch's
    caching allocator already recycles it).

    Returns:
        True if the settings were applied (Linux with glibc), False otherwise.

    Example:
        >>> isinstance(retain_freed_memory(), bool)
        True
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    ok_trim = mallopt(m_trim_threshold, ctypes.c_int(1 << 30))
    ok_mmap = mallopt(m_mmap_max, ctypes.c_int(0))
    return bool(ok_trim and ok_mmap)

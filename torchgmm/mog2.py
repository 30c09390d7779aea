"""Zivkovic's adaptive Gaussian mixture background model, as OpenCV's ``BackgroundSubtractorMOG2``.

Every pixel holds up to K Gaussians ("modes"), each a weight, a C-channel mean and one
variance shared by the channels; how many modes a pixel uses is state too (``n_modes``):
modes are created for values that fit none and pruned when their weight falls below the
complexity-reduction prior (Zivkovic, ICPR 2004; Zivkovic and van der Heijden, PRL 2006).
A pixel that is not background may be labelled a shadow: a darker version, of the same
chroma, of a background mode (Prati et al., PAMI 2003).

This module follows OpenCV's CPU code (``modules/video/src/bgfg_gaussmix2.cpp``:
``BackgroundSubtractorMOG2Impl::apply``, ``MOG2Invoker``, ``detectShadowGMM`` and
``getBackgroundImage_intern``) step by step and in its arithmetic order, so that a float32
state gives OpenCV's masks (``scripts/parity_mog2.py`` measures how closely). The
functional core: :func:`mog2_learning_rate` (the rate schedule), :func:`mog2_update`
(learn a frame), :func:`detect_shadow_gmm` (the shadow test, whose maths
``torchgmm._shadows`` shares with the Stauffer-Grimson model) and
:func:`mog2_background_image`. :class:`BackgroundSubtractorMOG2` holds the state in
buffers and runs the update fused by ``torch.compile``, as
:class:`~torchgmm.background.BackgroundSubtractorMOG` does (same layout, same reasons).

State layout, batch first, stored component-major (see
:func:`~torchgmm.background.component_major`):

=================  =============================================
``weight``         ``(B, K, H, W)``
``mean``           ``(B, K, C, H, W)``
``variance``       ``(B, K, H, W)``
``n_modes``        ``(B, H, W)`` modes in use (0..K), float32 in the module (see ``_mog2_step``)
=================  =============================================

One frame, per pixel, with rate ``a`` and ``prune = -a * CT`` (OpenCV's names: ``Tb``
= ``var_threshold``, ``Tg`` = ``var_threshold_gen``, ``TB`` = ``background_ratio``, ``CT``
= ``complexity_reduction_threshold``, ``tau`` = ``shadow_threshold``)::

    for m in 0 .. n_modes - 1 (n_modes shrinks as modes are pruned, ending the loop early):
        w_m <- (1 - a) w_m + prune
        if no mode has matched yet:
            d2 = |mu_m - x|^2
            background |= (sum of the new weights before m) < TB and d2 < Tb var_m
            if d2 < Tg var_m:                         the match: update, then move it up
                w_m <- w_m + a;  k = a / w_m
                mu_m <- mu_m - k (mu_m - x);  var_m <- clamp(var_m + k (d2 - var_m), var_min, var_max)
                bubble m up past the modes before it whose new weight is <= w_m
        if w_m < -prune: w_m <- 0, n_modes -= 1           (pruned)
    w <- w / sum(w)   (0 if the sum is ~0)
    no match: a new mode (a, x, var_init) at the end, or instead of the last when all K are
              used (weight 1 if it is the only one, else the others scale by 1 - a), moved
              up past the modes of weight <= a
    mask = 0 (background), shadow_value (detect_shadow_gmm on the new state) or 255

The rate is OpenCV's: ``1 / min(2 n, history)`` on frame ``n`` after a (re)start, or a
given rate from the second frame on. OpenCV computes the rate and the prune in double and
casts them to float; so does :func:`mog2_update` for a float32 state.
"""

from __future__ import annotations

import math
from typing import Literal
import warnings

import torch
from torch import Tensor, nn

from torchgmm._streams import StreamBatchMixin
from torchgmm._checks import ShapeError, add_note, check_positive_int, check_real, check_tensor
from torchgmm._shadows import shadow_planes
from torchgmm.background import (
    BackgroundSubtractorMOG,
    _check_state,
    _empty_component_major,
    _pack,
    _squared_distance,
    _state_problem,
    _swap_where,
    _unpack,
    check_compile_mode,
    compile_step,
    component_major,
)

__all__ = [
    "mog2_learning_rate",
    "mog2_update",
    "detect_shadow_gmm",
    "mog2_background_image",
    "BackgroundSubtractorMOG2",
]

_FLT_EPSILON = 2.0**-23  # OpenCV's FLT_EPSILON guard on the weight sums, whatever the state dtype


# ----------------------------------------------------------------------------------------
# Functional core
# ----------------------------------------------------------------------------------------
def mog2_learning_rate(frames_seen: Tensor, learning_rate: Tensor | float, history: Tensor | int) -> Tensor:
    """OpenCV MOG2's rate for the next frame, in float64, on the device without a sync.

    Frame ``n = frames_seen + 1`` learns with ``learning_rate`` when that is >= 0 and
    ``n > 1``, else with the automatic ``1 / min(2 n, history)`` (so the first frame always
    gets ``1 / 2`` for ``history >= 2``, and a negative rate means "automatic").

    Args:
        frames_seen: ``()`` int64 tensor, frames learned since the model (re)started.
        learning_rate: a float or ``()`` float64 tensor; negative = automatic.
        history: an int or ``()`` tensor, OpenCV's ``history``.

    Returns:
        ``()`` float64 tensor on ``frames_seen``'s device.

    Example:
        >>> rates = [round(mog2_learning_rate(torch.tensor(n), -1.0, 500).item(), 6) for n in (0, 1, 2, 999)]
        >>> rates
        [0.5, 0.25, 0.166667, 0.002]
        >>> mog2_learning_rate(torch.tensor(0), 0.01, 500).item()  # the first frame is automatic
        0.5
    """
    rate = torch.as_tensor(learning_rate, dtype=torch.float64, device=frames_seen.device)
    n = frames_seen + 1
    automatic = 1.0 / torch.minimum(2 * n, torch.as_tensor(history, device=n.device)).to(torch.float64)
    return torch.where((rate >= 0) & (n > 1), rate, automatic)


def _setting(value: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A setting as a ``()`` tensor of the arithmetic's dtype (OpenCV's float members)."""
    if isinstance(value, Tensor):
        return value.to(dtype)
    return torch.tensor(value, dtype=dtype, device=device)


def detect_shadow_gmm(
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    *,
    n_modes: Tensor | None = None,
    var_threshold: Tensor | float = 16.0,
    background_ratio: Tensor | float = 0.9,
    shadow_threshold: Tensor | float = 0.5,
) -> Tensor:
    """Where a frame is a shadow on the background: OpenCV's ``detectShadowGMM``, per pixel.

    The modes are visited in order until their cumulative weight exceeds
    ``background_ratio``; a pixel is a shadow when, for one of them, its brightness ratio
    ``a = x.mu / |mu|^2`` lies in ``[shadow_threshold, 1]`` (darker, by at most 1 / tau) and
    its colour distortion is small: ``|a mu - x|^2 < var_threshold var a^2``. A mode with
    ``mu = 0`` ends the test (not a shadow). With per-channel variances ``(B, K, C, H, W)``
    the distortion is measured as ``sum_c (a mu_c - x_c)^2 / var_c < var_threshold a^2``,
    which is the same test when the channel variances are equal. The maths lives in
    ``torchgmm._shadows``, shared with :func:`~torchgmm.background.mog_shadow`, the same
    test in the Stauffer-Grimson model's terms (its background set and match distance).

    This is only the colour test: a caller applies it to its foreground (OpenCV labels a
    pixel shadow when it is not background and this is True).

    Args:
        frame: ``(B, C, H, W)`` ``uint8`` (0..255) or floating on the [0, 1] scale.
        weight: ``(B, K, H, W)`` mode weights, in the model's order (background first).
        mean: ``(B, K, C, H, W)`` means on the 0..255 scale.
        variance: ``(B, K, H, W)`` (one per mode) or ``(B, K, C, H, W)`` (per channel).
        n_modes: ``(B, H, W)`` integer, the modes in use per pixel; None = all K.
        var_threshold: OpenCV's ``Tb`` (squared distance in variances).
        background_ratio: OpenCV's ``TB``.
        shadow_threshold: OpenCV's ``tau``.

    Returns:
        ``(B, H, W)`` bool, True = shadow-coloured.

    Example:
        >>> w = torch.ones(1, 1, 1, 2)
        >>> mu = torch.full((1, 1, 3, 1, 2), 200.0)
        >>> var = torch.full((1, 1, 1, 2), 15.0)
        >>> frame = torch.tensor([[120, 120, 120], [120, 160, 120]], dtype=torch.uint8).T.reshape(1, 3, 1, 2)
        >>> detect_shadow_gmm(frame, w, mu, var)  # grey 120 on 200 is a shadow; a green cast is not
        tensor([[[ True, False]]])
    """
    _check_state(frame, weight, mean, variance)
    if n_modes is not None and n_modes.shape != (weight.shape[0], *weight.shape[2:]):
        raise ShapeError(
            f"`n_modes` must have shape (B, H, W) = {(weight.shape[0], *weight.shape[2:])}, got {tuple(n_modes.shape)}."
        )
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    compute, device = xs[0].dtype, frame.device
    in_use = None if n_modes is None else [n_modes.to(torch.int32) > k for k in range(weight.shape[1])]
    return shadow_planes(
        xs,
        ws,
        mus,
        vs,
        in_use,
        _setting(var_threshold, compute, device),
        _setting(background_ratio, compute, device),
        _setting(shadow_threshold, compute, device),
    )


def _bubble(ws, mus, vs, moving: Tensor, target: Tensor, source: Tensor) -> None:  # noqa: ANN001
    """Move each pixel's mode ``source`` to position ``target <= source`` (where ``moving``),
    shifting the modes in between down by one: OpenCV's adjacent swaps, from the bottom up."""
    for i in range(len(ws) - 1, 0, -1):
        swap = moving & (target < i) & (source >= i)
        ws[i - 1], ws[i] = _swap_where(swap, ws[i - 1], ws[i])
        mus[i - 1], mus[i] = _swap_where(swap, mus[i - 1], mus[i])
        vs[i - 1], vs[i] = _swap_where(swap, vs[i - 1], vs[i])


def _update_planes(xs, ws, mus, vs, count, rate, s, detect_shadows):  # noqa: ANN001, ANN202, C901
    """One ``MOG2Invoker`` step on unpacked planes: ``(background, shadow, ws, mus, vs, count)``.

    ``count`` is ``(B, H, W)`` (modes in use, as floats), ``rate`` the ``()`` float64 rate, ``s``
    the settings as ``()`` tensors of the arithmetic's dtype (``ct`` in float64).
    """
    n_modes, compute = len(ws), xs[0].dtype
    alpha = rate.to(compute)  # (float)learningRate
    alpha1 = 1 - alpha  # 1.f - alphaT
    prune = (-rate * s["ct"]).to(compute)  # float(-learningRate * fCT): double, then cast
    var_lo, var_hi = torch.minimum(s["var_min"], s["var_max"]), torch.maximum(s["var_min"], s["var_max"])

    # 1. OpenCV's loop over the used modes; its bound `count` shrinks with each pruned mode.
    fits = background = target = source = None
    total = torch.zeros_like(xs[0])
    new_ws: list[Tensor] = []
    for k in range(n_modes):
        visit = count > k
        w = alpha1 * ws[k] + prune
        d2, diffs = _squared_distance(xs, mus[k])  # diffs are x - mu: mu - k (mu - x) == mu + k (x - mu)
        var = vs[k][0]
        open_ = visit if fits is None else visit & ~fits
        near = open_ & (total < s["background_ratio"]) & (d2 < s["var_threshold"] * var)
        hit = open_ & (d2 < s["var_threshold_gen"] * var)
        background = near if background is None else background | near
        fits = hit if fits is None else fits | hit
        w = torch.where(hit, w + alpha, w)
        r = alpha / w
        mus[k] = [torch.where(hit, m + r * d, m) for m, d in zip(mus[k], diffs)]
        vs[k] = [torch.where(hit, torch.clamp(var + r * (d2 - var), var_lo, var_hi), var)]
        # the matched mode moves up to just below the last earlier mode of larger new weight
        place = torch.zeros_like(count)
        for j in range(k):
            place = torch.where(new_ws[j] > w, j + 1, place)
        target = place if target is None else torch.where(hit, place, target)
        source = torch.full_like(count, k) if source is None else torch.where(hit, k, source)
        pruned = visit & (w < -prune)
        w = torch.where(pruned, 0.0, w)
        count = count - pruned.to(count.dtype)
        new_ws.append(torch.where(visit, w, ws[k]))
        total = total + torch.where(visit, w, 0.0)
    ws = new_ws
    # (the matched mode's move up is made with the new mode's, in one pass after step 3: a
    # pixel has one or the other, and the renormalisation between them scales every mode
    # from `target` to `source` alike, as all are below `count`: the matched mode is never
    # pruned, and a later pruned mode leaves `count` above it)

    # 2. Renormalise the modes still in use (OpenCV multiplies by the reciprocal).
    inv = torch.where(total.abs() > _FLT_EPSILON, total.reciprocal(), 0.0)
    ws = [torch.where(count > i, w * inv, w) for i, w in enumerate(ws)]

    # 3. No match (and a > 0): a new mode at the end, or instead of the last one when all are used.
    create = ~fits & (alpha > 0)
    full = count >= n_modes
    slot = torch.where(full, n_modes - 1, count)
    count = torch.where(create & ~full, count + 1, count)
    new_weight = torch.where(count == 1, 1.0, alpha)
    for i in range(n_modes):
        is_new = create & (slot == i)
        ws[i] = torch.where(is_new, new_weight, torch.where(create & (slot > i), ws[i] * alpha1, ws[i]))
        mus[i] = [torch.where(is_new, xc, m) for xc, m in zip(xs, mus[i])]
        vs[i] = [torch.where(is_new, s["var_init"], vs[i][0])]
    place = torch.zeros_like(count)
    for j in range(n_modes - 1):
        place = torch.where((slot > j) & (ws[j] > alpha), j + 1, place)
    # one bubble for both moves: the matched mode (step 1) or the new one (here)
    _bubble(ws, mus, vs, fits | create, torch.where(fits, target, place), torch.where(fits, source, slot))

    # 4. The label: background, else shadow (tested on the new state, as OpenCV does), else foreground.
    if detect_shadows:
        in_use = [count > k for k in range(n_modes)]
        shadow = ~background & shadow_planes(
            xs, ws, mus, vs, in_use, s["var_threshold"], s["background_ratio"], s["shadow_threshold"]
        )
    else:
        shadow = torch.zeros_like(background)
    return background, shadow, ws, mus, vs, count


def _settings_tensors(settings: dict, compute: torch.dtype, device: torch.device) -> dict:
    out = {k: _setting(v, compute, device) for k, v in settings.items() if k != "complexity_reduction_threshold"}
    # fCT is a float member multiplied by the double rate: round it to the arithmetic's dtype first
    out["ct"] = _setting(settings["complexity_reduction_threshold"], compute, device).to(torch.float64)
    return out


def _check_mog2_state(frame: Tensor, weight: Tensor, mean: Tensor, variance: Tensor, n_modes: Tensor) -> None:
    _check_state(frame, weight, mean, variance)
    b, k, h, w = weight.shape
    if variance.shape != (b, k, h, w):
        raise ShapeError(
            f"`variance` must have shape (B, K, H, W) = {(b, k, h, w)} (one variance per mode), "
            f"got {tuple(variance.shape)}."
        )
    check_tensor(n_modes, "n_modes")
    if n_modes.shape != (b, h, w):
        raise ShapeError(f"`n_modes` must have shape (B, H, W) = {(b, h, w)}, got {tuple(n_modes.shape)}.")


def mog2_update(
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    n_modes: Tensor,
    learning_rate: Tensor | float,
    *,
    var_threshold: Tensor | float = 16.0,
    background_ratio: Tensor | float = 0.9,
    var_threshold_gen: Tensor | float = 9.0,
    var_init: Tensor | float = 15.0,
    var_min: Tensor | float = 4.0,
    var_max: Tensor | float = 75.0,
    complexity_reduction_threshold: Tensor | float = 0.05,
    shadow_threshold: Tensor | float = 0.5,
    detect_shadows: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Learn one frame as OpenCV's ``MOG2Invoker``: the labels and the new state (inputs unchanged).

    The module docstring has the steps. K and C are unrolled and every op is elementwise,
    so ``torch.compile`` fuses the step into one pass over the state. Arithmetic is float32
    (float64 for a float64 state); the rate and prune are computed in float64 and cast, as
    OpenCV does. Modes beyond a pixel's ``n_modes`` are never read.

    Args:
        frame: ``(B, C, H, W)`` ``uint8`` (or another integer dtype) on the 0..255 scale, or
            floating on the [0, 1] scale.
        weight: ``(B, K, H, W)`` mode weights (OpenCV's order).
        mean: ``(B, K, C, H, W)`` means on the 0..255 scale.
        variance: ``(B, K, H, W)`` variances (one per mode, shared by the channels).
        n_modes: ``(B, H, W)`` modes in use (all 0 = fresh state): integers, or whole numbers
            in a floating dtype (the module's choice, see ``_mog2_step``).
        learning_rate: this frame's rate (see :func:`mog2_learning_rate`), a float or ``()``
            tensor, >= 0; 0 learns nothing and creates no mode.
        var_threshold: ``Tb``, squared distance (in variances) of the background test.
        background_ratio: ``TB``, the weight share of the background modes.
        var_threshold_gen: ``Tg``, squared distance of the match that updates a mode.
        var_init: variance of a new mode.
        var_min, var_max: bounds of a mode's variance (swapped if given the wrong way round, as OpenCV).
        complexity_reduction_threshold: ``CT``; a mode whose weight drops below ``a * CT`` is pruned.
        shadow_threshold: ``tau`` of :func:`detect_shadow_gmm`.
        detect_shadows: run the shadow test on non-background pixels.

    The float settings may be ``()`` tensors (the module passes them so: a new value does not
    recompile the fused step).

    Returns:
        ``(foreground, shadow, weight, mean, variance, n_modes)``: ``foreground`` and
        ``shadow`` ``(B, H, W)`` bool (disjoint: a shadow is not foreground; OpenCV's mask is
        255 / ``shadow_value`` / 0), the new state shaped and typed as the inputs, laid out
        component-major (:func:`~torchgmm.background.component_major`).

    Example:
        >>> b, k, c, h, w = 1, 5, 1, 1, 2
        >>> state = torch.zeros(b, k, h, w), torch.zeros(b, k, c, h, w), torch.zeros(b, k, h, w)
        >>> n_modes = torch.zeros(b, h, w, dtype=torch.uint8)
        >>> frame = torch.full((b, c, h, w), 100, dtype=torch.uint8)
        >>> fg, shadow, *state, n_modes = mog2_update(frame, *state, n_modes, 0.5)  # first frame
        >>> weight = state[0]
        >>> n_modes.tolist(), weight[0, :2, 0, 0].tolist(), shadow.all().item()
        ([[[1, 1]]], [1.0, 0.0], True)
        >>> frame[..., 1] = 180  # the second pixel jumps: a new mode, foreground
        >>> fg, shadow, *state, n_modes = mog2_update(frame, *state, n_modes, 0.25, detect_shadows=False)
        >>> fg.tolist(), n_modes.tolist()
        ([[[False, True]]], [[[1, 2]]])

    With ``detect_shadows`` the first frame reads as shadow (above), and so can a pixel that
    just made a new mode while the modes before it weigh less than ``background_ratio``: the
    shadow test runs on the updated model and finds the pixel in its own new mode (``a = 1``),
    exactly as OpenCV's does.
    """
    _check_mog2_state(frame, weight, mean, variance, n_modes)
    settings = dict(
        var_threshold=var_threshold,
        background_ratio=background_ratio,
        var_threshold_gen=var_threshold_gen,
        var_init=var_init,
        var_min=var_min,
        var_max=var_max,
        shadow_threshold=shadow_threshold,
        complexity_reduction_threshold=complexity_reduction_threshold,
    )
    return _update(frame, weight, mean, variance, n_modes, learning_rate, settings, detect_shadows)


def _update(frame, weight, mean, variance, n_modes, learning_rate, settings, detect_shadows, raw=False):  # noqa: ANN001, ANN202
    """:func:`mog2_update` without the checks. ``raw``: a floating ``frame`` holds 0..255 values
    (the module's CPU path converts uint8 frames so, see ``BackgroundSubtractorMOG2._learn``)."""
    xs, ws, mus, vs = _unpack(frame, weight, mean, variance)
    compute, device = xs[0].dtype, frame.device
    if raw:
        xs = [frame[:, c].to(compute) for c in range(frame.shape[1])]
    rate = torch.as_tensor(learning_rate, dtype=torch.float64, device=device)
    background, shadow, ws, mus, vs, count = _update_planes(
        xs, ws, mus, vs, n_modes.to(compute), rate, _settings_tensors(settings, compute, device), detect_shadows
    )
    new_weight, new_mean, new_variance = _pack(ws, mus, vs, weight, mean, variance)
    return ~background & ~shadow, shadow, new_weight, new_mean, new_variance, count.to(n_modes.dtype).contiguous()


def mog2_background_image(weight: Tensor, mean: Tensor, n_modes: Tensor, background_ratio: float = 0.9) -> Tensor:
    """OpenCV's ``getBackgroundImage``: the weighted mean of each pixel's background modes.

    Modes are summed in order until their cumulative weight exceeds ``background_ratio``;
    the sum of ``w mu`` is divided by the sum of ``w`` (0 where that is ~0) and rounded half
    to even, as OpenCV's ``saturate_cast`` does.

    Args:
        weight: ``(B, K, H, W)``.
        mean: ``(B, K, C, H, W)`` on the 0..255 scale.
        n_modes: ``(B, H, W)`` integer.
        background_ratio: OpenCV's ``backgroundRatio``.

    Returns:
        ``(B, C, H, W)`` ``uint8``.

    Example:
        >>> w = torch.tensor([0.6, 0.4]).view(1, 2, 1, 1)
        >>> mu = torch.tensor([100.0, 200.0]).view(1, 2, 1, 1, 1)
        >>> mog2_background_image(w, mu, torch.tensor([[[2]]])).item()  # (0.6 * 100 + 0.4 * 200) / 1
        140
        >>> mog2_background_image(w, mu, torch.tensor([[[2]]]), background_ratio=0.5).item()
        100
    """
    compute = torch.promote_types(weight.dtype, torch.float32)
    ratio = _setting(background_ratio, compute, weight.device)
    count = n_modes.to(torch.int32)
    total = torch.zeros_like(weight[:, 0], dtype=compute)
    acc = [torch.zeros_like(total) for _ in range(mean.shape[2])]
    done = torch.zeros_like(total, dtype=torch.bool)
    for k in range(weight.shape[1]):
        live = (count > k) & ~done
        w = weight[:, k].to(compute)
        acc = [torch.where(live, a + w * mean[:, k, c].to(compute), a) for c, a in enumerate(acc)]
        total = torch.where(live, total + w, total)
        done = done | (live & (total > ratio))
    inv = torch.where(total.abs() > _FLT_EPSILON, total.reciprocal(), 0.0)
    return torch.stack([torch.round(a * inv).clamp(0, 255) for a in acc], 1).to(torch.uint8)


def _mog2_step(  # noqa: ANN202 - compiled: the annotations say what goes in, not the tuple out
    frame: Tensor,
    weight: Tensor,
    mean: Tensor,
    variance: Tensor,
    n_modes: Tensor,
    frames_seen: Tensor,
    base_rate: Tensor,
    history: Tensor,
    shadow_value: Tensor,
    settings: dict,
    detect_shadows: bool,
    raw: bool,
):
    """Rate schedule + update + frame count: the function the module compiles.

    The labels leave it as one int32 code per pixel, OpenCV's mask value plus 256 for a
    shadow (so that ``shadow_value`` 0 or 255 stays apart from background and foreground):
    Inductor's C++ code (torch 2.14, AVX2) stores 8-lane uint8 and bool vectors, and loads 8-lane
    uint8 and int32 vectors, through a scratch buffer, stalling on it; only float loads and
    full-width int32 stores are direct. The byte outputs (mask, foreground, shadow, a uint8
    ``n_modes``) took more than half of the fused step's time and the uint8 frame loads a
    quarter of the rest (``perf``, 640x480 RGB K = 5). So the labels leave as int32, the
    module keeps ``n_modes`` as float32 and hands uint8 frames over as float32 0..255 values
    (``raw``); it turns the code into the uint8 mask or the bool masks it returns.
    """
    rate = mog2_learning_rate(frames_seen, base_rate, history)
    foreground, shadow, *state = _update(frame, weight, mean, variance, n_modes, rate, settings, detect_shadows, raw)
    code = torch.where(foreground, 255, torch.where(shadow, shadow_value + 256, 0))
    return (code, *state, frames_seen + 1)


def _compiled(config: tuple, cpp_wrapper: bool):  # noqa: ANN202
    return compile_step(_mog2_step, config, cpp_wrapper)  # background's cache and options


# ----------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------
class BackgroundSubtractorMOG2(StreamBatchMixin, nn.Module):
    """OpenCV's MOG2 background subtractor (Zivkovic's adaptive mixture) for B streams at once.

    Named and parametrised as ``cv2.createBackgroundSubtractorMOG2`` (snake case): call it on
    every frame for the bool foreground mask, or :meth:`apply` for OpenCV's uint8 mask (0
    background, ``shadow_value`` shadow, 255 foreground). The state lives in buffers shaped
    by the first frame; ``.to(device)``, ``state_dict()`` / ``load_state_dict()`` (also into
    a fresh module) continue a video exactly where it stopped. B counts independent
    streams, as for :class:`~torchgmm.background.BackgroundSubtractorMOG`.

    Args:
        history: frames of memory of the automatic rate ``1 / min(2 n, history)``.
        var_threshold: ``Tb``, squared Mahalanobis distance under which a pixel is background.
        detect_shadows: label shadows (they are then not foreground).
        n_mixtures: K, the most modes per pixel (1..255).
        background_ratio: ``TB``, the weight share of the modes that make the background.
        var_threshold_gen: ``Tg``, squared distance under which a pixel updates a mode
            instead of starting one.
        var_init: variance of a new mode (0..255 scale).
        var_min, var_max: the bounds of a mode's variance.
        complexity_reduction_threshold: ``CT``: a mode whose weight falls below ``a CT`` is
            dropped (0: never, close to Stauffer-Grimson).
        shadow_value: the value of shadow pixels in :meth:`apply`'s mask.
        shadow_threshold: ``tau``: a shadow is at most ``1 / tau`` times darker.
        state_dtype: ``float32`` (OpenCV's, the default) or ``float64`` (exact comparisons).
        compile: as for :class:`~torchgmm.background.BackgroundSubtractorMOG`: ``None``
            (default) runs a package compiled ahead of time on the CPU (built in the
            background on first use while the eager step runs) and ``torch.compile`` on
            CUDA, falling back with a warning; ``True`` is ``torch.compile``, raising on
            failure; ``False`` runs eagerly; ``"aot"`` the package (CPU).

    Shape:
        - frames: ``(B, C, H, W)``, C = 1 or 3, ``uint8`` or floating in [0, 1].
        - output: ``(B, H, W)`` bool, True = foreground (shadows excluded).

    Buffers (empty until the first frame):
        ``weight`` ``(B, K, H, W)``, ``mean`` ``(B, K, C, H, W)``, ``variance``
        ``(B, K, H, W)``, ``n_modes`` ``(B, H, W)`` float32 (whole numbers), ``frames_seen``
        ``()`` int64.

    Example:
        >>> model = BackgroundSubtractorMOG2(compile=False)
        >>> frames = torch.full((30, 3, 8, 8), 90, dtype=torch.uint8)
        >>> frames[25:, :, 2:5, 2:5] = 200  # an object enters
        >>> frames[25:, :, 6:, 6:] = 60  # and casts a shadow
        >>> masks = model.process(frames)
        >>> masks.shape, masks[5:25].any().item(), masks[25, 2:5, 2:5].all().item()
        (torch.Size([30, 8, 8]), False, True)
        >>> labels = model.apply(frames[-1:])  # OpenCV's mask: 255 object, 127 shadow
        >>> labels[0, 3, 3].item(), labels[0, 7, 7].item(), labels[0, 0, 0].item()
        (255, 127, 0)
        >>> model.background_image()[0, :, 0, 0].tolist()
        [90, 90, 90]
    """

    weight: Tensor
    mean: Tensor
    variance: Tensor
    n_modes: Tensor
    frames_seen: Tensor

    # frame checks and cached 0-d settings work on the same buffers as BackgroundSubtractorMOG's
    _check_frames = BackgroundSubtractorMOG._check_frames
    _scalar = BackgroundSubtractorMOG._scalar
    is_initialized = BackgroundSubtractorMOG.is_initialized

    def __init__(
        self,
        history: int = 500,
        var_threshold: float = 16.0,
        detect_shadows: bool = True,
        n_mixtures: int = 5,
        background_ratio: float = 0.9,
        var_threshold_gen: float = 9.0,
        var_init: float = 15.0,
        var_min: float = 4.0,
        var_max: float = 75.0,
        complexity_reduction_threshold: float = 0.05,
        shadow_value: int = 127,
        shadow_threshold: float = 0.5,
        state_dtype: torch.dtype = torch.float32,
        compile: bool | Literal["aot"] | None = None,  # noqa: A002 - the flag's natural name
    ) -> None:
        super().__init__()
        check_positive_int(history, "history")
        check_positive_int(n_mixtures, "n_mixtures")
        if n_mixtures > 255:
            raise ValueError(f"`n_mixtures` must be <= 255 (OpenCV counts modes in a byte), got {n_mixtures}.")
        check_real(var_threshold, "var_threshold", minimum=0)
        check_real(background_ratio, "background_ratio", minimum=0, maximum=1)
        check_real(var_threshold_gen, "var_threshold_gen", minimum=0)
        check_real(var_min, "var_min", minimum=0, exclusive_minimum=True)
        check_real(var_max, "var_max", minimum=0, exclusive_minimum=True)
        check_real(var_init, "var_init", minimum=0, exclusive_minimum=True)
        check_real(complexity_reduction_threshold, "complexity_reduction_threshold", minimum=0)
        check_real(shadow_threshold, "shadow_threshold", minimum=0, maximum=1)
        if isinstance(detect_shadows, bool) is False:
            raise TypeError(f"`detect_shadows` must be a bool, got {type(detect_shadows).__name__}.")
        check_positive_int(shadow_value, "shadow_value", minimum=0)
        if shadow_value > 255:
            raise ValueError(f"`shadow_value` must be a uint8 value (0..255), got {shadow_value}.")
        if not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise TypeError(f"`state_dtype` must be a floating torch.dtype, got {state_dtype!r}.")
        self.history = history
        self.var_threshold = float(var_threshold)
        self.detect_shadows = detect_shadows
        self.n_mixtures = n_mixtures
        self.background_ratio = float(background_ratio)
        self.var_threshold_gen = float(var_threshold_gen)
        self.var_init = float(var_init)
        self.var_min = float(var_min)
        self.var_max = float(var_max)
        self.complexity_reduction_threshold = float(complexity_reduction_threshold)
        self.shadow_value = shadow_value
        self.shadow_threshold = float(shadow_threshold)
        check_compile_mode(compile)
        self.use_compile = compile  # not `self.compile`: that is nn.Module.compile()
        self._compile_failed = False
        self._scalars: dict[tuple, Tensor] = {}
        #: (B, K, H, W) mode weights, OpenCV's order
        self.register_buffer("weight", torch.empty(0, dtype=state_dtype))
        #: (B, K, C, H, W) mode means, 0..255 scale
        self.register_buffer("mean", torch.empty(0, dtype=state_dtype))
        #: (B, K, H, W) mode variances
        self.register_buffer("variance", torch.empty(0, dtype=state_dtype))
        #: (B, H, W) modes in use per pixel, whole numbers in float32 (not OpenCV's byte: see _mog2_step)
        self.register_buffer("n_modes", torch.empty(0, dtype=torch.float32))
        #: () frames learned since the model (re)started (OpenCV's nframes)
        self.register_buffer("frames_seen", torch.zeros((), dtype=torch.int64))

    # -- state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything learned; the next frame initialises the model (keeps device, dtype)."""
        for name in ("weight", "mean", "variance"):
            setattr(self, name, self.weight.new_empty(0))
        self.n_modes = self.n_modes.new_empty(0)
        self.frames_seen = torch.zeros_like(self.frames_seen)

    def _state_shapes(self, b: int, c: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        k = self.n_mixtures
        return {"weight": (b, k, h, w), "mean": (b, k, c, h, w), "variance": (b, k, h, w)}

    def _initialise(self, b: int, c: int, h: int, w: int) -> None:
        # OpenCV's initialize: no mode in use (the values of unused modes are never read).
        shapes = self._state_shapes(b, c, h, w)
        self.weight = _empty_component_major(shapes["weight"], self.weight).zero_()
        self.mean = _empty_component_major(shapes["mean"], self.weight).zero_()
        self.variance = _empty_component_major(shapes["variance"], self.weight).fill_(self.var_init)
        self.n_modes = self.n_modes.new_zeros((b, h, w))
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
        names = ("weight", "mean", "variance", "n_modes")
        incoming = {n: state_dict.get(prefix + n) for n in names}
        if all(isinstance(t, Tensor) for t in incoming.values()) and incoming["weight"].ndim == 4:
            b, k, h, w = incoming["weight"].shape
            c = incoming["mean"].shape[2] if incoming["mean"].ndim == 5 else 0
            expected = {**self._state_shapes(b, c, h, w), "n_modes": (b, h, w)}
            if k != self.n_mixtures or any(incoming[n].shape != expected[n] for n in expected):
                error_msgs.append(
                    f"state of shapes { {n: tuple(t.shape) for n, t in incoming.items()} } does not fit a "
                    f"BackgroundSubtractorMOG2(n_mixtures={self.n_mixtures}): expected {expected}."
                )
                return
            problem = _state_problem({n: incoming[n] for n in names[:3]})
            n = incoming["n_modes"]
            if problem is None and not bool(((n >= 0) & (n <= k) & (n == n.round())).all()):
                problem = f"`n_modes` holds values other than the whole numbers 0..{k}"
            if problem:
                error_msgs.append(f"cannot load this BackgroundSubtractorMOG2 state: {problem}.")
                return
            for name in names[:3]:  # copied into below, keeping the layout
                setattr(self, name, _empty_component_major(expected[name], self.weight))
            self.n_modes = self.n_modes.new_empty((b, h, w))
        elif all(isinstance(t, Tensor) and t.numel() == 0 for t in incoming.values()):
            for name in names:
                setattr(self, name, getattr(self, name).new_empty(0))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _settings(self) -> dict:
        floats = dict(
            var_threshold=self.var_threshold,
            background_ratio=self.background_ratio,
            var_threshold_gen=self.var_threshold_gen,
            var_init=self.var_init,
            var_min=self.var_min,
            var_max=self.var_max,
            complexity_reduction_threshold=self.complexity_reduction_threshold,
            shadow_threshold=self.shadow_threshold,
        )
        return {k: self._scalar(v) for k, v in floats.items()}

    # -- frames -----------------------------------------------------------------------
    @torch.no_grad()  # the state is updated online, never differentiated
    def forward(
        self, frames: Tensor, learning_rate: float | None = -1.0, return_shadows: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Learn from one frame per stream and return the foreground masks.

        Args:
            frames: ``(B, C, H, W)`` ``uint8`` or floating in [0, 1].
            learning_rate: OpenCV's ``learningRate``: negative (or None) = automatic
                ``1 / min(2 n, history)``; 0 = classify without learning; >= 1 restarts the
                model from this frame. The first frame after a start is always automatic.
            return_shadows: also return the shadow mask.

        Returns:
            ``(B, H, W)`` bool foreground (shadows are not foreground); with
            ``return_shadows``, ``(foreground, shadow)``.
        """
        code = self._learn(frames, learning_rate)
        foreground = code == 255
        return (foreground, code >= 256) if return_shadows else foreground

    def _learn(self, frames: Tensor, learning_rate: float | None) -> Tensor:
        """Learn a frame; the int32 label code of :func:`_mog2_step`, ``(B, H, W)``."""
        self._check_frames(frames)
        if learning_rate is None:
            learning_rate = -1.0
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or math.isnan(learning_rate):
            raise TypeError(f"`learning_rate` must be a float (negative = automatic), got {learning_rate!r}.")
        if not self.is_initialized or learning_rate >= 1:  # OpenCV: learningRate >= 1 restarts
            self._initialise(*frames.shape)
        raw = frames.device.type == "cpu" and frames.dtype == torch.uint8
        if frames.device.type == "cpu":
            if raw:  # float32 frames holding the same 0..255 values: fast loads (see _mog2_step)
                frames = frames.to(torch.float32)
            frames = component_major(frames)  # one fused loop for B > 1 (see BackgroundSubtractorMOG.forward)
        compute = torch.promote_types(self.weight.dtype, torch.float32)
        args = (
            frames,
            self.weight,
            self.mean,
            self.variance,
            self.n_modes,
            self.frames_seen,
            self._rate(float(learning_rate)),
            self._rate(float(self.history)),
            self._shadow_value(),
            self._settings(),
            self.detect_shadows,
            raw,
        )
        config = (
            frames.dtype,
            self.weight.dtype,
            frames.device.type,
            tuple(self.mean.shape[1:3]),
            self.detect_shadows,
            compute,
            raw,
        )
        code, *state = self._step(config, args)
        for name, tensor in zip(("weight", "mean", "variance", "n_modes", "frames_seen"), state):
            self._buffers[name] = tensor
        return code

    def _rate(self, value: float) -> Tensor:
        # float64 0-d tensors for the rate schedule (OpenCV computes the rate in double), cached
        key = ("f64", value, self.weight.device)
        rate = self._scalars.get(key)
        if rate is None:
            if len(self._scalars) > 64:
                self._scalars.clear()
            rate = self._scalars[key] = torch.tensor(value, dtype=torch.float64, device=self.weight.device)
        return rate

    def _shadow_value(self) -> Tensor:
        key = ("u8", self.shadow_value, self.weight.device)
        value = self._scalars.get(key)
        if value is None:
            value = self._scalars[key] = torch.tensor(self.shadow_value, dtype=torch.int32, device=self.weight.device)
        return value

    def _step(self, config: tuple, args: tuple):  # noqa: ANN202
        if self.use_compile is False or self._compile_failed:
            return _mog2_step(*args)
        if self.use_compile in (None, "aot") and config[2] == "cpu":
            from torchgmm._aot import run_ahead_of_time

            out = run_ahead_of_time(_mog2_step, config, args)  # eager while its package is built
            if out is not None:
                return out
        errors: list[Exception] = []
        wrappers = (True, False) if config[2] == "cpu" else (False,)  # the C++ wrapper releases the GIL
        for cpp_wrapper in wrappers:
            try:
                return _compiled(config, cpp_wrapper)(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                errors.append(exc)
        error = errors[-1]
        if len(errors) > 1:
            add_note(
                error, f"compiling with Inductor's C++ wrapper failed first: {type(errors[0]).__name__}: {errors[0]}"
            )
        if self.use_compile is True:
            raise error
        self._compile_failed = True
        warnings.warn(
            f"torch.compile of the MOG2 update failed ({type(error).__name__}: {error}); "
            "running eagerly (slower). Pass compile=False to silence this.",
            RuntimeWarning,
            stacklevel=4,
        )
        return _mog2_step(*args)

    def apply(self, frames, learning_rate: float | None = -1.0):  # type: ignore[override]  # noqa: ANN001, ANN201
        """OpenCV's ``apply``: learn and return its uint8 mask; a function goes to ``nn.Module.apply``.

        Args:
            frames: ``(B, C, H, W)`` frames, as for :meth:`forward`; or a function of a module.
            learning_rate: as for :meth:`forward`.

        Returns:
            ``(B, H, W)`` ``uint8``: 0 background, ``shadow_value`` shadow, 255 foreground;
            or this module, for a function.
        """
        if callable(frames) and not isinstance(frames, Tensor):
            return super().apply(frames)
        with torch.no_grad():
            return self._learn(frames, learning_rate).to(torch.uint8)  # the low byte: OpenCV's value

    def process(self, clip: Tensor, learning_rate: float | None = -1.0) -> Tensor:
        """Feed a clip of one stream frame by frame.

        Args:
            clip: ``(T, C, H, W)`` frames of one stream, in order.
            learning_rate: as in :meth:`forward`, for every frame.

        Returns:
            ``(T, H, W)`` bool foreground masks.
        """
        if check_tensor(clip, "clip").ndim != 4:
            raise ShapeError(f"`clip` must have shape (T, C, H, W), got shape {tuple(clip.shape)}.")
        masks = torch.empty((clip.shape[0], *clip.shape[2:]), dtype=torch.bool, device=clip.device)
        for t, frame in enumerate(clip.unbind()):
            masks[t] = self(frame[None], learning_rate)[0]
        return masks

    def background_image(self) -> Tensor:
        """OpenCV's ``getBackgroundImage``: ``(B, C, H, W)`` ``uint8`` (:func:`mog2_background_image`).

        A RuntimeError before the first frame.
        """
        if self.is_initialized:
            return mog2_background_image(self.weight, self.mean, self.n_modes, self.background_ratio)
        raise RuntimeError("background_image() needs a frame first: call the model on one.")

    def extra_repr(self) -> str:
        return (
            f"history={self.history}, var_threshold={self.var_threshold}, detect_shadows={self.detect_shadows}, "
            f"n_mixtures={self.n_mixtures}, background_ratio={self.background_ratio}, "
            f"var_threshold_gen={self.var_threshold_gen}, var_init={self.var_init}, var_min={self.var_min}, "
            f"var_max={self.var_max}, complexity_reduction_threshold={self.complexity_reduction_threshold}, "
            f"shadow_value={self.shadow_value}, shadow_threshold={self.shadow_threshold}, "
            f"state_dtype={self.weight.dtype}"
        )

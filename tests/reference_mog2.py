"""A slow, per-pixel reference of OpenCV's MOG2 background subtractor (Zivkovic 2004/2006).

Written pixel by pixel, mode by mode, from OpenCV's CPU code (``modules/video/src/
bgfg_gaussmix2.cpp``: ``BackgroundSubtractorMOG2Impl::apply``, ``MOG2Invoker::operator()``,
``detectShadowGMM`` and ``getBackgroundImage_intern``), keeping its control flow literally:
the loop over the used modes whose bound shrinks when a mode is pruned, the bubble of the
matched mode towards the front, the new mode's insertion, the early exits of the shadow test.
It imports nothing from ``torchgmm``: it is the independent oracle of ``tests/test_mog2.py``.

Arithmetic is done in NumPy scalars of ``dtype``: ``np.float64`` (default; a float64 model
agrees with it to the last bit) or ``np.float32`` (OpenCV's own arithmetic: float32 state and
settings, the rate computed in double and cast, as ``apply`` does).

Shapes: T frames, C channels, H, W pixels, K modes (``n_mixtures``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULTS", "fresh_state", "reference_background_image", "reference_mog2"]

FLT_EPSILON = float(np.finfo(np.float32).eps)

#: OpenCV's defaults (``createBackgroundSubtractorMOG2()``), named as in torchgmm.
DEFAULTS = dict(
    history=500,
    var_threshold=16.0,
    detect_shadows=True,
    n_mixtures=5,
    background_ratio=0.9,
    var_threshold_gen=9.0,
    var_init=15.0,
    var_min=4.0,
    var_max=75.0,
    complexity_reduction_threshold=0.05,
    shadow_value=127,
    shadow_threshold=0.5,
)


def fresh_state(n_mixtures: int, n_channels: int, height: int, width: int, dtype=np.float64) -> dict:
    """OpenCV's ``initialize``: no mode used anywhere (the model values are never read then)."""
    k, c, h, w = n_mixtures, n_channels, height, width
    return {
        "weight": np.zeros((k, h, w), dtype=dtype),
        "variance": np.zeros((k, h, w), dtype=dtype),
        "mean": np.zeros((k, c, h, w), dtype=dtype),
        "n_modes": np.zeros((h, w), dtype=np.int64),
        "frames_seen": 0,
    }


def _shadow(x, n_modes, weight, variance, mean, tb, big_tb, tau, f) -> bool:
    """``detectShadowGMM`` for one pixel: x (C,), weight/variance (K,), mean (K, C)."""
    t_weight = f(0)
    for mode in range(n_modes):
        numerator, denominator = f(0), f(0)
        for c in range(len(x)):
            numerator = numerator + x[c] * mean[mode][c]
            denominator = denominator + mean[mode][c] * mean[mode][c]
        if denominator == 0:
            return False
        if numerator <= denominator and numerator >= tau * denominator:
            a = numerator / denominator
            dist2a = f(0)
            for c in range(len(x)):
                d = a * mean[mode][c] - x[c]
                dist2a = dist2a + d * d
            if dist2a < tb * variance[mode] * a * a:
                return True
        t_weight = t_weight + weight[mode]
        if t_weight > big_tb:
            return False
    return False


def _pixel(x, n_modes, weight, variance, mean, s, alpha, alpha1, prune, f) -> tuple[int, int]:
    """One pixel of ``MOG2Invoker``: updates the lists in place, returns (mask value, n_modes)."""
    k_max = len(weight)
    background, fits, total = False, False, f(0)
    mode = 0
    while mode < n_modes:  # the bound shrinks when a mode is pruned, as in OpenCV's for loop
        w = alpha1 * weight[mode] + prune
        swaps = 0
        if not fits:
            var = variance[mode]
            d = [mean[mode][c] - x[c] for c in range(len(x))]
            dist2 = f(0)
            for dc in d:
                dist2 = dist2 + dc * dc
            if total < s["TB"] and dist2 < s["Tb"] * var:
                background = True
            if dist2 < s["Tg"] * var:
                fits = True
                w = w + alpha
                k = alpha / w
                for c in range(len(x)):
                    mean[mode][c] = mean[mode][c] - k * d[c]
                varnew = var + k * (dist2 - var)
                varnew = max(varnew, s["var_min"])
                varnew = min(varnew, s["var_max"])
                variance[mode] = varnew
                for i in range(mode, 0, -1):  # bubble up past modes of no larger weight
                    if w < weight[i - 1]:
                        break
                    swaps += 1
                    weight[i], weight[i - 1] = weight[i - 1], weight[i]
                    variance[i], variance[i - 1] = variance[i - 1], variance[i]
                    mean[i], mean[i - 1] = mean[i - 1], mean[i]
        if w < -prune:
            w = f(0)
            n_modes -= 1
        weight[mode - swaps] = w
        total = total + w
        mode += 1

    inv = f(1) / total if abs(total) > FLT_EPSILON else f(0)
    for m in range(n_modes):
        weight[m] = weight[m] * inv

    if not fits and alpha > 0:
        if n_modes == k_max:
            mode = k_max - 1
        else:
            mode = n_modes
            n_modes += 1
        if n_modes == 1:
            weight[mode] = f(1)
        else:
            weight[mode] = alpha
            for i in range(n_modes - 1):
                weight[i] = weight[i] * alpha1
        mean[mode] = [x[c] for c in range(len(x))]
        variance[mode] = s["var_init"]
        for i in range(n_modes - 1, 0, -1):
            if alpha < weight[i - 1]:
                break
            weight[i], weight[i - 1] = weight[i - 1], weight[i]
            variance[i], variance[i - 1] = variance[i - 1], variance[i]
            mean[i], mean[i - 1] = mean[i - 1], mean[i]

    if background:
        value = 0
    elif s["detect_shadows"] and _shadow(x, n_modes, weight, variance, mean, s["Tb"], s["TB"], s["tau"], f):
        value = s["shadow_value"]
    else:
        value = 255
    return value, n_modes


def _settings(settings: dict, f) -> dict:
    # float settings as OpenCV holds them (float members; varThreshold a double cast at the call)
    var_min, var_max = f(settings["var_min"]), f(settings["var_max"])
    return {
        "Tb": f(settings["var_threshold"]),
        "TB": f(settings["background_ratio"]),
        "Tg": f(settings["var_threshold_gen"]),
        "var_init": f(settings["var_init"]),
        "var_min": min(var_min, var_max),
        "var_max": max(var_min, var_max),
        "tau": f(settings["shadow_threshold"]),
        "ct": float(f(settings["complexity_reduction_threshold"])),
        "detect_shadows": bool(settings["detect_shadows"]),
        "shadow_value": int(settings["shadow_value"]),
        "history": int(settings["history"]),
    }


def reference_mog2(
    frames: np.ndarray, state: dict | None = None, learning_rates=None, dtype=np.float64, **settings
) -> tuple[np.ndarray, dict]:
    """Run OpenCV's MOG2 over ``frames`` ``(T, C, H, W)`` (0..255 values) pixel by pixel.

    Args:
        frames: ``(T, C, H, W)`` array of 0..255 values.
        state: a state from an earlier call (continues it), or None (fresh).
        learning_rates: per frame ``learningRate`` of ``apply`` (negative = automatic), or None.
        dtype: ``np.float64`` or ``np.float32`` (OpenCV's arithmetic).
        settings: overrides of :data:`DEFAULTS`.

    Returns:
        ``(masks (T, H, W) uint8 as OpenCV's, state)``.
    """
    s = _settings({**DEFAULTS, **settings}, dtype)
    f = dtype
    t_count, n_channels, height, width = frames.shape
    k_max = int({**DEFAULTS, **settings}["n_mixtures"])
    if state is None:
        state = fresh_state(k_max, n_channels, height, width, dtype)
    state = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    masks = np.zeros((t_count, height, width), dtype=np.uint8)
    for t in range(t_count):
        rate = -1.0 if learning_rates is None else float(learning_rates[t])
        if state["frames_seen"] == 0 or rate >= 1:
            state = fresh_state(k_max, n_channels, height, width, dtype)
        state["frames_seen"] += 1
        n = state["frames_seen"]
        rate = rate if rate >= 0 and n > 1 else 1.0 / min(2 * n, s["history"])  # double, as OpenCV
        alpha = f(rate)
        alpha1 = f(1) - alpha
        prune = f(-rate * s["ct"])  # computed in double, then cast
        for yy in range(height):
            for xx in range(width):
                x = [f(frames[t, c, yy, xx]) for c in range(n_channels)]
                weight = [state["weight"][k, yy, xx] for k in range(k_max)]
                variance = [state["variance"][k, yy, xx] for k in range(k_max)]
                mean = [[state["mean"][k, c, yy, xx] for c in range(n_channels)] for k in range(k_max)]
                value, n_modes = _pixel(
                    x, int(state["n_modes"][yy, xx]), weight, variance, mean, s, alpha, alpha1, prune, f
                )
                masks[t, yy, xx] = value
                state["n_modes"][yy, xx] = n_modes
                for k in range(k_max):
                    state["weight"][k, yy, xx] = weight[k]
                    state["variance"][k, yy, xx] = variance[k]
                    state["mean"][k, :, yy, xx] = mean[k]
    return masks, state


def reference_background_image(state: dict, background_ratio: float = 0.9, dtype=np.float64) -> np.ndarray:
    """``getBackgroundImage_intern`` for uint8 frames: ``(C, H, W)`` uint8."""
    f = dtype
    big_tb = f(background_ratio)
    _, n_channels, height, width = state["mean"].shape
    out = np.zeros((n_channels, height, width), dtype=np.uint8)
    for yy in range(height):
        for xx in range(width):
            acc = [f(0)] * n_channels
            total = f(0)
            for k in range(int(state["n_modes"][yy, xx])):
                w = state["weight"][k, yy, xx]
                for c in range(n_channels):
                    acc[c] = acc[c] + w * state["mean"][k, c, yy, xx]
                total = total + w
                if total > big_tb:
                    break
            inv = f(1) / total if abs(total) > FLT_EPSILON else f(0)
            for c in range(n_channels):
                # saturate_cast<uchar>(float): round half to even, then clamp to 0..255
                out[c, yy, xx] = int(min(max(np.rint(acc[c] * inv), 0), 255))
    return out

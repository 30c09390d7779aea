"""A slow, obviously-correct reference of the Stauffer-Grimson per-pixel background model.

Written pixel by pixel, component by component, in plain Python floats (IEEE float64, the
same arithmetic as NumPy float64) straight from the numbered steps of the model's specification
(steps 1-8 and "Inference"; the module docstring of ``torchgmm/background.py`` restates
them). It imports nothing from ``torchgmm``: it is the independent oracle of
``tests/test_background.py``.

Every sum is taken in the order the specification prescribes (channels in index order,
weights in index order), so a float64 implementation that follows the same specification
agrees with this one to the last bit, up to the transcendental functions of ``rho="paper"``.

Shapes: T frames, C channels, H, W pixels, K components.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["reference_mog", "reference_pixel_step", "fresh_state"]


def fresh_state(
    n_components: int, n_channels: int, height: int, width: int, *, init_var: float, covariance_type: str
) -> dict:
    """The unshaped model's state: all weights 0, all means 0, all variances ``init_var``."""
    k, c, h, w = n_components, n_channels, height, width
    variance_shape = (k, h, w) if covariance_type == "spherical" else (k, c, h, w)
    return {
        "weight": np.zeros((k, h, w), dtype=np.float64),
        "mean": np.zeros((k, c, h, w), dtype=np.float64),
        "variance": np.full(variance_shape, float(init_var), dtype=np.float64),
        "frames_seen": 0,
    }


def _sigma2(var_k: list[float]) -> float:
    """Per-channel variance of one component: var (spherical) or the channel mean (diag)."""
    if len(var_k) == 1:
        return var_k[0]
    total = 0.0
    for v in var_k:  # summed in channel order, then divided by C
        total = total + v
    return total / len(var_k)


def _sq_distance(x: list[float], mu_k: list[float]) -> float:
    d2 = 0.0
    for xc, mc in zip(x, mu_k):  # summed in channel order
        d2 = d2 + (xc - mc) * (xc - mc)
    return d2


def _first_match(x, w, mu, var, match_sigma) -> int | None:
    """Step 1: the smallest k with w[k] > 0 and d2[k] < lambda^2 C sigma2[k]."""
    n_channels = len(x)
    for k in range(len(w)):
        d2 = _sq_distance(x, mu[k])
        if w[k] > 0 and d2 < match_sigma**2 * n_channels * _sigma2(var[k]):
            return k
    return None


def _exclusive_cum(w: list[float], k: int) -> float:
    cum = 0.0
    for j in range(k):  # w[0] + ... + w[k-1], in index order
        cum = cum + w[j]
    return cum


def reference_pixel_step(
    x, w, mu, var, a, *, background_ratio, match_sigma, init_var, min_var, init_weight, rho, counters=None
):
    """One update (``a > 0``) of one pixel: steps 1-7 of the specification.

    Args:
        x: list of C floats on the 0..255 scale.
        w: list of K weights; mu: K lists of C means; var: K lists of 1 (spherical) or C
            (diag) variances. All in rank order; not modified.
        a: the rate of this frame.

    Returns:
        ``(foreground, w, mu, var, hit, order)``: the new state (rank order), the index the
        hit component had before the update (None when the last one was replaced), and
        the permutation the sort applied (new index -> old index).
    """
    n_components, n_channels = len(w), len(x)
    w = list(w)
    mu = [list(m) for m in mu]
    var = [list(v) for v in var]

    # 1. Match.
    hit = _first_match(x, w, mu, var, match_sigma)

    # 2. Weights: w[k] <- (1 - a) w[k] + a [k == hit].
    for k in range(n_components):
        w[k] = (1 - a) * w[k] + a * (1.0 if k == hit else 0.0)

    if hit is not None:
        # 3. The matched component's mean and variance, with the OLD mean's differences.
        diff = [x[c] - mu[hit][c] for c in range(n_channels)]
        d2 = _sq_distance(x, mu[hit])
        if rho == "constant":
            r = a
        elif rho == "inverse_weight":
            r = a / w[hit]  # w[hit] after step 2
        elif rho == "paper":
            if len(var[hit]) == 1:  # spherical
                s2 = var[hit][0]
                eta = (2 * math.pi * s2) ** (-n_channels / 2) * math.exp(-d2 / (2 * s2))
            else:  # diag: product over channels, in channel order
                eta = None
                for c in range(n_channels):
                    vc = var[hit][c]
                    term = (2 * math.pi * vc) ** (-0.5) * math.exp(-(diff[c] * diff[c]) / (2 * vc))
                    eta = term if eta is None else eta * term
            r = a * eta
        else:
            raise ValueError(f"unknown rho {rho!r}")
        r = min(r, 1.0)
        for c in range(n_channels):
            mu[hit][c] = mu[hit][c] + r * diff[c]
        if len(var[hit]) == 1:
            v = var[hit][0]
            var[hit][0] = max(v + r * (d2 / n_channels - v), min_var)
        else:
            for c in range(n_channels):
                v = var[hit][c]
                var[hit][c] = max(v + r * (diff[c] * diff[c] - v), min_var)
        own = hit
        if counters is not None:
            counters["match"] = counters.get("match", 0) + 1
    else:
        # 4. No match: the last component becomes the pixel.
        last = n_components - 1
        w[last] = init_weight
        mu[last] = [x[c] for c in range(n_channels)]
        var[last] = [float(init_var)] * len(var[last])
        own = last
        if counters is not None:
            counters["replace"] = counters.get("replace", 0) + 1

    # 5. Renormalise (sum in index order).
    s = 0.0
    for k in range(n_components):
        s = s + w[k]
    w = [w[k] / s for k in range(n_components)]

    # 6. Stable sort by w / sqrt(sigma2), descending. Python's sorted is stable; sorting on
    #    the negated key keeps equal keys in their order.
    keys = [w[k] / math.sqrt(_sigma2(var[k])) for k in range(n_components)]
    order = sorted(range(n_components), key=lambda k: -keys[k])
    w = [w[k] for k in order]
    mu = [mu[k] for k in order]
    var = [var[k] for k in order]
    new_own = order.index(own)
    if counters is not None and order != list(range(n_components)):
        counters["reorder"] = counters.get("reorder", 0) + 1

    # 7. Background iff the exclusive cumulative weight before it is <= T.
    foreground = not (_exclusive_cum(w, new_own) <= background_ratio)
    return foreground, w, mu, var, hit, order


def reference_pixel_infer(x, w, mu, var, *, background_ratio, match_sigma) -> bool:
    """Inference (explicit rate 0): steps 1 and 7 on the current state; True = foreground."""
    hit = _first_match(x, w, mu, var, match_sigma)
    return hit is None or _exclusive_cum(w, hit) > background_ratio


def reference_mog(
    frames: np.ndarray,
    *,
    n_components: int = 3,
    learning_rate: float = 0.001,
    background_ratio: float = 0.65,
    match_sigma: float = 2.5,
    init_var: float = 100.0,
    min_var: float = 100.0,
    init_weight: float = 0.05,
    rho: str = "constant",
    covariance_type: str = "spherical",
    warmup: bool = True,
    learning_rates: Sequence[float | None] | None = None,
    state: dict | None = None,
    counters: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Run the model over one stream, pixel by pixel.

    Args:
        frames: ``(T, C, H, W)`` uint8 (or any numbers on the 0..255 scale).
        learning_rates: optional per-frame explicit rates (length T); ``None`` entries (or
            ``None`` for all) use the schedule; ``0`` classifies without learning.
        state: a state to continue from (as returned); ``None`` = fresh. Not modified.
        counters: if a dict, incremented with ``"match"``, ``"replace"``, ``"reorder"``
            (pixel-updates), ``"infer"`` (pixel-inferences), ``"foreground"``,
            ``"background"``.

    Returns:
        ``(masks, state)``: ``masks`` ``(T, H, W)`` bool (True = foreground) and the final
        state ``{"weight": (K, H, W), "mean": (K, C, H, W), "variance": (K, H, W) or
        (K, C, H, W), "frames_seen": int}``, float64.
    """
    frames = np.asarray(frames)
    n_frames, n_channels, height, width = frames.shape
    if n_channels not in (1, 3):
        raise ValueError(f"C must be 1 or 3, got {n_channels}")
    if learning_rates is None:
        learning_rates = [None] * n_frames
    if len(learning_rates) != n_frames:
        raise ValueError("learning_rates must have one entry per frame")
    if state is None:
        state = fresh_state(n_components, n_channels, height, width, init_var=init_var, covariance_type=covariance_type)
    weight = state["weight"].astype(np.float64).copy()
    mean = state["mean"].astype(np.float64).copy()
    variance = state["variance"].astype(np.float64).copy()
    frames_seen = int(state["frames_seen"])
    spherical = covariance_type == "spherical"
    settings = dict(
        background_ratio=background_ratio,
        match_sigma=match_sigma,
        init_var=init_var,
        min_var=min_var,
        init_weight=init_weight,
        rho=rho,
    )

    masks = np.zeros((n_frames, height, width), dtype=bool)
    for t_index in range(n_frames):
        t = frames_seen + 1
        explicit = learning_rates[t_index]
        if t == 1:
            a = 1.0
        elif explicit is not None:
            a = float(explicit)
        elif warmup:
            a = max(float(learning_rate), 1.0 / t)
        else:
            a = float(learning_rate)
        for i in range(height):
            for j in range(width):
                x = [float(frames[t_index, c, i, j]) for c in range(n_channels)]
                w = [float(weight[k, i, j]) for k in range(n_components)]
                mu = [[float(mean[k, c, i, j]) for c in range(n_channels)] for k in range(n_components)]
                if spherical:
                    var = [[float(variance[k, i, j])] for k in range(n_components)]
                else:
                    var = [[float(variance[k, c, i, j]) for c in range(n_channels)] for k in range(n_components)]
                if a == 0:  # inference only: state unchanged
                    fg = reference_pixel_infer(
                        x, w, mu, var, background_ratio=background_ratio, match_sigma=match_sigma
                    )
                    if counters is not None:
                        counters["infer"] = counters.get("infer", 0) + 1
                else:
                    fg, w, mu, var, _, _ = reference_pixel_step(x, w, mu, var, a, counters=counters, **settings)
                    for k in range(n_components):
                        weight[k, i, j] = w[k]
                        for c in range(n_channels):
                            mean[k, c, i, j] = mu[k][c]
                        if spherical:
                            variance[k, i, j] = var[k][0]
                        else:
                            for c in range(n_channels):
                                variance[k, c, i, j] = var[k][c]
                masks[t_index, i, j] = fg
                if counters is not None:
                    key = "foreground" if fg else "background"
                    counters[key] = counters.get(key, 0) + 1
        if a != 0:
            frames_seen += 1
    return masks, {"weight": weight, "mean": mean, "variance": variance, "frames_seen": frames_seen}

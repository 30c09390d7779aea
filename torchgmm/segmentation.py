"""Histogram EM image segmentation (the classic cameraman demo) and :class:`HistogramSegmenter`.

For a grey image the 256-bin intensity histogram is the data: EM runs on the 256 bin values
``x = 0, 1, ..., 255`` (D = 1) weighted by their counts. This is exactly EM on every pixel
(the pixels of one bin are identical samples), but its cost does not depend on the image
size. Each pixel then gets the label of the component with the highest posterior, computed
once per grey level as a 256-entry lookup table and gathered per pixel, so there is no
per-pixel E-step. Components are sorted by mean: label 0 is the darkest class.

Conventions:

* **Colour** images ``(B, 3, H, W)`` are segmented on their luminance by default,
  ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), rounded to uint8. ``mode="rgb"`` fits a
  3-D full-covariance mixture to a random sample of pixels with the general engine
  (:func:`torchgmm.mixture.fit_gaussian_mixture`) and labels every pixel by its posterior;
  classes are then sorted by the luminance of their means.
* **16-bit** images (uint16) are reduced to 8 bits before the histogram, each by its own
  effective bit depth (:func:`to_uint8`): image ``b`` is shifted right by
  ``max(0, bit_length(max_b) - 8)`` bits, ``max_b`` its largest value. Full-range 16-bit
  data keeps its high byte (``v >> 8``), 12-bit data stored in 16 bits (0..4095) is shifted
  by 4 and so still spans 256 grey levels, and data below 256 is kept as it is. Labels are
  thus defined on up to 256 grey levels whatever the bit depth, with one 256-entry
  histogram and lookup table for every input; only the ``shift`` low bits are lost, i.e.
  differences below ``2^shift`` raw levels (at most 1/128 of the image's largest value).
  Fitted means and variances are in these reduced grey levels: times ``2^shift`` and
  ``4^shift`` they are (up to the truncation) in raw units.

Shape vocabulary: B images, K classes, C channels, H, W image size, D features.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from torchgmm.exceptions import NegligibleClassWarning
from torchgmm._checks import (
    ShapeError,
    check_choice,
    check_generators,
    check_ndim,
    check_positive_int,
    check_real,
    check_tensor,
)
from torchgmm.pixels import BT601, check_images, luma, to_grey_uint8, to_uint8
from torchgmm.mixture import (
    ConvergenceWarning,
    GaussianMixtureFit,
    Generators,
    estimate_log_prob,
    fit_gaussian_mixture,
)

__all__ = [
    "N_LEVELS",
    "BT601",
    "to_uint8",
    "to_grey_uint8",
    "image_histograms",
    "range_init",
    "HISTOGRAM_INITS",
    "fit_histogram_mixture",
    "posterior_lut",
    "label_lut",
    "apply_lut",
    "NegligibleClassWarning",
    "negligible_classes",
    "segment_images",
    "HistogramSegmenter",
    "palette",
    "colourise",
]

SegmentMode = Literal["luminance", "rgb"]
HistogramInit = Literal["range", "data-range", "kmeans++", "random"]
from torchgmm.defaults import HISTOGRAM_INITS  # noqa: E402 - the CLI reads it without torch

#: number of grey levels (histogram bins) the segmentation works on
N_LEVELS = 256
#: ITU-R BT.601 luma weights for R, G, B


# --- image preparation -------------------------------------------------------------------
def _check_not_empty(images: Tensor, name: str = "images") -> None:
    """Raise :class:`ShapeError` for B = 0, H = 0 or W = 0 (EM has nothing to fit)."""
    b, _, h, w = images.shape
    if b == 0 or h == 0 or w == 0:
        raise ShapeError(
            f"`{name}` must hold at least one image of at least one pixel (B, H, W >= 1), "
            f"got shape {tuple(images.shape)}."
        )


def _check_em_settings(tol: object, max_iter: object) -> None:
    """scikit-learn's ``GaussianMixture`` rules: ``tol`` a finite number >= 0, ``max_iter`` >= 1.

    ``max_iter=0`` would return the initialisation with a lower bound of -inf (not JSON).
    """
    check_positive_int(max_iter, "max_iter", minimum=1)
    check_real(tol, "tol", minimum=0)


def _check_label_dtype(label_dtype: object, n_classes: int) -> None:
    """Raise ``TypeError`` unless ``label_dtype`` is an integer dtype that holds ``0..K-1``."""
    if (
        not isinstance(label_dtype, torch.dtype)
        or label_dtype == torch.bool
        or label_dtype.is_floating_point
        or label_dtype.is_complex
    ):
        raise TypeError(
            f"`label_dtype` must be an integer torch dtype (torch.uint8, torch.int64, ...), got {label_dtype!r}."
        )
    if torch.iinfo(label_dtype).max < n_classes - 1:
        raise ValueError(
            f"`label_dtype` {label_dtype} cannot hold label {n_classes - 1} of n_classes={n_classes}; use torch.int64."
        )


def image_histograms(images: Tensor) -> Tensor:
    """256-bin intensity histograms of a batch of grey uint8 images in one ``bincount`` pass.

    Image ``b``'s pixel value ``v`` is counted in bin ``b * 256 + v`` of one flat histogram,
    so the whole batch costs a single kernel and no loop over images.

    Args:
        images: grey uint8 images.

    Returns:
        int64 pixel counts per grey level.

    Shape:
        - images: ``(B, 1, H, W)`` uint8
        - output: ``(B, 256)`` int64

    Example:
        >>> img = torch.tensor([[[[0, 0, 255]]]], dtype=torch.uint8)
        >>> image_histograms(img)[0, [0, 255]].tolist()
        [2, 1]
    """
    images = check_images(images)
    if images.shape[1] != 1 or images.dtype != torch.uint8:
        raise ShapeError(
            f"`images` must be grey uint8 of shape (B, 1, H, W), got shape {tuple(images.shape)} "
            f"and dtype {images.dtype}; convert with to_grey_uint8(images)."
        )
    return _histograms_from_index(_offset_index(images))


def _offset_index(grey: Tensor) -> Tensor:
    """``(B, H*W)`` int32 index ``b * 256 + v`` of every pixel into a flat ``(B * 256)`` table.

    One index serves both the histogram (``bincount``) and the table lookup
    (``index_select``); int32 halves the memory traffic of int64 on these passes.
    """
    b = grey.shape[0]
    idx = grey.reshape(b, -1).to(torch.int32)
    idx += torch.arange(b, device=grey.device, dtype=torch.int32).mul_(N_LEVELS).unsqueeze(1)
    return idx


def _histograms_from_index(idx: Tensor) -> Tensor:
    """``(B, 256)`` int64 counts from the ``(B, P)`` index of :func:`_offset_index`."""
    b = idx.shape[0]
    return torch.bincount(idx.reshape(-1), minlength=b * N_LEVELS).view(b, N_LEVELS)


# --- histogram EM ------------------------------------------------------------------------
def _check_hist(hist: object) -> Tensor:
    hist = check_tensor(hist, "hist")
    check_ndim(hist, "hist", (1, 2), "(B, L) or (L,)")
    return hist if hist.ndim == 2 else hist.unsqueeze(0)


def range_init(
    hist: Tensor,
    n_classes: int,
    *,
    span: Literal["full", "data"] = "full",
    var_floor: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Initial mixtures from cutting a range of grey levels into ``n_classes`` equal intervals.

    ``span="full"`` (the textbook cameraman demo) cuts all ``L`` levels: bin ``v`` falls in
    interval ``floor(v * K / L)`` (for K = 2 and L = 256: 0..127 and 128..255).
    ``span="data"`` cuts only the levels each image occupies, from its lowest non-empty bin
    ``lo`` to its highest ``hi``: bin ``v`` falls in ``floor((v - lo) * K / (hi - lo + 1))``,
    which for an image that spans ``0..L-1`` is the same cut. A low-contrast image (all
    pixels in 90..150, say) then starts with K classes inside its range instead of one
    interval holding everything. Each interval's count-weighted share, mean and variance
    start its component. An empty interval starts at the mean of its bins with share
    ``eps`` (renormalised); a variance below ``var_floor`` (one grey level squared by
    default, e.g. an interval whose pixels are all one value) is raised to it, so the init
    never holds NaN or zero variance.

    Args:
        hist: non-negative counts per grey level.
        n_classes: K, the number of components.
        span: ``"full"`` (all L levels) or ``"data"`` (each image's occupied levels).
        var_floor: smallest initial variance, in grey levels squared.
        dtype: floating dtype of the results.

    Returns:
        ``(weights, means, variances)``.

    Shape:
        - hist: ``(B, L)`` or ``(L,)``
        - weights: ``(B, K)``; means: ``(B, K)``; variances: ``(B, K)``

    Example:
        >>> hist = torch.zeros(256); hist[10] = 3; hist[200] = 1
        >>> w, mu, var = range_init(hist, 2)
        >>> w.tolist(), mu.tolist()
        ([[0.75, 0.25]], [[10.0, 200.0]])
        >>> hist = torch.zeros(256); hist[[100, 110, 120]] = 1
        >>> range_init(hist, 3)[1].tolist(), range_init(hist, 3, span="data")[1].tolist()
        ([[42.5, 110.0, 213.0]], [[100.0, 110.0, 120.0]])
    """
    hist = _check_hist(hist)
    k = check_positive_int(n_classes, "n_classes")
    check_choice(span, "span", ("full", "data"))
    b, levels = hist.shape
    if k > levels:
        raise ValueError(f"`n_classes` must be <= the number of bins {levels}, got {k}.")
    h = hist.to(dtype)
    v = torch.arange(levels, device=h.device, dtype=dtype)
    bins = torch.arange(levels, device=h.device)
    if span == "full":
        interval = torch.div(bins * k, levels, rounding_mode="floor")  # (L,)
    else:
        occupied = hist > 0
        lo = torch.where(occupied, bins, levels).amin(1, keepdim=True)  # (B, 1)
        hi = torch.where(occupied, bins, -1).amax(1, keepdim=True)
        empty = ~occupied.any(1, keepdim=True)  # an all-zero histogram: cut all levels
        lo, hi = lo.masked_fill(empty, 0), hi.masked_fill(empty, levels - 1)
        # bins outside [lo, hi] hold no pixels; clamped into the end intervals
        interval = torch.div((bins - lo) * k, hi - lo + 1, rounding_mode="floor").clamp(0, k - 1)  # (B, L)
    onehot = nn.functional.one_hot(interval, k).to(dtype)  # (L, K) or (B, L, K)
    # (B, 1, L) @ onehot: one matmul for a shared cut, a batched one for per-image cuts
    n_k = (h.unsqueeze(1) @ onehot).squeeze(1)  # (B, K) pixels per interval
    eps = torch.finfo(dtype).eps
    # (K,) or (B, K) mean bin of each interval (0 for an interval without bins, which can
    # only happen when an image occupies fewer than K levels)
    centre = (onehot * v.unsqueeze(1)).sum(-2) / onehot.sum(-2).clamp_min(1)
    safe = n_k.clamp_min(eps)
    # mu_k = sum_v h_v v / n_k ; var_k = sum_v h_v (v - mu_k)^2 / n_k   over the bins of interval k
    means = torch.where(n_k > 0, ((h * v).unsqueeze(1) @ onehot).squeeze(1) / safe, centre.expand(b, k))
    sq = (h.unsqueeze(2) * onehot * (v.view(1, levels, 1) - means.unsqueeze(1)) ** 2).sum(1)
    variances = (sq / safe).clamp_min(var_floor)
    weights = n_k.clamp_min(eps)
    weights = weights / weights.sum(1, keepdim=True)
    return weights, means, variances


def _sort_fit(fit: GaussianMixtureFit, key: Tensor) -> GaussianMixtureFit:
    """Reorder the components of ``fit`` by ascending ``key`` ``(B, K)``; ties keep their order.

    Ties are real: in an image of one grey level every class fits that level exactly, and
    only the weights tell the class holding the pixels from the emptied ones. A stable sort
    keeps the init's order there on every device (CUDA's default sort of up to 32 keys is a
    bitonic network, which permutes equal keys: the pixels would change class).
    """
    order = key.argsort(dim=1, stable=True)  # (B, K)

    def take(t: Tensor) -> Tensor:
        idx = order.view(order.shape + (1,) * (t.ndim - 2)).expand_as(t)
        return t.gather(1, idx)

    return fit._replace(
        weights=take(fit.weights),
        means=take(fit.means),
        covariances=take(fit.covariances),
        precisions_cholesky=take(fit.precisions_cholesky),
    )


def fit_histogram_mixture(
    hist: Tensor,
    n_classes: int,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    init: HistogramInit = "range",
    dtype: torch.dtype = torch.float64,
    generator: Generators = None,
) -> GaussianMixtureFit:
    """Fit a 1-D Gaussian mixture to each grey-level histogram by count-weighted EM.

    The samples are the bin values ``0..L-1`` and their weights the counts, which is EM on
    every pixel. EM stops when the mean log-likelihood per pixel changes by less than
    ``tol`` or after ``max_iter`` iterations. The result is sorted by mean (component 0 is
    the darkest).

    Args:
        hist: non-negative counts per grey level (from :func:`image_histograms`).
        n_classes: K, the number of classes.
        tol: convergence threshold on the change of the mean log-likelihood (>= 0).
        max_iter: most EM iterations (>= 1, as in scikit-learn).
        reg_covar: added to every variance at each M-step.
        init: how EM starts. ``"range"`` (default, the textbook demo): cut all grey levels
            ``0..L-1`` into K equal intervals (:func:`range_init`); classes that share an
            interval, or an empty interval, can leave a class with no weight.
            ``"data-range"``: cut the levels each image occupies, ``[min, max]``, into K
            equal intervals (``range_init(span="data")``): better for low-contrast
            images, deterministic. ``"kmeans++"``: k-means++ seeding plus a few Lloyd
            iterations on the count-weighted grey levels (random, seeded by
            ``generator``): finds classes that share an interval. ``"random"``: random
            responsibilities.
        dtype: floating dtype of the fit; float64 by default (exact for any image size).
        generator: randomness for the ``"kmeans++"``/``"random"`` inits: one generator for
            the batch's draws, or a sequence of B, one per histogram, so that each one's
            init is the one it gets alone, whatever else is in the batch (see
            :func:`~torchgmm.mixture.fit_gaussian_mixture`).

    Returns:
        :class:`~torchgmm.mixture.GaussianMixtureFit` with ``covariance_type="full"`` and
        D = 1, components sorted by mean.

    Shape:
        - hist: ``(B, L)`` or ``(L,)``, any real dtype
        - weights: ``(B, K)``; means: ``(B, K, 1)``; covariances: ``(B, K, 1, 1)``; all ``dtype``

    Example:
        >>> img = torch.cat([torch.full((1, 1, 8, 8), 40), torch.full((1, 1, 8, 8), 200)], 3)
        >>> fit = fit_histogram_mixture(image_histograms(img.to(torch.uint8)), 2)
        >>> fit.means[0, :, 0].round().tolist()
        [40.0, 200.0]
    """
    hist = _check_hist(hist)
    check_choice(init, "init", HISTOGRAM_INITS)
    _check_em_settings(tol, max_iter)
    b, levels = hist.shape
    x = torch.arange(levels, device=hist.device, dtype=dtype).view(1, levels, 1).expand(b, -1, -1)
    w = hist.to(dtype)
    kwargs: dict = {}
    if init in ("range", "data-range"):
        span = "full" if init == "range" else "data"
        weights0, means0, var0 = range_init(hist, n_classes, span=span, dtype=dtype)
        kwargs = dict(
            weights_init=weights0,
            means_init=means0.unsqueeze(-1),
            precisions_init=(1.0 / var0).view(b, n_classes, 1, 1),
        )
    fit = fit_gaussian_mixture(
        x,
        n_classes,
        sample_weight=w,
        covariance_type="full",
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        # the range inits give every parameter explicitly; the engine's own is then unused
        init_params="range" if kwargs else init,
        generator=generator,
        **kwargs,
    )
    return _sort_fit(fit, fit.means[..., 0])


def posterior_lut(fit: GaussianMixtureFit, n_levels: int = N_LEVELS) -> Tensor:
    """Posterior probability of each class for every grey level.

    A lookup table for :func:`apply_lut`: ``apply_lut(posterior_lut(fit), grey)`` gives the
    ``(B, K, H, W)`` class posteriors of every pixel.

    Args:
        fit: a 1-D full-covariance fit (from :func:`fit_histogram_mixture`).
        n_levels: number of grey levels L.

    Returns:
        ``p(k | v)`` for ``v = 0..L-1``, summing to one over K, in the fit's dtype.

    Shape:
        - fit.means: ``(B, K, 1)``
        - output: ``(B, K, L)``, the dtype of ``fit.means`` (float64 by default)

    Example:
        >>> img = torch.cat([torch.full((1, 1, 4, 4), 30), torch.full((1, 1, 4, 4), 220)], 3)
        >>> post = posterior_lut(fit_histogram_mixture(image_histograms(img.to(torch.uint8)), 2))
        >>> post.shape, post[0, :, [30, 220]].argmax(dim=0).tolist()
        (torch.Size([1, 2, 256]), [0, 1])
    """
    # p(k | v) = softmax_k log p(v, k)
    return _log_joint_lut(fit, n_levels).softmax(dim=2).transpose(1, 2)


def label_lut(fit: GaussianMixtureFit, n_levels: int = N_LEVELS) -> Tensor:
    """Most probable class of every grey level: a lookup table for :func:`apply_lut`.

    Args:
        fit: a 1-D full-covariance fit (from :func:`fit_histogram_mixture`).
        n_levels: number of grey levels L.

    Returns:
        int64 class per grey level (argmax posterior).

    Shape:
        - fit.means: ``(B, K, 1)``
        - output: ``(B, L)`` int64, values in ``0..K-1``

    Example:
        >>> img = torch.cat([torch.full((1, 1, 4, 4), 30), torch.full((1, 1, 4, 4), 220)], 3)
        >>> lut = label_lut(fit_histogram_mixture(image_histograms(img.to(torch.uint8)), 2))
        >>> lut.shape, lut[0, [0, 30, 220, 255]].tolist()
        (torch.Size([1, 256]), [0, 0, 1, 1])
    """
    return _log_joint_lut(fit, n_levels).argmax(dim=2)  # argmax_k p(k | v) = argmax_k p(v, k)


def _log_joint_lut(fit: GaussianMixtureFit, n_levels: int) -> Tensor:
    """``(B, L, K)`` log p(v, k) = log N(v | mu_k, sigma_k^2) + log pi_k for v = 0..L-1."""
    b = fit.means.shape[0]
    v = torch.arange(n_levels, device=fit.means.device, dtype=fit.means.dtype)
    v = v.view(1, n_levels, 1).expand(b, -1, -1)
    log_joint = estimate_log_prob(v, fit.means, fit.precisions_cholesky, "full")
    return log_joint + fit.weights.log().unsqueeze(1)


def apply_lut(lut: Tensor, images: Tensor) -> Tensor:
    """Look every pixel up in its image's table (a gather, no per-pixel arithmetic).

    Args:
        lut: per-image table, ``(B, L)`` (labels) or ``(B, K, L)`` (per-class values such as
            posteriors).
        images: grey uint8 images.

    Returns:
        ``lut[b, images[b]]``, or ``lut[b, :, images[b]]`` for a 3-D table.

    Shape:
        - lut: ``(B, L)`` or ``(B, K, L)``
        - images: ``(B, 1, H, W)``
        - output: ``(B, H, W)`` or ``(B, K, H, W)``

    Example:
        >>> lut = torch.arange(256).flip(0).unsqueeze(0)
        >>> apply_lut(lut, torch.tensor([[[[0, 255]]]], dtype=torch.uint8)).tolist()
        [[[255, 0]]]
    """
    lut = check_tensor(lut, "lut")
    images = check_tensor(images, "images")
    check_ndim(lut, "lut", (2, 3), "(B, L) or (B, K, L)")
    check_ndim(images, "images", (4,), "(B, 1, H, W)")
    if images.shape[1] != 1 or images.shape[0] != lut.shape[0]:
        raise ShapeError(
            f"`images` must have shape (B, 1, H, W) with B = {lut.shape[0]} (the table's batch), "
            f"got {tuple(images.shape)}."
        )
    if images.dtype != torch.uint8:
        raise TypeError(f"`images` must be grey uint8, got dtype {images.dtype}; use to_grey_uint8.")
    if lut.shape[-1] != N_LEVELS:
        raise ShapeError(f"`lut` must have {N_LEVELS} entries per image, got shape {tuple(lut.shape)}.")
    b, _, h, w = images.shape
    return _lookup(lut, _offset_index(images), h, w)


def _lookup(lut: Tensor, idx: Tensor, h: int, w: int) -> Tensor:
    """:func:`apply_lut` on the flat index of :func:`_offset_index`."""
    b = lut.shape[0]
    if lut.ndim == 2:
        # labels[b, p] = lut[b, v[b, p]] = flat_lut[b * 256 + v[b, p]]
        return lut.reshape(-1).index_select(0, idx.reshape(-1)).view(b, h, w)
    k = lut.shape[1]
    rows = lut.transpose(1, 2).reshape(b * N_LEVELS, k).index_select(0, idx.reshape(-1))
    return rows.view(b, h, w, k).permute(0, 3, 1, 2).contiguous()


# --- colour (3-D) segmentation -----------------------------------------------------------
def _fit_rgb(
    images: Tensor,
    n_classes: int,
    *,
    n_samples: int,
    tol: float,
    max_iter: int,
    reg_covar: float,
    generator: Generators,
) -> GaussianMixtureFit:
    """Fit a 3-D full-covariance mixture to ``n_samples`` random pixels of each image
    (``generator``: one, or one per image, as in :func:`fit_histogram_mixture`)."""
    b, c, h, w = images.shape
    pix = images.reshape(b, c, h * w).transpose(1, 2).to(torch.float64)  # (B, H*W, 3)
    n = min(n_samples, h * w)
    check_generators(generator, b, images.device)
    if n < h * w:
        if generator is None or isinstance(generator, torch.Generator):
            idx = torch.randint(h * w, (b, n), device=images.device, generator=generator)
        else:  # each image's sample as if it were alone
            idx = torch.stack([torch.randint(h * w, (n,), device=images.device, generator=g) for g in generator])
        pix = pix.gather(1, idx.unsqueeze(2).expand(b, n, c))
    fit = fit_gaussian_mixture(
        pix,
        n_classes,
        covariance_type="full",
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        init_params="kmeans++",
        generator=generator,
    )
    brightness = luma(*fit.means.unbind(-1))  # (B, K)
    return _sort_fit(fit, brightness)


def _rgb_log_joint(images: Tensor, fit: GaussianMixtureFit) -> Tensor:
    b, c, h, w = images.shape
    pix = images.reshape(b, c, h * w).transpose(1, 2).to(fit.means.dtype)
    log_joint = estimate_log_prob(pix, fit.means, fit.precisions_cholesky, "full")
    return log_joint + fit.weights.log().unsqueeze(1)  # (B, H*W, K)


def negligible_classes(weights: Tensor, n_pixels: int) -> Tensor:
    """Which fitted classes hold less than half a pixel's worth of weight: ``weight * n_pixels < 1/2``.

    EM's weight of a class is its share of the pixels' responsibilities,
    ``weight_k = sum_n r_nk / n_pixels``, so ``weight * n_pixels`` is the number of pixels
    the class explains. Below one half, no pixel belongs to the class even by a majority
    (``r_nk < 1/2`` for every pixel): it is no class of the image but an initial component
    that EM emptied, and EM cannot revive it (its responsibilities scale with its weight).
    Emptied classes end at the M-step's floor, ``weight * n_pixels ~ 1e-15``; a class that
    owns a single pixel ends at about 1 (just under it in images of fewer than K pixels, as
    the M-step's floor is shared out), so one half separates the two with a margin on both
    sides, whatever the image size.

    Args:
        weights: fitted mixing weights (e.g. ``fit.weights``).
        n_pixels: pixels the weights were fitted to (``H * W``; the sample size in
            ``mode="rgb"``).

    Returns:
        True where a class is negligible.

    Shape:
        - weights: ``(B, K)``
        - output: ``(B, K)`` bool

    Example:
        >>> negligible_classes(torch.tensor([[0.5, 1e-19, 0.5]]), 64 * 64).tolist()
        [[False, True, False]]
    """
    return weights * n_pixels < 0.5


def _fitted_pixels(mode: str, h: int, w: int, n_samples: int) -> int:
    """Pixels per image the mixture weights are shares of: all of them, or the ``rgb`` sample."""
    return min(n_samples, h * w) if mode == "rgb" else h * w


def _negligible_hint(mode: str, init: str) -> str:
    """What to try when a class ends negligible, for the message of a warning."""
    if mode == "rgb":
        return 'mode="rgb" starts from k-means++ on sampled pixels; try fewer classes or another seed'
    tried = {
        "range": f'init="range" cuts [0, {N_LEVELS - 1}] into K equal intervals, which leaves a class '
        "empty when two classes share an interval or an interval holds no pixels",
        "data-range": 'init="data-range" cuts the occupied grey levels into K equal intervals, which '
        "leaves a class empty when two classes share an interval",
    }.get(init, f'init="{init}" started it')
    others = [f'init="{other}"' for other in ("kmeans++", "data-range") if other != init]
    return f"{tried}; try {' or '.join(others)}, or fewer classes"


def _join(values: list) -> str:
    return ", ".join(map(str, values))


def _warn_negligible(weights: Tensor, n_pixels: int, mode: str, init: str, stacklevel: int) -> None:
    """Warn (:class:`NegligibleClassWarning`) naming the images whose fit has a negligible class."""
    negligible = negligible_classes(weights, n_pixels)
    if not bool(negligible.any()):  # one host sync per batch; the message is built only when needed
        return
    b, k = negligible.shape
    rows = negligible.any(1).nonzero().flatten().tolist()
    shown = ", ".join(f"{r} (class {_join(negligible[r].nonzero().flatten().tolist())})" for r in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    warnings.warn(
        f"{len(rows)} of {b} image(s) were segmented into fewer than n_classes={k} classes (a class "
        f"holds less than half a pixel's worth of weight): batch index {shown}{more}. "
        f"{_negligible_hint(mode, init)}.",
        NegligibleClassWarning,
        stacklevel=stacklevel + 1,
    )


def segment_images(
    images: Tensor,
    n_classes: int,
    *,
    mode: SegmentMode = "luminance",
    init: HistogramInit = "range",
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    n_samples: int = 20_000,
    generator: Generators = None,
    label_dtype: torch.dtype = torch.int64,
) -> tuple[Tensor, GaussianMixtureFit]:
    """Segment a batch of images into ``n_classes`` intensity (or colour) classes.

    ``mode="luminance"`` (default): histogram EM on the grey level (the luminance of RGB
    input); ``mode="rgb"``: a 3-D full-covariance mixture fitted to ``n_samples`` random
    pixels per image (RGB input only). Classes are sorted darkest first. When a fitted class
    ends with less than half a pixel's worth of weight (:func:`negligible_classes`), the image
    is segmented into fewer classes than asked and a :class:`NegligibleClassWarning` names
    its batch index.

    Args:
        images: uint8 (or uint16, reduced to 8 bits per image by :func:`to_uint8`) images.
        n_classes: K.
        mode: ``"luminance"`` or ``"rgb"``.
        init: how the histogram EM starts (``mode="luminance"``): ``"range"`` (default,
            the textbook demo: [0, 255] cut into K equal intervals), ``"data-range"``
            (each image's [min, max] cut into K), ``"kmeans++"`` or ``"random"`` (seeded by
            ``generator``); see :func:`fit_histogram_mixture`. ``mode="rgb"`` always starts
            from k-means++ on the sampled pixels.
        tol: EM convergence threshold on the mean log-likelihood.
        max_iter: most EM iterations.
        reg_covar: added to the variances at each M-step.
        n_samples: pixels sampled per image for ``mode="rgb"``.
        generator: randomness for the ``"rgb"`` pixel sample and init, and for the
            ``"kmeans++"``/``"random"`` inits: one generator for the whole batch's draws (an
            image's result then depends on the rest of its batch), or a sequence of B
            generators, one per image (its result is the one it gets alone with that
            generator; :class:`HistogramSegmenter` and ``torchgmm segment`` seed one per
            image with their ``random_state``).
        label_dtype: integer dtype of the labels that holds ``K - 1``; ``torch.uint8`` writes
            8x less memory (K <= 256).

    Returns:
        ``(labels, fit)``: labels (int64 by default) and the fitted mixtures (D = 1 or 3).

    Raises:
        TypeError: ``images`` is not uint8/uint16, or ``label_dtype`` is not an integer dtype.
        ShapeError: ``images`` is not ``(B, 1 or 3, H, W)`` with B, H, W >= 1.
        ValueError: ``n_classes``, ``tol`` or ``max_iter`` is out of range (``max_iter >= 1``,
            ``tol >= 0``), ``mode`` or ``init`` is unknown, ``label_dtype`` cannot hold
            ``n_classes - 1``, or ``mode="rgb"`` gets fewer pixels (or ``n_samples``) than
            ``n_classes``.

    Warns:
        NegligibleClassWarning: a class of some image holds less than half a pixel's worth of
            weight (the message gives the batch indices and what to try).

    Shape:
        - images: ``(B, 1, H, W)`` or ``(B, 3, H, W)``, uint8 or uint16
        - labels: ``(B, H, W)`` ``label_dtype`` (int64 by default), values in ``0..K-1``

    Example:
        >>> img = torch.cat([torch.full((1, 1, 4, 4), 30), torch.full((1, 1, 4, 4), 220)], 3)
        >>> labels, fit = segment_images(img.to(torch.uint8), 2)
        >>> labels[0, 0].tolist()
        [0, 0, 0, 0, 1, 1, 1, 1]
    """
    labels, fit = _segment_images(
        images,
        n_classes,
        mode=mode,
        init=init,
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
        n_samples=n_samples,
        generator=generator,
        label_dtype=label_dtype,
    )
    n_pixels = _fitted_pixels(mode, labels.shape[1], labels.shape[2], n_samples)
    _warn_negligible(fit.weights, n_pixels, mode, init, stacklevel=2)
    return labels, fit


def _segment_images(
    images: Tensor,
    n_classes: int,
    *,
    mode: SegmentMode,
    init: HistogramInit,
    tol: float,
    max_iter: int,
    reg_covar: float,
    n_samples: int,
    generator: Generators,
    label_dtype: torch.dtype,
) -> tuple[Tensor, GaussianMixtureFit]:
    """:func:`segment_images` without its warning (callers warn in their own words)."""
    images = check_images(images)
    check_choice(mode, "mode", ("luminance", "rgb"))
    check_choice(init, "init", HISTOGRAM_INITS)
    k = check_positive_int(n_classes, "n_classes")
    _check_em_settings(tol, max_iter)
    _check_label_dtype(label_dtype, k)
    _check_not_empty(images)
    if mode == "rgb":
        if images.shape[1] != 3:
            raise ShapeError(
                f'`mode="rgb"` needs (B, 3, H, W) images, got shape {tuple(images.shape)}; '
                'use mode="luminance" for grey images.'
            )
        # EM on pixels needs at least one sample per component (the histogram mode does not:
        # it always fits the 256 grey levels)
        n_pix = images.shape[2] * images.shape[3]
        if min(n_pix, n_samples) < k:
            raise ValueError(
                f'`mode="rgb"` needs at least n_classes={k} pixels per image, got '
                f"H x W = {n_pix} and n_samples = {n_samples}; use fewer classes, "
                'larger images or mode="luminance".'
            )
        images = to_uint8(images)
        fit = _fit_rgb(
            images,
            n_classes,
            n_samples=n_samples,
            tol=tol,
            max_iter=max_iter,
            reg_covar=reg_covar,
            generator=generator,
        )
        labels = _rgb_log_joint(images, fit).argmax(dim=2).to(label_dtype)
        return labels.view(images.shape[0], *images.shape[2:]), fit
    grey = to_grey_uint8(images)
    _, _, h, w = grey.shape
    idx = _offset_index(grey)  # one index for histogram and lookup
    fit = fit_histogram_mixture(
        _histograms_from_index(idx),
        n_classes,
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
        init=init,
        generator=generator,
    )
    # == apply_lut(label_lut(fit), grey)
    return _lookup(label_lut(fit).to(label_dtype), idx, h, w), fit


# --- module ------------------------------------------------------------------------------
def _is_one_image(images: object, name: str = "images") -> bool:
    """The segmenter's one shape rule: 4-D is a batch ``(B, C, H, W)``, 3-D is one
    ``(C, H, W)`` image (as torchvision transforms take it), C = 1 or 3; anything else is
    refused here with what to pass instead (a 3-D tensor is never a batch of grey images)."""
    if not isinstance(images, Tensor) or images.ndim == 4:
        return False  # checked by _check_images
    if images.ndim == 3 and images.shape[0] in (1, 3):
        return True
    if images.ndim == 3:
        raise ShapeError(
            f"`{name}` of shape {tuple(images.shape)}: a 3-D tensor is one (C, H, W) image with C = 1 "
            "(grey) or 3 (RGB); pass a batch of grey images as (B, 1, H, W) (images[:, None]), and drop "
            "an alpha channel with images[:3]."
        )
    if images.ndim == 2:
        raise ShapeError(
            f"`{name}` of shape {tuple(images.shape)}: a grey image needs its channel dimension, "
            "(1, H, W) (image[None]); a batch is (B, C, H, W)."
        )
    return False


class HistogramSegmenter(nn.Module):
    """Segment images into ``n_classes`` intensity classes by histogram EM, one mixture per image.

    Each ``forward`` fits a fresh mixture to every image of the batch (in one batched EM,
    without a host sync per image) and stores the fits in buffers; :meth:`predict_proba`
    then gives the class posteriors of those images. See :func:`segment_images`. A forward
    warns (:class:`NegligibleClassWarning`, naming the batch indices) when an image ends
    with a class of less than half a pixel's worth of weight, i.e. fewer classes than asked.

    Args:
        n_classes: K, the number of classes.
        mode: ``"luminance"`` (histogram EM on grey level / BT.601 luminance) or ``"rgb"``
            (3-D full-covariance mixture on sampled pixels).
        init: how the histogram EM starts: ``"range"`` (default, [0, 255] cut into K equal
            intervals), ``"data-range"`` (each image's [min, max] cut into K),
            ``"kmeans++"`` or ``"random"`` (seeded by ``random_state``); see
            :func:`fit_histogram_mixture`. Not used by ``mode="rgb"`` (k-means++ always).
        tol: EM convergence threshold on the mean log-likelihood.
        max_iter: most EM iterations.
        reg_covar: added to the variances at each M-step.
        n_samples: pixels sampled per image for ``mode="rgb"``.
        random_state: seed of the ``"rgb"`` pixel sample and init, and of the
            ``"kmeans++"``/``"random"`` inits, for each image alone: an image gets the same
            result whatever batch it comes in (None: torch's global generator, one draw for
            the batch).
        label_dtype: dtype of the returned labels (int64 by default; uint8 is lighter).

    Shape:
        - Input: ``(B, 1, H, W)`` or ``(B, 3, H, W)``, uint8 (or uint16); or one ``(C, H, W)``
          image with C = 1 or 3, as a torchvision transform takes it. The rule: 4-D is a
          batch, 3-D is always one image (a batch of grey images needs its channel
          dimension, ``(B, 1, H, W)``; a 3-D tensor with another C is refused), and a 2-D
          ``(H, W)`` image is refused (add its channel: ``image[None]``).
        - Output: ``(B, H, W)`` labels of ``label_dtype`` (int64 by default), 0 the darkest
          class; ``(H, W)`` for one image.

    Example:
        >>> seg = HistogramSegmenter(n_classes=2)
        >>> img = torch.cat([torch.full((1, 1, 4, 4), 30), torch.full((1, 1, 4, 4), 220)], 3)
        >>> seg(img.to(torch.uint8)).shape, seg.means_.shape
        (torch.Size([1, 4, 8]), torch.Size([1, 2, 1]))
        >>> seg(img[0].to(torch.uint8)).shape   # one (C, H, W) image, as in a torchvision transform
        torch.Size([4, 8])
    """

    #: (B, K) mixing weights of the last forward's fits
    weights_: Tensor
    #: (B, K, D) component means (D = 1 grey level, or 3 for mode="rgb")
    means_: Tensor
    #: (B, K, D, D) component covariances
    covariances_: Tensor
    #: (B, K, D, D) Cholesky factors of the precisions
    precisions_cholesky_: Tensor
    #: (B,) mean log-likelihood per pixel at the end of EM
    lower_bound_: Tensor
    #: (B,) EM iterations run
    n_iter_: Tensor
    #: (B,) whether EM converged within max_iter
    converged_: Tensor

    _state = (
        "weights_",
        "means_",
        "covariances_",
        "precisions_cholesky_",
        "lower_bound_",
        "n_iter_",
        "converged_",
    )
    #: whether forward warns about negligible classes (segment_files reports them per file)
    _warn_negligible = True

    def __init__(
        self,
        n_classes: int = 3,
        *,
        mode: SegmentMode = "luminance",
        init: HistogramInit = "range",
        tol: float = 1e-3,
        max_iter: int = 100,
        reg_covar: float = 1e-6,
        n_samples: int = 20_000,
        random_state: int | None = None,
        label_dtype: torch.dtype = torch.int64,
    ) -> None:
        super().__init__()
        self.n_classes = check_positive_int(n_classes, "n_classes")
        check_choice(mode, "mode", ("luminance", "rgb"))
        check_choice(init, "init", HISTOGRAM_INITS)
        # checked now, as torch modules check their arguments, not at the first batch
        _check_em_settings(tol, max_iter)
        _check_label_dtype(label_dtype, self.n_classes)
        check_real(reg_covar, "reg_covar", minimum=0)
        check_positive_int(n_samples, "n_samples")
        self.label_dtype = label_dtype
        self.mode = mode
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.reg_covar = reg_covar
        self.n_samples = n_samples
        self.random_state = random_state
        self.reset()

    def reset(self) -> None:
        """Forget the fits (buffers become empty, keeping their device and dtype)."""
        for name in self._state:
            old = getattr(self, name, None)
            if old is not None:
                empty = old.new_empty((0,))
            elif name == "n_iter_":
                empty = torch.empty(0, dtype=torch.int64)
            elif name == "converged_":
                empty = torch.empty(0, dtype=torch.bool)
            else:
                empty = torch.empty(0, dtype=torch.float64)
            self.register_buffer(name, empty, persistent=True)

    @property
    def variances_(self) -> Tensor:
        """(B, K) variances of grey-level fits (the diagonal of ``covariances_`` for RGB)."""
        return self.covariances_.diagonal(dim1=-2, dim2=-1).squeeze(-1)

    def _fit(self) -> GaussianMixtureFit:
        if self.means_.numel() == 0:
            raise RuntimeError("HistogramSegmenter has no fits yet: call it on images first.")
        return GaussianMixtureFit(**{name[:-1]: getattr(self, name) for name in self._state})

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # fitted buffers change shape with the batch: take the incoming shapes
        for name in self._state:
            key = prefix + name
            if key in state_dict:
                self._buffers[name] = self._buffers[name].new_empty(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: Tensor) -> Tensor:
        """Fit one mixture per image and return the label maps (see class docstring).

        An unbatched ``(C, H, W)`` image, as torchvision transforms take one, gives ``(H, W)``
        labels; its fit is stored as a batch of one.
        """
        # warnings name the caller: above _segment are forward and nn.Module's two call frames
        if _is_one_image(images):
            return self._segment(images[None], stacklevel=5)[0]
        return self._segment(images, stacklevel=5)

    def _segment(self, images: Tensor, stacklevel: int) -> Tensor:
        gen = None
        if self.random_state is not None and isinstance(images, Tensor) and images.ndim == 4:
            # one generator per image, each seeded alike: an image's random draws (rgb sample,
            # kmeans++/random init) are then the same whatever batch it comes in
            gen = [torch.Generator(device=images.device).manual_seed(self.random_state) for _ in range(images.shape[0])]
        labels, fit = _segment_images(
            images,
            self.n_classes,
            mode=self.mode,
            init=self.init,
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            n_samples=self.n_samples,
            generator=gen,
            label_dtype=self.label_dtype,
        )
        for name in self._state:
            setattr(self, name, getattr(fit, name[:-1]))
        if self._warn_negligible:
            n_pixels = _fitted_pixels(self.mode, labels.shape[1], labels.shape[2], self.n_samples)
            _warn_negligible(fit.weights, n_pixels, self.mode, self.init, stacklevel=stacklevel)
        if not bool(fit.converged.all()):  # one host sync per batch, not per image
            n_bad = int((~fit.converged).sum())
            warnings.warn(
                f"EM did not converge within max_iter={self.max_iter} for {n_bad} of "
                f"{fit.converged.numel()} image(s); raise `max_iter` or `tol`.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )
        return labels

    def predict_proba(self, images: Tensor) -> Tensor:
        """Class posteriors of ``images`` under the fits of the last forward call.

        Args:
            images: the images given to the last forward call (same batch size).

        Returns:
            ``p(k | pixel)``, summing to one over K.

        Shape:
            - images: ``(B, 1, H, W)`` or ``(B, 3, H, W)``; or one ``(C, H, W)`` image
            - output: ``(B, K, H, W)``; ``(K, H, W)`` for one image
        """
        if _is_one_image(images):
            return self.predict_proba(images[None])[0]
        fit = self._fit()
        images = check_images(images)
        if images.shape[0] != fit.means.shape[0]:
            raise ShapeError(
                f"`images` has batch size {images.shape[0]} but the last forward fitted "
                f"{fit.means.shape[0]} images; call the segmenter on these images first."
            )
        if fit.means.shape[-1] == 3:
            b, _, h, w = images.shape
            post = _rgb_log_joint(to_uint8(images), fit).softmax(dim=2)
            return post.transpose(1, 2).reshape(b, -1, h, w)
        return apply_lut(posterior_lut(fit), to_grey_uint8(images))

    def extra_repr(self) -> str:
        return (
            f"n_classes={self.n_classes}, mode={self.mode!r}, init={self.init!r}, tol={self.tol}, "
            f"max_iter={self.max_iter}"
        )


# --- files -------------------------------------------------------------------------------
#: colours of the first classes in colourised label maps (matplotlib's tab10), RGB uint8
_PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def palette(n_classes: int) -> Tensor:
    """RGB colour per class: matplotlib's tab10, then evenly spaced hues beyond 10 classes.

    Args:
        n_classes: K, the number of colours.

    Returns:
        uint8 RGB colours, class ``k`` in row ``k``.

    Shape:
        - output: ``(K, 3)`` uint8

    Example:
        >>> palette(2).tolist()
        [[31, 119, 180], [255, 127, 14]]
        >>> palette(12).shape
        torch.Size([12, 3])
    """
    check_positive_int(n_classes, "n_classes")
    cols = list(_PALETTE[:n_classes])
    for i in range(len(cols), n_classes):
        hue = (i - 10) / max(n_classes - 10, 1)
        rgb = [0.5 + 0.5 * math.cos(2 * math.pi * (hue + s)) for s in (0.0, 1 / 3, 2 / 3)]
        cols.append(tuple(int(round(255 * c)) for c in rgb))
    return torch.tensor(cols, dtype=torch.uint8)


def colourise(labels: Tensor, n_classes: int) -> Tensor:
    """Colour integer label maps with the :func:`palette` colours.

    Args:
        labels: class labels in ``0..n_classes-1`` (any integer dtype, e.g. from
            :func:`segment_images`), on any device.
        n_classes: K, the number of palette colours.

    Returns:
        uint8 RGB images on the device of ``labels``.

    Raises:
        ShapeError: ``labels`` is not a ``(B, H, W)`` integer tensor.
        ValueError: a label is negative or ``>= n_classes`` (the message gives the range found).

    Shape:
        - labels: ``(B, H, W)`` integer
        - output: ``(B, 3, H, W)`` uint8

    Example:
        >>> rgb = colourise(torch.tensor([[[0, 1]]]), 2)
        >>> rgb.shape, rgb[0, :, 0, 1].tolist()
        (torch.Size([1, 3, 1, 2]), [255, 127, 14])
    """
    check_tensor(labels, "labels")
    if labels.ndim != 3 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ShapeError(
            f"`labels` must be a (B, H, W) integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}."
        )
    b, h, w = labels.shape
    pal = palette(n_classes).to(labels.device).t().contiguous()  # (3, K)
    if labels.numel():
        # one host sync: an out-of-range label would otherwise be a raw index error
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"`labels` must lie in 0..{n_classes - 1} for n_classes={n_classes}, got values "
                f"from {lo} to {hi}; pass the n_classes the labels were made with."
            )
    # colour[b, c, y, x] = palette[labels[b, y, x], c]: one index_select for all channels
    rgb = pal.index_select(1, labels.reshape(-1).to(torch.int32))  # (3, B*H*W)
    return rgb.view(3, b, h, w).transpose(0, 1).contiguous()

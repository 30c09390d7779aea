"""torchgmm: Gaussian mixtures in PyTorch.

EM for Gaussian mixtures as batched tensor ops (:class:`GaussianMixture`), histogram-EM image
segmentation (:class:`HistogramSegmenter`) and the Stauffer-Grimson adaptive per-pixel
mixture background model for video (:class:`BackgroundSubtractorMOG`). Decoding and
writing live in :mod:`torchgmm.io`, change-detection scores in :mod:`torchgmm.metrics`.

Shape vocabulary used in every docstring: B batch (independent problems, images or video
streams), N samples, D features, K components, T frames, C channels, H height, W width.
"""

from __future__ import annotations

from torchgmm.background import BackgroundSubtractorMOG, mog_foreground, mog_update
from torchgmm.mixture import GaussianMixture, fit_gaussian_mixture
from torchgmm.segmentation import (
    HistogramSegmenter,
    apply_lut,
    fit_histogram_mixture,
    image_histograms,
    label_lut,
    segment_files,
    segment_images,
)

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "fit_gaussian_mixture",
    "HistogramSegmenter",
    "segment_images",
    "segment_files",
    "image_histograms",
    "fit_histogram_mixture",
    "label_lut",
    "apply_lut",
    "BackgroundSubtractorMOG",
    "mog_update",
    "mog_foreground",
    "__version__",
]

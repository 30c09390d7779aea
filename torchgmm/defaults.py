"""Presets and defaults that the command line needs before any work: no torch imported here.

Building the ``torchgmm`` parser must not import torch (about 2.5 s), so that ``--help``
answers at once; the settings its options offer live here, and the jobs read them from here.

Example:
    >>> sorted(PRESETS), PRESETS["default"]["n_components"]
    (['cdnet-baseline', 'default'], 3)
    >>> HISTOGRAM_INITS[0]
    'range'
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "HISTOGRAM_INITS", "BACKGROUND_MODELS", "VIDEO_BACKENDS"]

#: initialisations of the histogram EM (see :func:`torchgmm.segmentation.fit_histogram_mixture`)
HISTOGRAM_INITS = ("range", "data-range", "kmeans++", "random")

#: the per-pixel models of ``torchgmm background --model`` (see
#: :func:`torchgmm.jobs.background.make_background_model`): Stauffer-Grimson (the default) and
#: Zivkovic's MOG2 as OpenCV computes it
BACKGROUND_MODELS = ("mog", "mog2")

#: what decodes video files (:class:`torchgmm.io.video.VideoReader`'s ``backend``, ``torchgmm
#: background --decoder``): PyAV (the default, a dependency) or TorchCodec (an optional extra)
VIDEO_BACKENDS = ("pyav", "torchcodec")

#: Named settings of :class:`BackgroundSubtractorMOG` (any of its keyword arguments).
#: ``"default"`` is the module's defaults; ``"cdnet-baseline"`` reaches the published
#: Stauffer-Grimson CDnet 2014 baseline F-measure (0.8245) without post-processing.
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(n_components=3, learning_rate=0.005, background_ratio=0.7),
    # Tuned on CDnet baseline/highway and baseline/office (scripts/eval_cdnet.py; the README
    # has the table and the sensitivity to T). With the warm-up rate max(alpha, 1/t) a slow
    # alpha makes each component a running average over the whole clip; T = 0.5 keeps a person
    # who sits still in the foreground for as long as the office scene needs; sigma >= 10
    # (min_var = init_var = 100) absorbs JPEG noise and illumination flicker; OpenCV bgsegm's
    # constant rho scored slightly higher than rho = alpha / w (office 0.90 vs 0.89 at T = 0.4).
    "cdnet-baseline": dict(
        n_components=3, learning_rate=0.0005, background_ratio=0.5, rho="constant", min_var=100.0, init_var=100.0
    ),
}

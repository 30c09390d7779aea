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

__all__ = ["PRESETS", "HISTOGRAM_INITS", "BACKGROUND_MODELS", "VIDEO_BACKENDS", "EVALUATION_METHODS"]

#: initialisations of the histogram EM (see :func:`torchgmm.segmentation.fit_histogram_mixture`)
HISTOGRAM_INITS = ("range", "data-range", "kmeans++", "random")

#: the per-pixel models of ``torchgmm background --model`` (see
#: :func:`torchgmm.jobs.background.make_background_model`): Stauffer-Grimson (the default) and
#: Zivkovic's MOG2 as OpenCV computes it
BACKGROUND_MODELS = ("mog", "mog2")

#: what decodes video files (:class:`torchgmm.io.video.VideoReader`'s ``backend``, ``torchgmm
#: background --decoder``): PyAV (the default, a dependency) or TorchCodec (an optional extra)
VIDEO_BACKENDS = ("pyav", "torchcodec")

#: the methods ``torchgmm evaluate --method`` scores (see
#: :func:`torchgmm.jobs.baselines.method_factories`): torchgmm's models, and OpenCV's as the
#: references (``mog2-defaults`` / ``mog2-shadows``: MOG2 at OpenCV's defaults, shadows off / on)
EVALUATION_METHODS = ("torchgmm", "torchgmm-mog2", "mog2", "mog2-defaults", "mog2-shadows", "bgsegm-mog")

#: Named settings of :class:`BackgroundSubtractorMOG` (any of its keyword arguments).
#: ``"default"`` is the module's defaults (a test keeps the two equal); ``"cdnet-baseline"``
#: is for footage where people or objects stay still for long (an office, a waiting room).
PRESETS: dict[str, dict[str, Any]] = {
    # Chosen on CDnet baseline/highway and baseline/office and checked out of sample on
    # baseline/pedestrians (docs/benchmarks.md, "Accuracy on CDnet", has the sweep): the
    # variance floor sigma >= 10 (min_var = init_var = 100) absorbs JPEG artefacts and
    # flicker and did the most; alpha = 0.001 (the CDnet 2014 Stauffer-Grimson entry's rate)
    # and T = 0.65 keep still people in the foreground while a second mode of up to 35% of
    # the weight still joins the background; rho = alpha (OpenCV bgsegm's) scored above
    # alpha / w.
    "default": dict(
        n_components=3, learning_rate=0.001, background_ratio=0.65, rho="constant", min_var=100.0, init_var=100.0
    ),
    # Slower and stricter still: with the warm-up rate max(alpha, 1/t) a slow alpha makes each
    # component a running average over the whole clip, and T = 0.5 keeps a person who sits
    # still in the office scene in the foreground for as long as it needs.
    "cdnet-baseline": dict(
        n_components=3, learning_rate=0.0005, background_ratio=0.5, rho="constant", min_var=100.0, init_var=100.0
    ),
}

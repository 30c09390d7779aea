"""torchgmm: Gaussian mixtures in PyTorch.

EM for Gaussian mixtures as batched tensor ops (:class:`GaussianMixture`), histogram-EM image
segmentation (:class:`HistogramSegmenter`) and the Stauffer-Grimson adaptive per-pixel
mixture background models for video (:class:`BackgroundSubtractorMOG`,
:class:`BackgroundSubtractorMOG2`). Decoding and writing live in :mod:`torchgmm.io`, the jobs
on files (``segment``, ``background``, ``evaluate``) in :mod:`torchgmm.jobs`, change-detection
scores in :mod:`torchgmm.metrics`.

Shape vocabulary used in every docstring: B batch (independent problems, images or video
streams), N samples, D features, K components, T frames, C channels, H height, W width.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    from torchgmm.exceptions import (
        ConvergenceWarning,
        NegligibleClassWarning,
        OutputFolderBusyError,
        ShapeError,
        TorchGMMError,
        TorchGMMWarning,
        UndefinedScoreWarning,
        VideoDecodeError,
    )
    from torchgmm.background import BackgroundSubtractorMOG, mog_foreground, mog_shadow, mog_update
    from torchgmm.mixture import GaussianMixture, fit_gaussian_mixture
    from torchgmm.mixture_chunked import fit_gaussian_mixture_stepwise
    from torchgmm.mog2 import BackgroundSubtractorMOG2, detect_shadow_gmm, mog2_background_image, mog2_update
    from torchgmm.segmentation import (
        HistogramSegmenter,
        apply_lut,
        fit_histogram_mixture,
        image_histograms,
        label_lut,
        segment_images,
    )
    from torchgmm.jobs.background import run_background
    from torchgmm.jobs.evaluate import evaluate_dataset
    from torchgmm.jobs.segment import segment_files

__version__ = "0.1.0"

#: public name -> the module that defines it. Imported on first use (PEP 562), so that
#: ``import torchgmm`` and the ``torchgmm`` command start without importing torch: the
#: command can then answer ``--help`` at once and turn a Ctrl-C during start-up into
#: "interrupted" instead of a traceback from inside torch's import.
_EXPORTS = {
    "GaussianMixture": "torchgmm.mixture",
    "fit_gaussian_mixture": "torchgmm.mixture",
    "fit_gaussian_mixture_stepwise": "torchgmm.mixture_chunked",
    "HistogramSegmenter": "torchgmm.segmentation",
    "segment_images": "torchgmm.segmentation",
    "segment_files": "torchgmm.jobs.segment",
    "run_background": "torchgmm.jobs.background",
    "evaluate_dataset": "torchgmm.jobs.evaluate",
    "image_histograms": "torchgmm.segmentation",
    "fit_histogram_mixture": "torchgmm.segmentation",
    "label_lut": "torchgmm.segmentation",
    "apply_lut": "torchgmm.segmentation",
    "TorchGMMError": "torchgmm.exceptions",
    "ShapeError": "torchgmm.exceptions",
    "VideoDecodeError": "torchgmm.exceptions",
    "OutputFolderBusyError": "torchgmm.exceptions",
    "TorchGMMWarning": "torchgmm.exceptions",
    "ConvergenceWarning": "torchgmm.exceptions",
    "NegligibleClassWarning": "torchgmm.exceptions",
    "UndefinedScoreWarning": "torchgmm.exceptions",
    "BackgroundSubtractorMOG": "torchgmm.background",
    "mog_update": "torchgmm.background",
    "mog_foreground": "torchgmm.background",
    "mog_shadow": "torchgmm.background",
    "BackgroundSubtractorMOG2": "torchgmm.mog2",
    "mog2_update": "torchgmm.mog2",
    "detect_shadow_gmm": "torchgmm.mog2",
    "mog2_background_image": "torchgmm.mog2",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchgmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

"""The errors and warnings torchgmm raises, in one place (no torch imported here).

Every error is a subclass of :class:`TorchGMMError` and of the built-in exception a caller
would catch without knowing torchgmm (``ValueError``, ``OSError``, ...); every warning is a
:class:`TorchGMMWarning`. All are re-exported at the top level (``torchgmm.ShapeError``).

Example:
    >>> import torch, torchgmm
    >>> try:
    ...     torchgmm.GaussianMixture(2).fit(torch.zeros(3))
    ... except torchgmm.ShapeError as exc:  # also a ValueError and a TorchGMMError
    ...     print(isinstance(exc, ValueError), isinstance(exc, TorchGMMError))
    True True
"""

from __future__ import annotations

import os

__all__ = [
    "TorchGMMError",
    "ShapeError",
    "VideoDecodeError",
    "OutputFolderBusyError",
    "TorchGMMWarning",
    "ConvergenceWarning",
    "NegligibleClassWarning",
    "UndefinedScoreWarning",
]


class TorchGMMError(Exception):
    """Base class of torchgmm's errors."""


class ShapeError(TorchGMMError, ValueError):
    """A tensor argument has the wrong number of dimensions or the wrong sizes."""


class VideoDecodeError(TorchGMMError, RuntimeError, ValueError):
    """A video (or an image of a sequence) could not be decoded.

    Attributes:
        path: the file.
        frame_index: the 0-based index of the first frame that could not be read, or None when
            the file could not be opened at all.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, frame_index: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.frame_index = frame_index


class OutputFolderBusyError(TorchGMMError, OSError):
    """Another torchgmm run holds the lock of an output folder (see
    :func:`torchgmm.io.images.lock_output_folder`)."""


class TorchGMMWarning(UserWarning):
    """Base class of torchgmm's warnings."""


class ConvergenceWarning(TorchGMMWarning):
    """EM stopped at ``max_iter`` before the lower bound changed by less than ``tol``."""


class NegligibleClassWarning(TorchGMMWarning):
    """A fitted class ended with less than half a pixel's worth of weight
    (:func:`torchgmm.segmentation.negligible_classes`).

    The image was segmented into fewer classes than asked: usually because the
    ``init="range"`` cut put two classes into one interval or left an interval empty.
    """


class UndefinedScoreWarning(TorchGMMWarning):
    """A score is undefined (NaN): its denominator counts no pixel (see
    :func:`torchgmm.metrics.scores`)."""

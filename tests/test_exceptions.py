"""Public errors and warnings: one home, re-exported at the top level and where they are raised."""

from __future__ import annotations

import pytest

import torchgmm
from torchgmm import exceptions


@pytest.mark.parametrize("name", exceptions.__all__)
def test_each_is_public_at_the_top_level(name):
    assert getattr(torchgmm, name) is getattr(exceptions, name)


def test_old_import_paths_are_the_same_classes():
    from torchgmm._checks import ShapeError
    from torchgmm.io.images import OutputFolderBusyError
    from torchgmm.io.video import VideoDecodeError
    from torchgmm.metrics import UndefinedScoreWarning
    from torchgmm.mixture import ConvergenceWarning
    from torchgmm.segmentation import NegligibleClassWarning

    assert (ShapeError, VideoDecodeError, OutputFolderBusyError) == (
        exceptions.ShapeError,
        exceptions.VideoDecodeError,
        exceptions.OutputFolderBusyError,
    )
    assert (ConvergenceWarning, NegligibleClassWarning, UndefinedScoreWarning) == (
        exceptions.ConvergenceWarning,
        exceptions.NegligibleClassWarning,
        exceptions.UndefinedScoreWarning,
    )


def test_errors_are_also_the_builtins_callers_catch():
    assert issubclass(exceptions.ShapeError, ValueError)
    assert issubclass(exceptions.VideoDecodeError, RuntimeError) and issubclass(exceptions.VideoDecodeError, ValueError)
    assert issubclass(exceptions.OutputFolderBusyError, OSError)
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(
            cls,
            exceptions.TorchGMMError
            if issubclass(cls, Exception) and not issubclass(cls, Warning)
            else exceptions.TorchGMMWarning,
        ), name

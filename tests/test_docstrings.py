"""The examples in public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "torchgmm.mixture",
    "torchgmm.segmentation",
    "torchgmm.background",
    "torchgmm.metrics",
    "torchgmm.postprocess",
    "torchgmm.io.images",
    "torchgmm.io.video",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0

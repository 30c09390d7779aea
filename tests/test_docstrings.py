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
    "torchgmm.mog2",
    "torchgmm.metrics",
    "torchgmm.postprocess",
    "torchgmm.io.images",
    "torchgmm.io.video",
    "torchgmm.jobs.segment",
    "torchgmm.jobs.background",
    "torchgmm.jobs.checkpoint",
    "torchgmm.jobs.outputs",
    "torchgmm.jobs.evaluate",
    "torchgmm.jobs.baselines",
    "torchgmm.jobs.ray_engine",
    "torchgmm._streams",
    "torchgmm.pixels",
    "torchgmm.defaults",
    "torchgmm.exceptions",
    "torchgmm.mixture_chunked",
    "torchgmm.distributed",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0


def test_public_names_import_lazily_and_resolve():
    # `import torchgmm` (and so the `torchgmm` command's start-up) does not import torch; every
    # name in __all__ resolves to the object of the module that defines it
    import subprocess
    import sys

    code = "import sys, torchgmm, torchgmm.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
    import torchgmm

    for name in torchgmm.__all__:
        value = getattr(torchgmm, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(torchgmm._EXPORTS[name]), name)
    assert set(torchgmm.__all__) <= set(dir(torchgmm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        torchgmm.nope  # noqa: B018


def test_ctrl_c_while_the_command_starts_reads_interrupted(monkeypatch, capsys):
    from torchgmm import cli

    def importing_torch():
        raise KeyboardInterrupt  # where building the parser imports torch

    monkeypatch.setattr(cli, "build_parser", importing_torch)
    assert cli.main(["segment", "x", "--out", "y"]) == 130
    assert capsys.readouterr().err.startswith("interrupted")

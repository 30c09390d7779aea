"""Shared fixtures: devices (CUDA cases skip cleanly) and per-dtype tolerances."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_background_build_left():
    """A test whose model starts an ahead-of-time build (compile="aot", the CPU jobs'
    default) does not leave it running beside the next tests."""
    yield
    from torchgmm import _aot

    if _aot._builds:
        _aot.stop_builds()


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device the test should run on; CUDA is skipped without a GPU."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """rtol/atol for comparing results computed in ``dtype`` against a float64 reference."""
    return {
        torch.float16: dict(rtol=1e-2, atol=1e-2),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float32: dict(rtol=1e-4, atol=1e-5),
        torch.float64: dict(rtol=1e-9, atol=1e-12),
    }[dtype]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One PyTorch thread for a module's tests, restored afterwards.

    For tiny frames one thread is ~10x faster than two on a busy 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

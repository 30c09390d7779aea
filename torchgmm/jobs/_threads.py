"""How many threads PyTorch gets for a job's model steps on the CPU, one rule for every job.

The jobs decode (and encode) on threads beside the model; PyTorch's OpenMP workers wait at
the end of each parallel step for the one whose core such a thread took. On a small step
that wait is most of the step, so it gets one core fewer; a large step gains from all of
them (docs/benchmarks.md, "Jobs end to end", has the measurements).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["SMALL_STEP_PIXELS", "step_threads"]

#: a step of fewer pixels (over all streams) leaves a core to the decoding thread
SMALL_STEP_PIXELS = 2**16


@contextlib.contextmanager
def step_threads(device: torch.device | str, pixels: int) -> Iterator[None]:
    """PyTorch's threads while a job steps a model of ``pixels`` pixels (all streams) on
    ``device``: one core fewer than there are for a small step, else all of them; only on
    the CPU and when nobody chose (OMP_NUM_THREADS unset, the default count), restored after.

    Example:
        >>> with step_threads("cpu", 1920 * 1080):
        ...     pass  # the model's steps here
    """
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    on_cpu = str(device) != "auto" and torch.device(device).type == "cpu"
    if not on_cpu or "OMP_NUM_THREADS" in os.environ or threads != cores or cores == 1:
        yield
        return
    torch.set_num_threads(cores - 1 if pixels < SMALL_STEP_PIXELS else cores)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

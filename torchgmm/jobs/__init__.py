"""The jobs on files: ``torchgmm segment``, ``background`` and ``evaluate`` as library functions.

Each job is a module of its own, reading as a short list of named steps over small option
objects; the maths modules (:mod:`torchgmm.mixture`, :mod:`torchgmm.segmentation`,
:mod:`torchgmm.background`, :mod:`torchgmm.mog2`, :mod:`torchgmm.postprocess`,
:mod:`torchgmm.metrics`) know nothing of files, and :mod:`torchgmm.io` holds the codecs,
readers and writers the jobs use.

- :mod:`torchgmm.jobs.segment`: :func:`segment_files` (image files -> label maps and records);
- :mod:`torchgmm.jobs.background`: :func:`run_background` (videos -> masks, background images,
  summaries), with :mod:`torchgmm.jobs.checkpoint` (its resumable state) and
  :mod:`torchgmm.jobs.outputs` (its mask and overlay files);
- :mod:`torchgmm.jobs.evaluate`: :func:`evaluate_dataset` (CDnet scores), with
  :mod:`torchgmm.jobs.baselines` (the models it compares, OpenCV's included);
- :mod:`torchgmm.jobs.ray_engine`: ``engine="ray"`` of ``segment`` and ``background``, the
  per-file work on a Ray cluster.

Names are imported on first use, so that importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "segment_files": "torchgmm.jobs.segment",
    "SegmentSummary": "torchgmm.jobs.segment",
    "run_background": "torchgmm.jobs.background",
    "FrameSelection": "torchgmm.jobs.background",
    "MaskOutputs": "torchgmm.jobs.background",
    "make_background_model": "torchgmm.jobs.background",
    "evaluate_dataset": "torchgmm.jobs.evaluate",
    "evaluate_sequence": "torchgmm.jobs.evaluate",
    "find_cdnet_sequences": "torchgmm.jobs.evaluate",
    "write_results": "torchgmm.jobs.evaluate",
    "format_table": "torchgmm.jobs.evaluate",
    "method_factories": "torchgmm.jobs.baselines",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchgmm.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

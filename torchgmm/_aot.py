"""The per-pixel models' step compiled ahead of time (AOTInductor), for ``compile="aot"``.

A process whose ``torch.compile`` cache is warm still imports Dynamo and Inductor, traces
the step and loads its kernel before the first frame (2-6 s on the 2-core machine); an
AOTInductor package of the same step loads in about a second. A package holds one
configuration for every frame size (H and W are dynamic in the exported program; the other
sizes, the layouts and the constant arguments are baked in). It is compiled once, with
:func:`torchgmm.background.compile_step`'s Inductor options, and kept in Inductor's cache
directory (``TORCHINDUCTOR_CACHE_DIR``), named by a digest of everything its code depends
on: the model sources, the torch version, the CPU's vector capability, the thread count
(fixed in the compiled kernel), the configuration and the arguments' description. The
kernel is Inductor's in both paths, so the masks are those of the ``torch.compile`` step.
The trade-off (docs/benchmarks.md, "Jobs end to end"): the first build takes 5-8 s longer
than ``torch.compile``'s cold compile, a frame about 10% longer.

CPU only: on CUDA, ``compile="aot"`` uses ``torch.compile``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

#: the modules whose code a step runs: a change to any of them makes new packages
_SOURCES = ("background.py", "mog2.py", "_shadows.py", "_streams.py", "pixels.py")

#: AOT steps by (step function, configuration), shared by all modules
_steps: dict[tuple, AotStep] = {}
#: (step function, configuration) whose build or load failed: torch.compile runs them
_failures: set[tuple] = set()


def run_ahead_of_time(step_fn: Callable, config: tuple, args: tuple) -> tuple | None:
    """``compile="aot"`` on CPU: ``step_fn(*args)`` through its package, or None when building
    or loading it failed for this configuration (said once in a warning; the model's
    ``torch.compile`` path runs it from then on)."""
    key = (step_fn.__qualname__, config)
    if key in _failures:
        return None
    try:
        return aot_step(step_fn, config)(*args)
    except Exception as exc:  # noqa: BLE001 - any export or compiler failure: the JIT path is there
        _failures.add(key)
        warnings.warn(
            f"compile='aot': the ahead-of-time compile failed ({type(exc).__name__}: {exc}); using torch.compile.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def aot_step(step_fn: Callable, config: tuple) -> AotStep:
    """The ahead-of-time compiled ``step_fn`` for ``config`` (one per process and key)."""
    key = (step_fn.__qualname__, config)
    step = _steps.get(key)
    if step is None:
        step = _steps[key] = AotStep(step_fn, config)
    return step


def package_folder() -> Path:
    """Where the packages are kept: ``torchgmm_aot`` in Inductor's cache directory."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "torchgmm_aot"


def _sources_digest() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()


def _describe(x: Any) -> Any:
    """What a package depends on of one argument: a constant's value; a tensor's dtype,
    device, layout (the order of its strides) and sizes but the last two, H and W, which
    the package takes as dynamic (one package serves every frame size)."""
    if not isinstance(x, Tensor):
        return repr(x)
    order = tuple(sorted(range(x.ndim), key=lambda d: (-x.stride(d), d)))
    sizes = tuple(x.shape[:-2]) if x.ndim >= 2 else tuple(x.shape)
    return sizes, order, str(x.dtype), x.device.type


def _dynamic_shapes(tensors: list[Tensor]) -> tuple:
    """``torch.export``'s dynamic shapes: H and W (the last two sizes) of every per-pixel
    tensor, one pair of symbols for all of them."""
    from torch.export import Dim

    height, width = Dim("height", min=2), Dim("width", min=2)
    return tuple({t.ndim - 2: height, t.ndim - 1: width} if t.ndim >= 2 else None for t in tensors)


class AotStep:
    """``step_fn(*args)`` for one configuration through AOTInductor packages, one per
    signature (shapes and dtypes of the tensor arguments, values of the others)."""

    def __init__(self, step_fn: Callable, config: tuple) -> None:
        self.step_fn, self.config = step_fn, config
        self.runners: dict[tuple, Any] = {}

    def __call__(self, *args: Any) -> tuple:
        leaves, spec = pytree.tree_flatten(args)
        signature = (str(spec), tuple(_describe(x) for x in leaves))
        runner = self.runners.get(signature)
        if runner is None:
            runner = self.runners[signature] = self._load(leaves, spec, signature)
        return tuple(runner(*(x for x in leaves if isinstance(x, Tensor))))

    def package_path(self, signature: tuple) -> Path:
        """The package file of one signature (see the module docstring for what names it)."""
        # the kernel's OpenMP thread count is fixed when it is compiled: part of the name
        machine = (torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
        key = repr((self.step_fn.__qualname__, _sources_digest(), machine, self.config, signature))
        return package_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt2"

    def _load(self, leaves: list, spec: Any, signature: tuple) -> Any:
        path = self.package_path(signature)
        from torchgmm.background import _quiet_cuda_home_notice

        _quiet_cuda_home_notice()  # also logged when a package loads
        if not path.is_file():
            self._build(path, leaves, spec)
        return torch._inductor.aoti_load_package(str(path))

    def _build(self, path: Path, leaves: list, spec: Any) -> None:
        """Export the step with its tensors as inputs and compile the package, written under a
        temporary name and renamed, so a concurrent process never loads half a file."""
        positions = [i for i, x in enumerate(leaves) if isinstance(x, Tensor)]
        step_fn = self.step_fn

        class _Step(nn.Module):
            def forward(self, *tensors: Tensor) -> Any:
                full = list(leaves)
                for i, t in zip(positions, tensors):
                    full[i] = t
                return step_fn(*pytree.tree_unflatten(full, spec))

        from torchgmm.background import INDUCTOR_OPTIONS

        tensors = [leaves[i] for i in positions]
        program = torch.export.export(_Step(), tuple(tensors), dynamic_shapes=(_dynamic_shapes(tensors),))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.pt2")
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(partial), inductor_configs=dict(INDUCTOR_OPTIONS)
            )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

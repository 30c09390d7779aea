"""The per-pixel models' step compiled ahead of time (AOTInductor): ``compile="aot"``, and
``compile=None`` (the default) on the CPU.

A process whose ``torch.compile`` cache is warm still imports Dynamo and Inductor and traces
the step before the first frame (seconds); an AOTInductor package of the same step loads in
milliseconds, without either (docs/benchmarks.md, "Jobs end to end"). A package holds one
configuration for every frame size (H and W are dynamic in the exported program; the other
sizes, the layouts and the constant arguments are baked in). It is compiled with
:func:`torchgmm.background.compile_step`'s Inductor options and kept in Inductor's cache
directory (``TORCHINDUCTOR_CACHE_DIR``), named by a digest of everything its code depends
on: the model sources, the torch version, the CPU's vector capability, the thread count
(fixed in the compiled kernel), the configuration and the arguments' description.

A missing package is built by a separate process (``python -m torchgmm._aot REQUEST``)
while the model runs its eager step, and the model switches to the package once it is
built. The eager step and Inductor's kernel compute the same arithmetic, so the masks and
states are those of an uninterrupted compiled run (tests/test_aot.py checks it bit for
bit): a cold start's first frames run at the eager step's pace instead of waiting for a
compile. A build outlives a process that ends first, so the next run starts compiled; a
marker beside the package names the builder's pid, so that a second process (another job,
a Ray worker) waits for that build instead of starting its own.

CPU only: on CUDA, ``compile="aot"`` uses ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
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
#: the builds this process started and has not seen end, by package path
_builds: dict[Path, _Build] = {}
#: what an AotStep returns while its package is being built
NOT_READY = "not ready"


def run_ahead_of_time(step_fn: Callable, config: tuple, args: tuple) -> tuple | None:
    """``compile="aot"`` on CPU: ``step_fn(*args)`` through its package, or eagerly (the same
    arithmetic) while the package is being built; None when building or loading it failed
    for this configuration (said once in a warning; the model's ``torch.compile`` path runs
    it from then on)."""
    key = (step_fn.__qualname__, config)
    if key in _failures:
        return None
    try:
        out = aot_step(step_fn, config)(*args)
    except Exception as exc:  # noqa: BLE001 - any export or compiler failure: the JIT path is there
        _failures.add(key)
        warnings.warn(
            f"compile='aot': the ahead-of-time compile failed ({type(exc).__name__}: {exc}); using torch.compile.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return step_fn(*args) if out is NOT_READY else out


def aot_step(step_fn: Callable, config: tuple) -> AotStep:
    """The ahead-of-time compiled ``step_fn`` for ``config`` (one per process and key)."""
    key = (step_fn.__qualname__, config)
    step = _steps.get(key)
    if step is None:
        step = _steps[key] = AotStep(step_fn, config)
    return step


def package_folder() -> Path:
    """Where the packages are kept: ``torchgmm_aot`` in Inductor's cache directory."""
    return inductor_cache_dir() / "torchgmm_aot"


def inductor_cache_dir() -> Path:
    """Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``, else ``torchinductor_<user>`` in
    the temporary folder), named as ``torch._inductor.runtime.cache_dir_utils.cache_dir`` names
    it but without importing Inductor, which imports Dynamo: longer than the whole load of a
    built package."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            getuid = getattr(os, "getuid", None)
            user = f"uid_{getuid()}" if callable(getuid) else "unknown_user"
        folder = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return Path(os.path.abspath(folder))


@functools.cache
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


def load_package(path: Path) -> Callable[..., Any]:
    """A package's model as a function of its tensor inputs.

    Through ``torch._C._aoti`` directly: ``torch._inductor.aoti_load_package`` imports Inductor
    and Dynamo and parses the output's tree spec on every call."""
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is None:  # a torch without the binding: the public loader
        return torch._inductor.aoti_load_package(str(path))
    loader = loader_class(str(path), "model", False, 1, -1)  # model name, multi-threaded, 1 runner, CPU
    out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def run(*tensors: Tensor) -> Any:
        return pytree.tree_unflatten(loader.boxed_run(list(tensors)), out_spec)

    return run


class AotStep:
    """``step_fn(*args)`` for one configuration through AOTInductor packages, one per
    signature (shapes and dtypes of the tensor arguments, values of the others)."""

    def __init__(self, step_fn: Callable, config: tuple) -> None:
        self.step_fn, self.config = step_fn, config
        self.runners: dict[tuple, Any] = {}

    def __call__(self, *args: Any) -> tuple | str:
        leaves, spec = pytree.tree_flatten(args)
        signature = (str(spec), tuple(_describe(x) for x in leaves))
        runner = self.runners.get(signature)
        if runner is None:
            path = self.package_path(signature)
            if self._building(path, args):
                return NOT_READY
            from torchgmm.background import _quiet_cuda_home_notice

            _quiet_cuda_home_notice()  # also logged when a package loads
            runner = self.runners[signature] = load_package(path)
        return tuple(runner(*(x for x in leaves if isinstance(x, Tensor))))

    def package_path(self, signature: tuple) -> Path:
        """The package file of one signature (see the module docstring for what names it)."""
        # the kernel's OpenMP thread count is fixed when it is compiled: part of the name
        machine = (torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
        key = repr((self.step_fn.__qualname__, _sources_digest(), machine, self.config, signature))
        return package_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt2"

    def _building(self, path: Path, args: tuple) -> bool:
        """Whether the package at ``path`` is still being built; starts its build if there is
        no package and no build under way; raises if the build failed."""
        build = _builds.get(path)
        if build is None:
            if path.is_file():
                return False
            if _builder_elsewhere(path):  # another process builds it (a second job, a Ray worker)
                return True
            build = _builds[path] = _Build.start(path, self.step_fn, self.config, args)
        code = build.process.poll()  # a waitpid: microseconds, once per frame while building
        if code is None:  # renamed into place: complete, though its builder may not have exited
            return not path.is_file()
        del _builds[path]
        log = build.finish()
        if code != 0 or not path.is_file():
            raise RuntimeError(f"building {path.name} exited with {code}: " + " | ".join(log.splitlines()[-3:]))
        return False

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


def _small_example(x: Any, height: int = 480, width: int = 640) -> Any:
    """A per-pixel tensor's top-left corner, dense in the same layout (the order of its
    strides), as an example for the export: a 4K state would be a gigabyte to save.

    Not smaller: Inductor takes the example's sizes as hints for its loop schedule, and MOG2's
    kernel built from an 8x12 corner ran markedly slower per 640x480 frame than one built
    from the frame itself (docs/benchmarks.md, "Jobs end to end"); from 480x640 up the
    schedule is the large-frame one."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        return x
    corner = x[..., :height, :width]
    strides, step = [0] * x.ndim, 1
    # innermost first; a size-1 dimension shares its stride with the next one out: inner of it
    for d in sorted(range(x.ndim), key=lambda d: (x.stride(d), x.shape[d] != 1, d)):
        strides[d], step = step, step * corner.shape[d]
    return torch.empty_strided(corner.shape, strides, dtype=x.dtype, device=x.device).copy_(corner)


def _build_command(request: Path) -> list[str]:
    """The builder process's command line."""
    if getattr(sys, "frozen", False):  # an application bundle: sys.executable is not Python
        raise RuntimeError("no Python interpreter to build the package with (a frozen application)")
    return [sys.executable, "-m", "torchgmm._aot", str(request)]


def _marker(path: Path) -> Path:
    """The file that names the process building ``path`` (its pid), for other processes."""
    return path.with_name(f".{path.stem}.building")


def _builder_elsewhere(path: Path) -> bool:
    """Whether a live process named in ``path``'s marker is building it."""
    if os.name == "nt":  # os.kill(pid, 0) terminates the process there: no sharing
        return False
    try:
        pid = int(_marker(path).read_text())
    except (OSError, ValueError):  # no marker, or a half-written one
        return False
    try:
        os.kill(pid, 0)  # signal 0: only whether it is there
    except PermissionError:  # there, another user's
        return True
    except OSError:  # gone without a package: build it here
        return False
    return True


class _Build:
    """A builder process, its request (an example of the step's arguments, the thread count
    the kernel is compiled for and the package's path) and its log, beside the package."""

    def __init__(self, process: subprocess.Popen, path: Path, request: Path, log: Path) -> None:
        self.process, self.path, self.request, self.log = process, path, request, log

    @classmethod
    def start(cls, path: Path, step_fn: Callable, config: tuple, args: tuple) -> _Build:
        path.parent.mkdir(parents=True, exist_ok=True)
        request = path.with_name(f".{path.stem}.{os.getpid()}.request")
        log = request.with_suffix(".log")
        example = pytree.tree_map(_small_example, args)  # H and W are dynamic: a corner will do
        spec = dict(module=step_fn.__module__, name=step_fn.__qualname__, config=config, args=example, path=str(path))
        torch.save(dict(spec, threads=torch.get_num_threads()), request)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                _build_command(request), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        _marker(path).write_text(str(process.pid))  # the builder removes it when it ends
        return cls(process, path, request, log)

    def finish(self) -> str:
        """Wait for the ended process; remove the request and the log, and return the log."""
        self.process.wait()
        text = self.log.read_text(errors="replace").strip() if self.log.is_file() else ""
        self.request.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
        _remove_marker(self.path, self.process.pid)
        return text


def _remove_marker(path: Path, pid: int) -> None:
    """Remove ``path``'s marker if it still names ``pid`` (not a newer builder's)."""
    with contextlib.suppress(OSError, ValueError):
        if int(_marker(path).read_text()) == pid:
            _marker(path).unlink()


def wait_for_builds(timeout: float | None = None) -> None:
    """Wait until every build this process started has ended (tests, and a caller that
    prefers a compiled step to a fast start); the models see the result on their next step."""
    for build in list(_builds.values()):
        build.process.wait(timeout)


def stop_builds() -> None:
    """Stop the builds this process started (their partial files are removed) and forget them."""
    for path, build in list(_builds.items()):
        build.process.terminate()
        build.finish()
        del _builds[path]


def _build_from_request(request: Path) -> None:
    """The builder process: compile the package a model asked for, then remove the request."""
    try:
        spec = torch.load(request, weights_only=False)  # written by this package, just now
    finally:
        request.unlink(missing_ok=True)
    torch.set_num_threads(spec["threads"])
    from torchgmm.background import _quiet_cuda_home_notice

    _quiet_cuda_home_notice()
    step_fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    leaves, tree = pytree.tree_flatten(spec["args"])
    try:
        AotStep(step_fn, spec["config"])._build(Path(spec["path"]), leaves, tree)
    finally:
        _remove_marker(Path(spec["path"]), os.getpid())
    with contextlib.suppress(OSError):  # built: nothing to report (a failure's log stays for the model)
        request.with_suffix(".log").unlink(missing_ok=True)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # terminate: the partial file goes
    _build_from_request(Path(sys.argv[1]))

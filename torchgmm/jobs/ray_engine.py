"""The file jobs on a Ray cluster: ``engine="ray"`` (``--engine ray``).

The job's driver (the process that calls :func:`~torchgmm.jobs.segment.segment_files` or
:func:`~torchgmm.jobs.background.run_background`) keeps every step that is not per-file work,
exactly as the local engine has them: plan (inputs, records, checkpoints, what is left),
the output-folder locks, the records file and the summaries, the progress bar, the exit
status. Only the per-file work moves to the cluster:

- ``segment``: a Ray Data pipeline over the files left to do, read -> decode (CPU tasks) ->
  fit and label a batch of same-size images (:class:`~torchgmm.segmentation.HistogramSegmenter`;
  CPU tasks, or one actor per GPU with ``device="cuda"``) -> write the two PNGs (CPU tasks).
  Each image's record streams back to the driver, in input order, which appends it to
  ``segments.jsonl`` as the local engine does; a file that fails is named the same way.
- ``background``: one Ray task per batch of ``batch_streams`` same-size inputs (one GPU each
  with ``device="cuda"``), each running the local engine's batch as it is, writing into the
  input's output folder and returning the summaries; the frames done stream back to the
  driver's progress bar through a small actor.

The output folder must therefore be visible to every node at the same path (a shared
file system); on a local cluster it is. The cluster is ``ray.init(address=...)`` with the
address given, else ``RAY_ADDRESS``, else a local cluster started for the job (and stopped
after it); a Ray session the caller already holds is used as it is. Ray is an optional
extra (``pip install "torchmog[ray]"``) and imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import numpy as np
import torch

from torchgmm._checks import resolve_device

if TYPE_CHECKING:
    from torchgmm.jobs.background import _Options as BackgroundOptions
    from torchgmm.jobs.background import InputPlan
    from torchgmm.jobs.segment import _SegmentOptions

__all__ = ["ENGINES", "Engine", "check_engine", "ray_session", "cluster_device"]

#: where the file jobs run: this process ("local") or a Ray cluster ("ray")
ENGINES = ("local", "ray")
Engine = Literal["local", "ray"]

_INSTALL_HINT = 'engine "ray" needs Ray: pip install "torchmog[ray]" (or pip install "ray[data]")'


def check_engine(engine: object, ray_address: object = None) -> None:
    """Refuse (``ValueError``) an unknown engine, a Ray address without the Ray engine, or the
    Ray engine where Ray is not installed: before any work.

    Example:
        >>> check_engine("local")
        >>> check_engine("spark")
        Traceback (most recent call last):
        ...
        ValueError: `engine` must be one of ('local', 'ray'), got 'spark'.
    """
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {ENGINES}, got {engine!r}.")
    if ray_address is not None and engine != "ray":
        raise ValueError(f"`ray_address` ({ray_address!r}) is only used with engine='ray'.")
    if ray_address is not None and not isinstance(ray_address, str):
        raise TypeError(f"`ray_address` must be a str, got {type(ray_address).__name__}.")
    if engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError(_INSTALL_HINT + ".")


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The ``ray`` module, connected: to ``address``, else ``RAY_ADDRESS``, else a local
    cluster started now and shut down on exit. A session already initialised in this
    process is used as it is (and left running). Inside, Ray Data keeps rows in order and
    shows no progress bars of its own (restored on exit).

    Example:
        >>> with ray_session(None) as ray:  # doctest: +SKIP
        ...     print(ray.cluster_resources()["CPU"])
        2.0
    """
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or None
        local = {} if address else {"include_dashboard": False}  # a local cluster for this job only
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **local)
    context = ray.data.DataContext.get_current()
    data_logger = logging.getLogger("ray.data")
    saved = (context.enable_progress_bars, context.execution_options.preserve_order, data_logger.level)
    context.enable_progress_bars = False  # the job has its own bar
    context.execution_options.preserve_order = True  # outcomes in input order, as the local engine's
    data_logger.setLevel(logging.ERROR)  # not a line per pipeline start and end, nor the bars' absence
    try:
        yield ray
    finally:
        context.enable_progress_bars, context.execution_options.preserve_order, level = saved
        data_logger.setLevel(level)
        if started:
            ray.shutdown()


def cluster_device(ray: Any, device: str | torch.device) -> torch.device:
    """``device`` resolved against the cluster rather than this process: ``"auto"`` is CUDA
    when the cluster has GPUs; ``"cuda[:N]"`` needs one (each task or actor then sees its
    own GPU as ``cuda``).

    Raises:
        ValueError: CUDA asked for on a cluster without GPUs, or not a device name.

    Example:
        >>> class Cluster:  # what `ray` offers: its resources
        ...     def cluster_resources(self):
        ...         return {"CPU": 16.0, "GPU": 2.0}
        >>> cluster_device(Cluster(), "auto"), cluster_device(Cluster(), "cuda:1")
        (device(type='cuda'), device(type='cuda'))
    """
    gpus = _n_gpus(ray)
    if str(device) == "auto":
        return torch.device("cuda" if gpus else "cpu")
    resolved = resolve_device(device, cuda_available=bool(gpus), where="the Ray cluster has no GPU")
    return torch.device("cuda") if resolved.type == "cuda" else resolved


def _n_gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


# --- segment -------------------------------------------------------------------------------
def segment_outcomes(ray: Any, todo: list, options: _SegmentOptions, out_dir: Path) -> Iterator[dict]:
    """Run the segmentation of ``todo`` (:class:`~torchgmm.io.images.ImageSource`) on the
    cluster; yield one outcome per file, in input order: ``{"index", "path", "record",
    "error", "decode_s", "segment_s", "write_s"}`` with ``record`` the finished image's
    record as JSON (``""`` when it failed) and ``error`` the message of a failure (``""``)."""
    if not todo:
        return
    # Warm the workers while Ray Data plans: each worker's first batch would otherwise import
    # torch, torchvision and the codecs first (seconds), one worker after the other
    warm = ray.remote(num_cpus=1)(_import_segment_stages)
    warm_ups = [warm.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))]
    worker_options = dataclasses.replace(options, log=None, progress=False)
    size = options.batch_size
    rows = [{"index": i, "path": str(s.path), "relative": str(s.relative)} for i, s in enumerate(todo)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size)))
    # Ray Data retries a task whose worker died, without end: a file that crashed the decoder
    # would be retried forever. So the decoding runs in a child process (as the local engine's
    # workers), whose crash fails that file alone and leaves the task alive.
    task = dict(batch_size=size, batch_format="numpy", num_cpus=1, zero_copy_batch=False)
    ds = ds.map_batches(_decode_stage, **task)
    if options.device.type == "cuda":  # one long-lived segmenter per GPU
        ds = ds.map_batches(
            _SegmentStage,
            fn_constructor_args=(worker_options,),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, _n_gpus(ray))),
            **{**task, "num_cpus": 1, "num_gpus": 1},
        )
    else:
        ds = ds.map_batches(_segment_stage, fn_args=(worker_options,), **task)
    ds = ds.map_batches(_write_stage, fn_args=(worker_options, str(out_dir)), **task)
    for row in ds.iter_rows():
        yield {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    ray.get(warm_ups)  # long done: an import error surfaces here rather than in a stage


def _import_segment_stages() -> None:
    """Import what the segment stages use, in a cluster worker (see :func:`segment_outcomes`)."""
    from torchgmm.io.images import _import_decoders
    from torchgmm.jobs import segment  # noqa: F401

    _import_decoders()


def _column(values: list, dtype: Any = object) -> np.ndarray:
    out = np.empty(len(values), dtype=dtype)
    out[:] = values
    return out


def _decode_stage(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode each file of a batch of rows (in a child process, as the local engine's
    :class:`~torchgmm.io.images.DecodeWorkers`): adds
    ``image`` (raw bytes), ``dtype``, ``channels``, ``height``, ``width``, ``decode_s``,
    ``error``."""
    from torchgmm.io.images import DecodeWorkers, ImageSource

    sources = [ImageSource(Path(p), Path(r)) for p, r in zip(batch["path"], batch["relative"])]
    with DecodeWorkers(sources, workers=1) as decoded:  # a crash of the decoder fails its file alone
        items = list(decoded)
    shapes = [(0, 0, 0) if it.image is None else tuple(it.image.shape) for it in items]
    return {
        "index": batch["index"],
        "path": batch["path"],
        "relative": batch["relative"],
        "image": _column([b"" if it.image is None else it.image.numpy().tobytes() for it in items]),
        "dtype": _column(["" if it.image is None else str(it.image.dtype).removeprefix("torch.") for it in items]),
        "channels": np.array([s[0] for s in shapes], dtype=np.int64),
        "height": np.array([s[1] for s in shapes], dtype=np.int64),
        "width": np.array([s[2] for s in shapes], dtype=np.int64),
        "decode_s": np.array([it.decode_s for it in items], dtype=np.float64),
        "error": _column(["" if it.image is not None else it.error or "unknown error" for it in items]),
    }


class _SegmentStage:
    """Fit and label the decoded images of a batch of rows, same-size images together (as the
    local engine groups them): adds ``labels`` (raw ``(H, W)`` uint8 bytes), ``record`` (JSON,
    without the output paths) and ``segment_s``; a failure sets ``error``."""

    def __init__(self, options: _SegmentOptions) -> None:
        from torchgmm.jobs.segment import _make_segmenter

        self.options = options
        self.segmenter = _make_segmenter(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from torchgmm.io.images import ImageItem, ImageSource
        from torchgmm.jobs.segment import _batched, _group_by_size, _part_records, _segment_groups

        t0 = time.perf_counter()
        n = len(batch["index"])
        errors = list(batch["error"])
        labels, records = [b""] * n, [""] * n
        items = []
        for j in range(n):
            image = None
            if not errors[j]:
                shape = (int(batch["channels"][j]), int(batch["height"][j]), int(batch["width"][j]))
                dtype = getattr(torch, batch["dtype"][j])
                image = torch.frombuffer(bytearray(batch["image"][j]), dtype=dtype).reshape(shape)
            source = ImageSource(Path(batch["path"][j]), Path(batch["relative"][j]))
            items.append(ImageItem(j, source, image, errors[j] or None, 0.0))
        for chunk in _batched(items, self.options.batch_size):
            for group in _group_by_size(chunk):
                parts, failed = _segment_groups(self.segmenter, self.options, group)
                for item, message in failed:
                    errors[item.index] = message
                for part in parts:
                    for item, image_labels, record in _part_records(self.segmenter, self.options, part):
                        labels[item.index] = image_labels.numpy().tobytes()
                        records[item.index] = json.dumps(record)
        seconds = (time.perf_counter() - t0) / max(1, n)
        return {
            **{k: batch[k] for k in ("index", "path", "relative", "height", "width", "decode_s")},
            "labels": _column(labels),
            "record": _column(records),
            "error": _column(errors),
            "segment_s": np.full(n, seconds),
        }


def _segment_stage(batch: dict[str, np.ndarray], options: _SegmentOptions) -> dict[str, np.ndarray]:
    """:class:`_SegmentStage` as a task (CPU): the segmenter is cheap to make."""
    return _SegmentStage(options)(batch)


def _write_stage(batch: dict[str, np.ndarray], options: _SegmentOptions, out_dir: str) -> dict[str, np.ndarray]:
    """Write each segmented image's two PNGs (``write_threads`` at a time, as the local
    engine) and complete its record with their paths; a write that fails sets ``error``."""
    from torchgmm.jobs.segment import _output_paths, _write_outputs

    t0 = time.perf_counter()
    n = len(batch["index"])
    errors, records = list(batch["error"]), list(batch["record"])

    def write(j: int) -> None:
        path = batch["path"][j]
        shape = (int(batch["height"][j]), int(batch["width"][j]))
        labels = torch.frombuffer(bytearray(batch["labels"][j]), dtype=torch.uint8).reshape(shape)
        paths = _output_paths(Path(out_dir), Path(batch["relative"][j]))
        try:
            records[j] = json.dumps(_write_outputs(labels, options.n_classes, paths, json.loads(records[j])))
        except OSError as exc:  # as the local engine: this image fails, the others go on
            errors[j], records[j] = f"cannot write the outputs of {path!r}: {exc}", ""

    todo = [j for j in range(n) if not errors[j]]
    if options.write_threads > 1:
        with ThreadPoolExecutor(options.write_threads) as pool:
            list(pool.map(write, todo))
    else:
        for j in todo:
            write(j)
    return {
        **{k: batch[k] for k in ("index", "path", "decode_s", "segment_s")},
        "record": _column(records),
        "error": _column(errors),
        "write_s": np.full(n, (time.perf_counter() - t0) / max(1, n)),
    }


# --- background ----------------------------------------------------------------------------
class _FrameCounter:
    """Frames done, summed over the cluster's tasks (a Ray actor): the driver's progress bar."""

    def __init__(self) -> None:
        self.frames = 0

    def add(self, n: int) -> None:
        self.frames += n

    def total(self) -> int:
        return self.frames


def _run_batch_task(
    plans: list[InputPlan], options: BackgroundOptions, stop_after: int | None, counter: Any
) -> list[tuple[int, dict, BaseException | None]]:
    """One batch of streams on a cluster worker, as the local engine runs it:
    ``(position in the batch, summary, error)`` per input."""
    from torchgmm.background import retain_freed_memory
    from torchgmm.jobs.background import _Batch

    # as `torchgmm background` does in its own process: without it, glibc hands each freed
    # state back to the kernel and the next frame pays the page faults (about 2x per frame)
    retain_freed_memory()
    # the CPUs Ray gave this task (it sets OMP_NUM_THREADS to them; PyTorch may have read it
    # before the task started)
    cpus = _assigned_cpus()
    if cpus:
        torch.set_num_threads(cpus)
    report = _Reporter(counter)
    try:
        results = _Batch(plans, options, on_frame=report).run(stop_after)
    finally:
        report.flush()
    position = {id(plan): i for i, plan in enumerate(plans)}
    return [(position[id(plan)], summary, error) for plan, summary, error in results]


def _assigned_cpus() -> int:
    """The whole CPUs assigned to the current Ray task (0 outside a task)."""
    import ray

    try:
        return int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # noqa: BLE001 - not in a task
        return 0


class _Reporter:
    """Counts frames and sends them to the counter actor at most every ``every_s`` seconds."""

    def __init__(self, counter: Any, every_s: float = 0.25) -> None:
        self.counter, self.every_s = counter, every_s
        self.pending, self.sent = 0, time.perf_counter()

    def __call__(self, n: int) -> None:
        self.pending += n
        if time.perf_counter() - self.sent >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.counter.add.remote(self.pending)
        self.pending, self.sent = 0, time.perf_counter()


def run_batches(
    ray: Any,
    batches: list[list[InputPlan]],
    options: BackgroundOptions,
    stop_after: int | None,
    on_progress: Callable[[int], None],
) -> list[tuple[InputPlan, dict, BaseException | None]]:
    """Each batch of streams as one Ray task (one GPU each with CUDA); ``(plan, summary,
    error)`` per input as the tasks finish. ``on_progress(frames)`` gets the frames done so far.

    Ctrl-C cancels the tasks: each finishes its outputs as an interrupted local run does
    (summaries and, with checkpoints, a checkpoint to resume from) before this re-raises."""
    counter = ray.remote(num_cpus=0)(_FrameCounter).remote()
    # the actor up before the tasks start: else their first counts (and the progress bar)
    # wait for its process to start, which on a busy machine can outlast a short task
    ray.get(counter.total.remote())
    remote = ray.remote(_run_batch_task).options(
        num_cpus=1, num_gpus=1 if options.device.type == "cuda" else 0, max_retries=0
    )
    worker_options = dataclasses.replace(options, progress=False)
    tasks = {remote.remote(batch, worker_options, stop_after, counter): batch for batch in batches}
    results: list[tuple[InputPlan, dict, BaseException | None]] = []
    failures: list[BaseException] = []
    pending = list(tasks)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            on_progress(ray.get(counter.total.remote()))
            for ref in done:
                try:
                    for position, summary, error in ray.get(ref):
                        results.append((tasks[ref][position], summary, error))
                except Exception as exc:  # noqa: BLE001 - the worker died (e.g. out of memory): after the others
                    failures.append(exc)
        on_progress(ray.get(counter.total.remote()))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: it finishes its outputs
        ray.wait(pending, num_returns=len(pending), timeout=60)
        raise
    if failures:
        raise failures[0]
    return results

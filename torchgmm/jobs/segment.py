"""``torchgmm segment`` as a job: image files in, label maps, colour maps and records out.

The library function behind ``torchgmm segment`` is :func:`segment_files`. It reads as named
steps: **plan** (find the images, read ``segments.jsonl``, refuse results made with other
settings, list what is left to do), **lock** the output folder, **run** (decode in worker
processes -> fit and label on the device, a batch of same-size images at a time -> encode
PNGs on a thread pool, the three overlapped), and **finish** (wait for the writes, compact
the records, the summary). The maths is :class:`~torchgmm.segmentation.HistogramSegmenter`;
the codecs are :mod:`torchgmm.io.images`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, TextIO

import torch
from torch import Tensor

from torchgmm._checks import check_choice, check_positive_int, resolve_device
from torchgmm.defaults import HISTOGRAM_INITS
from torchgmm.jobs.ray_engine import Engine, check_engine
from torchgmm.io.images import (
    DecodeWorkers,
    ImageFileDataset,
    ImageItem,
    atomic_write_text,
    find_images,
    lock_output_folder,
    make_output_folder,
    remove_stale_temporaries,
    write_png,
)
from torchgmm.pixels import _bit_shift
from torchgmm.segmentation import (
    N_LEVELS,
    HistogramInit,
    HistogramSegmenter,
    SegmentMode,
    _check_em_settings,
    _fitted_pixels,
    _join,
    _negligible_hint,
    colourise,
    negligible_classes,
)

__all__ = ["BATCH_PIXELS", "SegmentSummary", "segment_files"]


class SegmentSummary(NamedTuple):
    """What :func:`segment_files` did and where its time went (times in seconds)."""

    #: image files found in the inputs
    n_found: int
    #: images segmented and written in this run
    n_done: int
    #: images skipped because their outputs and record already existed
    n_skipped: int
    #: the files that could not be decoded, segmented or written, with their error messages
    failed: list[tuple[str, str]]
    #: wall-clock time of the whole call
    wall_s: float
    #: summed decode time of the images (in workers, overlapping when workers > 0)
    decode_s: float
    #: time waiting for the DataLoader in the main process
    wait_s: float
    #: fitting and labelling, host/device transfers included
    segment_s: float
    #: colouring, PNG encoding and writing not hidden behind the next batch
    write_s: float
    #: absolute path of the JSON-lines file of fitted parameters
    jsonl: str
    #: the images segmented into fewer classes than asked (a class of less than half a pixel's
    #: weight, :func:`negligible_classes`), each also named in a warning line
    negligible: list[str] = []  # noqa: RUF012 - never mutated; a NamedTuple default


def _finite_or_none(value: float) -> float | None:
    """``value``, or None (JSON null) for infinity and NaN, which strict JSON cannot hold."""
    return value if math.isfinite(value) else None


def _output_paths(out_dir: Path, rel: Path) -> tuple[Path, Path]:
    """``OUT/rel_without_suffix`` + ``_labels.png`` / ``_colour.png``."""
    base = Path(out_dir) / rel.parent / rel.stem
    return base.with_name(base.name + "_labels.png"), base.with_name(base.name + "_colour.png")


def _write_outputs(labels: Tensor, n_classes: int, paths: tuple[Path, Path], record: dict) -> dict:
    """Write one image's label map and colourised PNGs (in a writer thread); return its record."""
    write_png(paths[0], labels)
    write_png(paths[1], colourise(labels.unsqueeze(0), n_classes)[0])
    return {**record, **_output_fields(paths)}


def _output_fields(paths: tuple[Path, Path]) -> dict[str, str]:
    """The ``labels`` and ``colour`` fields of a record: absolute, like its ``input``."""
    return {"labels": str(paths[0].absolute()), "colour": str(paths[1].absolute())}


#: record fields that must equal this run's settings for a finished image to be skipped
_RECORD_SETTINGS = ("n_classes", "mode", "init", "tol", "max_iter")
#: settings that earlier versions did not record because they had a single value then:
#: a record without the field was made with this value
_SETTINGS_BEFORE_RECORDED = {"init": "range"}


def _read_records(jsonl: Path) -> dict[str, dict]:
    """Records of ``segments.jsonl`` by input path; a damaged file is an error naming the line.

    A run appends one line per finished image and rewrites the file whole (atomically) when
    it starts and ends, so the only damage an interruption can leave is an unfinished last
    line, without its newline (a kill during the append): that line is dropped and its
    image is segmented again. Any other line that does not parse means the file was damaged
    or edited, and guessing which results it vouched for could keep stale outputs: it is
    refused rather than repaired.
    """
    if not jsonl.exists():
        return {}
    hint = "repair or remove it (its images are then segmented again), or choose another output folder."
    try:
        text = jsonl.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{str(jsonl)!r} is not UTF-8 text ({exc.reason}); {hint}") from exc
    records: dict[str, dict] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines) and not text.endswith("\n"):  # an append cut short by a kill
                break
            raise ValueError(
                f"{str(jsonl)!r} line {n} is not valid JSON ({exc.msg} at column {exc.colno}); {hint}"
            ) from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("input"), str):
            raise ValueError(
                f'{str(jsonl)!r} line {n} is not a segmentation record (a JSON object with an "input" path); {hint}'
            )
        records[rec["input"]] = rec
    return records


def _check_settings(records: dict[str, dict], keys: Iterable[str], jsonl: Path, settings: dict) -> None:
    """Refuse (``ValueError``) when a record of one of ``keys`` was made with other settings.

    Skipping such an image would silently keep results made with, e.g., another number of
    classes. ``settings["mode"]`` is the requested mode; a grey image is always segmented on
    luminance, so its record matches either mode. ``init`` only matters to images segmented
    on luminance (``mode="rgb"`` always starts from k-means++). Records written before
    ``channels``, ``tol`` and ``max_iter`` were stored count as colour images with unknown
    EM settings: they are refused rather than trusted. Records written before ``init`` was
    stored were made with ``"range"``, the only init then.
    """
    missing = object()
    diffs: dict[str, tuple[set, int, str]] = {}  # setting -> (old values, images, an example)
    for key in keys:
        rec = records.get(key)
        if rec is None:
            continue
        mode = settings["mode"] if rec.get("channels", 3) == 3 else "luminance"
        for name in _RECORD_SETTINGS:
            new = mode if name == "mode" else settings[name]
            if name == "init" and "rgb" in (mode, rec.get("mode")):
                continue  # the rgb fit has no init choice (and a mode change is named anyway)
            old = rec.get(name, _SETTINGS_BEFORE_RECORDED.get(name, missing))
            if old is missing or old != new:
                olds, count, example = diffs.get(name, (set(), 0, key))
                olds.add("not recorded" if old is missing else repr(old))
                diffs[name] = (olds, count + 1, example)
    if diffs:
        what = "; ".join(
            f"{name} {' / '.join(sorted(olds))} there, {settings[name]!r} in this run "
            f"({count} image(s), e.g. {example!r})"
            for name, (olds, count, example) in diffs.items()
        )
        raise ValueError(
            f"output folder {str(jsonl.parent)!r} holds results made with other settings "
            f"(recorded in {str(jsonl)!r}): {what}. Nothing was changed: choose another output "
            "folder, remove the old results, or pass overwrite=True (--overwrite) to redo them."
        )


#: the most pixels (H x W summed over a batch's images) that segment_files decodes and
#: segments at once: a batch of 16 photos of 12 megapixels held 7 GB at its peak; 2**25
#: pixels (about 33 million: 2 such photos, or 380 CDnet frames) keeps it near 1 GB
BATCH_PIXELS = 2**25


def _batched(items: Iterable, size: int, max_pixels: int = BATCH_PIXELS) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items and, past the first item of a list, at
    most ``max_pixels`` pixels of decoded images (failed items count none)."""
    batch: list = []
    pixels = 0
    for item in items:
        n = 0 if item.image is None else item.image.shape[-2] * item.image.shape[-1]
        if batch and pixels + n > max_pixels:
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += n
        if len(batch) == size:
            yield batch
            batch, pixels = [], 0
    if batch:
        yield batch


def segment_files(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    n_classes: int = 3,
    *,
    mode: SegmentMode = "luminance",
    init: HistogramInit = "range",
    device: str | torch.device = "auto",
    batch_size: int = 16,
    workers: int = 0,
    overwrite: bool = False,
    tol: float = 1e-3,
    max_iter: int = 100,
    write_threads: int = 2,
    progress: bool = True,
    log: TextIO | None = None,
    engine: Engine = "local",
    ray_address: str | None = None,
) -> SegmentSummary:
    """Segment image files and write, per image, a label map PNG and a colourised PNG.

    ``INPUT/a/b.png`` becomes ``OUT/a/b_labels.png`` (grey values 0..K-1, class 0 darkest)
    and ``OUT/a/b_colour.png``. Two inputs with the same relative path (``in1/a.png``,
    ``in2/a.png``) share outputs: give them separate runs. Every file is written through a
    temporary file and ``os.replace``. Images inside ``out_dir`` are never taken as input,
    so ``out_dir`` may lie inside an input folder. Files are decoded in ``workers``
    worker processes; images of the same size in a batch are segmented together, on
    ``device``. A file that cannot be decoded, segmented (e.g. fewer pixels than classes
    with ``mode="rgb"``) or written is named on ``log``, skipped and listed in the summary;
    the other files are processed.

    **The records**, ``OUT/segments.jsonl``: one JSON object per line and image, keyed by
    ``"input"``; a line is appended as each image is done, so a killed run loses at most
    the record being written, and the file is rewritten atomically at the start and the end
    (also on errors), one line per image sorted by input path. Every path in it is absolute
    (resolved), so the file reads the same from any working directory. The fields:

    - ``input``: the image file; ``labels``, ``colour``: its two PNGs.
    - ``height``, ``width``, ``channels``; ``bit_shift``: the bits each value of a 16-bit
      file was shifted right by (:func:`~torchgmm.pixels.to_uint8`; 0 for 8-bit files), so
      ``means * 2**bit_shift`` is in the file's raw units.
    - the settings: ``mode`` (``"luminance"`` for grey images, whatever was asked),
      ``init`` (``"kmeans++"`` for ``mode="rgb"``, which always uses it), ``n_classes``,
      ``tol``, ``max_iter``.
    - the fit, classes darkest first: ``weights`` (K), ``means`` (K x D), ``covariances``
      (K x D x D), ``lower_bound`` (null if not finite), ``n_iter``, ``converged``;
      ``negligible_classes``: the classes that ended with less than half a pixel's worth of
      weight (:func:`~torchgmm.segmentation.negligible_classes`), so the image has fewer classes than asked.

    **One run per folder**: the run holds ``OUT/.torchgmm.lock`` (an OS lock, released even
    when the process is killed); a second run on the same ``out_dir`` meanwhile is refused
    before any work (:class:`~torchgmm.io.images.OutputFolderBusyError`).

    **Re-runs**: images whose outputs and record exist are skipped unless ``overwrite``, so
    an interrupted run resumes; if such a record was made with other settings
    (``n_classes``, ``mode``, ``init``, ``tol``, ``max_iter``) the call refuses before any
    work instead of keeping stale results. Records of earlier versions are read too: one
    without ``init`` was made with ``"range"``, the only init then, and the output paths of
    a skipped image's record (written relative to the working directory by earlier
    versions) are rewritten absolute.

    **Fewer classes than asked**: an image whose fit has a negligible class is written as
    usual, named in a ``warning:`` line on ``log`` with what to try, listed in the
    summary's ``negligible``, and its record lists the classes.

    Args:
        inputs: image files and folders (searched recursively); a single path is one input.
        out_dir: output folder (created).
        n_classes: K.
        mode: ``"luminance"`` or ``"rgb"`` (see :func:`~torchgmm.segmentation.segment_images`).
        init: how the histogram EM starts: ``"range"`` (default), ``"data-range"``,
            ``"kmeans++"`` or ``"random"`` (seed 0); see :func:`~torchgmm.segmentation.segment_images`. Recorded
            as ``"kmeans++"`` for images segmented with ``mode="rgb"``, which always uses it.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a device.
        batch_size: images decoded and segmented per step, at most; a step also holds at
            most :data:`BATCH_PIXELS` pixels (one larger image is a step of its own), so
            that large photos do not exhaust memory.
        workers: decoding worker processes (:class:`~torchgmm.io.images.DecodeWorkers`: a
            file that crashes the decoder fails alone); 0 decodes in this process.
        overwrite: redo images whose outputs exist, whatever settings they were made with.
        tol: EM convergence threshold (>= 0).
        max_iter: most EM iterations (>= 1).
        write_threads: threads encoding and writing PNGs while the next batch is processed
            (0: write in this thread, one image after the other).
        progress: show a tqdm progress bar (images/s).
        log: stream for per-file error and warning lines (default ``sys.stderr``).
        engine: ``"local"`` (this process, default) or ``"ray"``: the decoding, segmenting
            and writing run as a Ray Data pipeline on a Ray cluster (GPU actors with
            ``device="cuda"``, which is then resolved against the cluster's GPUs; ``workers``
            is unused); everything else, the outputs and records included, is as with
            ``"local"`` (:mod:`torchgmm.jobs.ray_engine`; ``pip install "torchmog[ray]"``).
        ray_address: the Ray cluster to run on (``engine="ray"``); None: ``RAY_ADDRESS``, else
            a local cluster started for the call.

    Returns:
        :class:`SegmentSummary`.

    Raises:
        FileNotFoundError: an input is missing or no image file was found.
        NotADirectoryError: ``out_dir`` (or a folder above it) is a file.
        TypeError: ``n_classes``, ``batch_size``, ``workers`` or ``write_threads`` is not an int.
        OutputFolderBusyError: another run is writing to ``out_dir`` (an ``OSError``).
        ValueError: one of them is out of range (``n_classes`` <= 256: label maps are 8-bit),
            ``mode``/``init`` is not a known one, ``tol``/``max_iter`` are out of range,
            ``OUT/segments.jsonl`` is damaged (the message gives the line), or it records
            results of these inputs made with other settings and ``overwrite`` is False.

    Shape:
        - decoded images: ``(C, H, W)`` uint8 or uint16, C = 1 or 3, batched as
          ``(B, C, H, W)`` by size
        - ``*_labels.png``: ``(H, W)`` grey uint8 values ``0..K-1``;
          ``*_colour.png``: ``(3, H, W)`` uint8 RGB

    Example:
        >>> import tempfile, pathlib
        >>> from torchgmm.io.images import write_png
        >>> img = torch.cat([torch.full((1, 4, 4), 30), torch.full((1, 4, 4), 220)], 2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_png(f"{d}/in/a.png", img.to(torch.uint8))
        ...     summary = segment_files([f"{d}/in"], f"{d}/out", 2, device="cpu", progress=False)
        ...     print(summary.n_done, sorted(p.name for p in pathlib.Path(d, "out").iterdir()))
        1 ['.torchgmm.lock', 'a_colour.png', 'a_labels.png', 'segments.jsonl']
    """
    options = _SegmentOptions.create(
        n_classes=n_classes,
        mode=mode,
        init=init,
        tol=tol,
        max_iter=max_iter,
        device=device,
        batch_size=batch_size,
        workers=workers,
        write_threads=write_threads,
        overwrite=overwrite,
        progress=progress,
        log=sys.stderr if log is None else log,
        engine=engine,
        ray_address=ray_address,
    )
    run = _SegmentRun(options, Path(out_dir))
    run.plan(inputs)
    with lock_output_folder(run.out_dir, "torchgmm segment"):  # one run per folder at a time
        remove_stale_temporaries(run.out_dir)  # left by a run killed outright
        return run.run()


@dataclasses.dataclass(frozen=True)
class _SegmentOptions:
    """The settings of :func:`segment_files`, checked (:meth:`create`)."""

    n_classes: int
    mode: str
    init: str
    tol: float
    max_iter: int
    device: torch.device  #: or "auto" with engine="ray" until the cluster is known
    batch_size: int
    workers: int
    write_threads: int
    overwrite: bool
    progress: bool
    log: TextIO
    engine: Engine = "local"
    ray_address: str | None = None

    @classmethod
    def create(cls, **settings: Any) -> _SegmentOptions:
        check_positive_int(settings["n_classes"], "n_classes")
        if settings["n_classes"] > N_LEVELS:
            raise ValueError(
                f"`n_classes` must be <= {N_LEVELS} (label maps are 8-bit PNGs), got {settings['n_classes']}."
            )
        check_choice(settings["mode"], "mode", ("luminance", "rgb"))
        check_choice(settings["init"], "init", HISTOGRAM_INITS)
        _check_em_settings(settings["tol"], settings["max_iter"])
        check_positive_int(settings["batch_size"], "batch_size")
        check_positive_int(settings["workers"], "workers", minimum=0)
        check_positive_int(settings["write_threads"], "write_threads", minimum=0)
        check_engine(settings["engine"], settings["ray_address"])
        # on a Ray cluster the device is resolved against the cluster's GPUs, once connected
        device = settings["device"]
        if settings["engine"] == "local" or str(device) != "auto":
            device = resolve_device(device, cuda_available=True if settings["engine"] == "ray" else None)
        return cls(**{**settings, "device": device})

    def recorded(self) -> dict:
        """The settings a record keeps and a re-run must match (:data:`_RECORD_SETTINGS`)."""
        return {name: getattr(self, name) for name in _RECORD_SETTINGS}


def _make_segmenter(options: _SegmentOptions) -> HistogramSegmenter:
    """The run's segmenter: labels as uint8, negligible classes reported per image (a log
    line and the record) instead of warned about."""
    segmenter = HistogramSegmenter(
        options.n_classes,
        mode=options.mode,
        init=options.init,
        tol=options.tol,
        max_iter=options.max_iter,
        random_state=0,
        label_dtype=torch.uint8,
    )
    # not with warnings.catch_warnings, which swaps the process-wide filters and so races with
    # the writer threads (a library they call may enter catch_warnings too)
    segmenter._warn_negligible = False
    return segmenter


def _group_by_size(items: Iterable[ImageItem]) -> list[list[tuple[ImageItem, Tensor]]]:
    """The decoded images of ``items`` (failed decodes left out), grouped by shape and dtype:
    the groups that are segmented together. Grey/RGB conversion happens on the device, in
    the segmenter."""
    groups: dict[tuple, list] = {}
    for item in items:
        if item.image is not None:
            groups.setdefault((tuple(item.image.shape), item.image.dtype), []).append((item, item.image))
    return list(groups.values())


def _segment_groups(
    segmenter: HistogramSegmenter, options: _SegmentOptions, group: list[tuple[ImageItem, Tensor]]
) -> tuple[list[tuple[list, Tensor, dict, str]], list[tuple[ImageItem, str]]]:
    """Segment one group of same-size images: ``(parts, failed)``, each part as :func:`_segment`
    returns it and each failure ``(item, message)``.

    An image EM cannot fit (e.g. fewer pixels than classes in rgb mode) must not take its
    group, or the run, down: the group is then redone one image at a time.
    """
    try:
        return [_segment(segmenter, options, group)], []
    except ValueError:
        parts, failed = [], []
        for one in group:
            try:
                parts.append(_segment(segmenter, options, [one]))
            except ValueError as exc:
                failed.append((one[0], f"cannot segment {str(one[0].source.path)!r}: {exc}"))
        return parts, failed


def _segment(
    segmenter: HistogramSegmenter, options: _SegmentOptions, group: list[tuple[ImageItem, Tensor]]
) -> tuple[list, Tensor, dict, str]:
    """Fit and label images of one size: ``(group, labels (B, H, W) uint8, fit, mode)``."""
    batch = torch.stack([img for _, img in group]).to(options.device, non_blocking=True)
    seg_mode = options.mode if batch.shape[1] == 3 else "luminance"
    segmenter.mode = seg_mode
    labels = segmenter(batch)
    fit = {n: getattr(segmenter, n).cpu() for n in segmenter._state}
    # the reduction to_uint8 applied to each 16-bit image, so its record's means can be read
    # in raw units (times 2^bit_shift)
    if batch.dtype == torch.uint16:
        fit["bit_shift"] = _bit_shift(batch.to(torch.int32)).cpu()
    else:
        fit["bit_shift"] = torch.zeros(batch.shape[0], dtype=torch.int32)
    return group, labels.cpu(), fit, seg_mode


def _part_records(
    segmenter: HistogramSegmenter, options: _SegmentOptions, part: tuple[list, Tensor, dict, str]
) -> Iterator[tuple[ImageItem, Tensor, dict]]:
    """``(item, labels (H, W) uint8, record)`` of each image of a part :func:`_segment` returned."""
    group, labels, fit, seg_mode = part
    n_pixels = _fitted_pixels(seg_mode, labels.shape[1], labels.shape[2], segmenter.n_samples)
    flagged = negligible_classes(fit["weights_"], n_pixels)
    for j, (item, img) in enumerate(group):
        empty = flagged[j].nonzero().flatten().tolist()
        yield item, labels[j], _record(options, item, img, labels, fit, j, seg_mode, empty)


def _record(
    options: _SegmentOptions,
    item: ImageItem,
    img: Tensor,
    labels: Tensor,
    fit: dict,
    j: int,
    seg_mode: str,
    empty: list[int],
) -> dict:
    """The ``segments.jsonl`` record of image ``j`` of a segmented group (see :func:`segment_files`)."""
    return {
        "input": str(item.source.path.resolve()),
        "height": int(labels.shape[1]),
        "width": int(labels.shape[2]),
        "channels": int(img.shape[0]),
        "bit_shift": int(fit["bit_shift"][j]),
        "mode": seg_mode,
        "init": options.init if seg_mode == "luminance" else "kmeans++",
        "n_classes": options.n_classes,
        "tol": float(options.tol),
        "max_iter": options.max_iter,
        "weights": fit["weights_"][j].tolist(),
        "means": fit["means_"][j].tolist(),
        "covariances": fit["covariances_"][j].tolist(),
        # strict JSON has no -Infinity/NaN: write null for a non-finite bound
        "lower_bound": _finite_or_none(float(fit["lower_bound_"][j])),
        "n_iter": int(fit["n_iter_"][j]),
        "converged": bool(fit["converged_"][j]),
        "negligible_classes": empty,
    }


class _SegmentRun:
    """One call of :func:`segment_files`: :meth:`plan` (inputs, records, what is left to do),
    then :meth:`run` (decode -> segment -> write, overlapped) and the summary."""

    def __init__(self, options: _SegmentOptions, out_dir: Path) -> None:
        self.options = options
        self.t_start = time.perf_counter()
        # absolute from here on: the records, the summary and the messages name absolute paths
        self.out_dir = out_dir.resolve()
        self.jsonl = self.out_dir / "segments.jsonl"
        self.failed: list[tuple[str, str]] = []
        self.negligible: list[str] = []  # inputs whose fit has a class of less than half a pixel's weight
        self.times = dict(decode_s=0.0, wait_s=0.0, segment_s=0.0, write_s=0.0)
        self.n_done = 0

    # -- plan --------------------------------------------------------------------------------
    def plan(self, inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> None:
        """Find the images, read the records, refuse stale results, list what is left to do."""
        out_dir, options = self.out_dir, self.options
        if out_dir.exists() and not out_dir.is_dir():
            make_output_folder(out_dir)  # raises, naming it, before the inputs are searched
        # our own outputs are not inputs (an out_dir inside an input folder)
        self.sources = find_images(inputs, exclude=[out_dir])
        self.records = _read_records(self.jsonl)
        if not options.overwrite:
            _check_settings(self.records, (str(s.path.resolve()) for s in self.sources), self.jsonl, options.recorded())
        make_output_folder(out_dir)
        self.todo = []
        for source in self.sources:
            key, paths = str(source.path.resolve()), _output_paths(out_dir, source.relative)
            if options.overwrite or key not in self.records or not all(p.exists() for p in paths):
                self.todo.append(source)
            else:  # skipped: its outputs are where this run would write them
                self.records[key] = {**self.records[key], **_output_fields(paths)}  # older records: relative

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> SegmentSummary:
        """Decode -> segment -> write, overlapped (:meth:`_run_local`, or on a Ray cluster:
        :meth:`_run_ray`), then the summary. Finished images keep their records also on
        errors and Ctrl-C."""
        from tqdm.auto import tqdm

        options = self.options
        self.tqdm = tqdm
        self.bar = tqdm(total=len(self.todo), unit="img", disable=not options.progress, desc="segment")
        # The records: rewritten whole now (which also drops an unfinished last line of a killed
        # run), then one line appended per finished image, so a kill loses at most the record
        # being written, and rewritten whole once more at the end (one line per image).
        self._save_records()
        self.appender = open(self.jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish
        self.pending: deque[tuple[str, Future]] = deque()  # (input path, write of its outputs)
        self.pool = None
        try:
            self._run_local() if options.engine == "local" else self._run_ray()
        finally:
            self._finish()
        return SegmentSummary(
            n_found=len(self.sources),
            n_done=self.n_done,
            n_skipped=len(self.sources) - len(self.todo),
            failed=self.failed,
            wall_s=time.perf_counter() - self.t_start,
            **self.times,
            jsonl=str(self.jsonl),
            negligible=self.negligible,
        )

    def _run_local(self) -> None:
        """Decode (worker processes) -> segment (this thread) -> write (a thread pool)."""
        options = self.options
        self.segmenter = _make_segmenter(options)
        # PNG encoding releases the GIL: a small pool writes while the next batch is decoded and
        # segmented. A record enters the JSON-lines file only once both of its PNGs are written.
        self.pool = ThreadPoolExecutor(options.write_threads, "torchgmm-write") if options.write_threads else None
        # decoded in worker processes: a file that crashes its decoder costs only that file
        workers = DecodeWorkers(self.todo, options.workers) if options.workers > 0 else None
        dataset = ImageFileDataset(self.todo)
        items = workers if workers is not None else (dataset[i] for i in range(len(dataset)))
        try:
            for batch in self._waited(_batched(items, options.batch_size)):
                for group in self._groups(batch):
                    self._segment_and_write(group)
                t0 = time.perf_counter()
                self._collect(block_until=2 * options.batch_size)
                self.times["write_s"] += time.perf_counter() - t0
        finally:
            if workers is not None:
                workers.close()

    def _run_ray(self) -> None:
        """The same steps as a Ray Data pipeline (:func:`torchgmm.jobs.ray_engine.segment_outcomes`);
        each image's outcome is recorded here as it streams back, in input order."""
        from torchgmm.jobs import ray_engine

        with ray_engine.ray_session(self.options.ray_address) as ray:
            self.options = dataclasses.replace(self.options, device=ray_engine.cluster_device(ray, self.options.device))
            for outcome in self._waited(ray_engine.segment_outcomes(ray, self.todo, self.options, self.out_dir)):
                for name in ("decode_s", "segment_s", "write_s"):
                    self.times[name] += outcome[name]
                if outcome["error"]:
                    self._fail(outcome["path"], outcome["error"])
                    continue
                record = json.loads(outcome["record"])
                self._warn_if_negligible(outcome["path"], record)
                self._add_record(record)

    def _waited(self, source: Iterable) -> Iterator:
        """The items of ``source``, the time spent waiting for each counted as ``wait_s``."""
        iterator = iter(source)
        while True:
            t0 = time.perf_counter()
            item = next(iterator, None)
            self.times["wait_s"] += time.perf_counter() - t0
            if item is None:
                return
            yield item

    def _groups(self, batch: list[ImageItem]) -> list[list[tuple[ImageItem, Tensor]]]:
        """The decoded images of a batch, grouped by shape and dtype; failed decodes reported."""
        for item in batch:
            self.times["decode_s"] += item.decode_s
            if item.image is None:
                self._fail(str(item.source.path), item.error or "unknown error")
        return _group_by_size(batch)

    def _segment_and_write(self, group: list[tuple[ImageItem, Tensor]]) -> None:
        """Segment one group of same-size images and queue their outputs for writing."""
        t0 = time.perf_counter()
        parts, failed = _segment_groups(self.segmenter, self.options, group)
        for item, message in failed:
            self._fail(str(item.source.path), message)
        t1 = time.perf_counter()
        self.times["segment_s"] += t1 - t0  # fit + labels, transfers included; colouring is output
        for part in parts:
            for item, labels, record in _part_records(self.segmenter, self.options, part):
                self._warn_if_negligible(str(item.source.path), record)
                self._write(item, labels, record)
        self._collect(block_until=2 * self.options.batch_size)
        self.times["write_s"] += time.perf_counter() - t1

    def _write(self, item: ImageItem, labels: Tensor, record: dict) -> None:
        """Queue one image's PNGs on the writer pool (or write them now, ``write_threads=0``)."""
        paths = _output_paths(self.out_dir, item.source.relative)
        n_classes = self.options.n_classes
        if self.pool is None:
            done: Future = Future()
            try:
                done.set_result(_write_outputs(labels, n_classes, paths, record))
            except OSError as exc:  # reported by _collect, like a pool's error
                done.set_exception(exc)
        else:
            done = self.pool.submit(_write_outputs, labels, n_classes, paths, record)
        self.pending.append((str(item.source.path), done))

    def _collect(self, block_until: int) -> None:
        """Finished writes -> records (one line appended each); wait while too many are queued."""
        pending = self.pending
        while pending and (len(pending) > block_until or pending[0][1].done()):
            path, future = pending.popleft()
            try:
                rec = future.result()
            except OSError as exc:  # e.g. a folder where its PNG must go: this image fails
                self._fail(path, f"cannot write the outputs of {path!r}: {exc}")
                continue
            self._add_record(rec)

    def _add_record(self, rec: dict) -> None:
        """A finished image: its record kept and appended to the file (one line)."""
        self.records[rec["input"]] = rec
        self.appender.write(json.dumps(rec) + "\n")
        self.appender.flush()  # handed to the OS: survives the process being killed
        self.n_done += 1
        self.bar.update(1)

    def _fail(self, path: str, message: str) -> None:
        """One image failed; the run goes on."""
        self.failed.append((path, message))
        self.tqdm.write(f"error: {message}", file=self.options.log)  # keeps the bar intact
        self.bar.update(1)

    def _warn_if_negligible(self, path: str, record: dict) -> None:
        """A ``warning:`` line naming ``path`` when its fit has negligible classes (in its record)."""
        empty = record["negligible_classes"]
        if not empty:
            return
        n_classes = self.options.n_classes
        self.negligible.append(path)
        one = len(empty) == 1
        self.tqdm.write(
            f"warning: {path}: segmented into {n_classes - len(empty)} of n_classes={n_classes} classes "
            f"({'class' if one else 'classes'} {_join(empty)} {'holds' if one else 'hold'} less than half a "
            f"pixel's worth of weight); {_negligible_hint(record['mode'], self.options.init)}",
            file=self.options.log,
        )

    def _save_records(self) -> None:
        """The whole records file, atomically: one line per image, sorted by input path (so the
        file does not depend on the order images finished in, nor on the engine)."""
        records = (self.records[key] for key in sorted(self.records))
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in records))

    # -- finish ------------------------------------------------------------------------------
    def _finish(self) -> None:
        """Wait for the writes, compact the records (also on errors)."""
        t0 = time.perf_counter()
        try:
            self._collect(block_until=0)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            self.appender.close()
            self._save_records()  # compact: one line per image (an overwritten image had two)
            self.times["write_s"] += time.perf_counter() - t0
            self.bar.close()

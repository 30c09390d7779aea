"""CDnet evaluation: run background models over sequences and score them as CDnet does.

The library functions behind ``torchgmm evaluate``: :func:`find_cdnet_sequences`,
:func:`evaluate_sequence` (one model, one sequence), :func:`evaluate_dataset` (every method on
every sequence, written as ``results.json``/``.csv``), :func:`write_results` and
:func:`format_table`. The models come from :func:`torchgmm.jobs.baselines.method_factories`.
Every sequence is checked before any model runs; a sequence that fails part-way keeps its
row (with the error) and the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from torchgmm import __version__
from torchgmm._checks import add_note, resolve_device
from torchgmm.io.images import atomic_write_text, decode_image_file, make_output_folder
from torchgmm.io.video import VideoReader, _frame_number, _numbering_gap, list_image_sequence
from torchgmm.jobs._threads import step_threads
from torchgmm.metrics import (
    GT_MOTION,
    GT_OUTSIDE_ROI,
    GT_SHADOW,
    GT_STATIC,
    GT_UNKNOWN,
    ChangeDetectionCounter,
    UndefinedScoreWarning,
    mean_scores,
    read_cdnet_sequence_info,
)
from torchgmm.postprocess import apply_postprocess, postprocess_settings

__all__ = [
    "SCORE_KEYS",
    "INTERRUPTED_STEM",
    "find_cdnet_sequences",
    "evaluate_sequence",
    "evaluate_dataset",
    "write_results",
    "format_table",
]


def find_cdnet_sequences(root: str | os.PathLike) -> list[Path]:
    """Every folder under ``root`` (or ``root`` itself) holding ``input/`` and ``groundtruth/``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no sequence under ``root``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for part in ("baseline/highway/input", "baseline/highway/groundtruth", "shadow/cubicle/input"):
        ...     (root / part).mkdir(parents=True)
        >>> [p.relative_to(root).as_posix() for p in find_cdnet_sequences(root)]  # cubicle has no ground truth
        ['baseline/highway']
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist or is not a folder.")
    found = sorted({p.parent for p in root.rglob("input") if p.is_dir() and (p.parent / "groundtruth").is_dir()})
    if not found:
        raise ValueError(
            f"no CDnet sequences under {str(root)!r}: expected category/sequence/ folders holding "
            "input/, groundtruth/, temporalROI.txt and ROI.bmp."
        )
    return found


def _sequence_name(seq_dir: Path) -> str:
    return f"{seq_dir.parent.name}/{seq_dir.name}"


def _check_sequence(seq_dir: Path) -> None:
    """Everything :func:`evaluate_sequence` needs is there (raises before any work).

    Frames are paired by position, so the input and ground-truth files of the scored frames
    must be numbered alike and without gaps: a missing ``in000012.jpg`` would otherwise
    score every later frame against the ground truth of the next one.
    """
    info = read_cdnet_sequence_info(seq_dir)
    last = info.temporal_roi[1]
    if info.roi is not None and not bool(info.roi.any()):
        raise ValueError(f"the ROI image of {str(seq_dir)!r} selects no pixel (all zero): nothing would be scored.")
    first: dict[str, Path] = {}
    for sub in ("input", "groundtruth"):
        images = list_image_sequence(seq_dir / sub)
        if len(images) < last:
            raise ValueError(
                f"{str(seq_dir / sub)!r} holds {len(images)} images but temporalROI.txt scores frames up to {last}."
            )
        size = tuple(decode_image_file(images[0]).shape[-2:])
        if info.roi is not None and tuple(info.roi.shape[-2:]) != size:
            raise ValueError(
                f"{str(seq_dir / 'ROI.bmp')!r} is {tuple(info.roi.shape[-2:])} (H, W) but {str(images[0])!r} is {size}."
            )
        gap = _numbering_gap(images[:last])
        if gap is not None:
            prev, cur, path = gap
            raise ValueError(
                f"{str(seq_dir / sub)!r}: frame numbers jump from {prev} to {cur} ({path.name}); "
                "frames are paired with the ground truth by position, so every frame up to the "
                "end of the temporal ROI must be there."
            )
        first[sub] = images[0]
    starts = [_frame_number(first[sub]) for sub in ("input", "groundtruth")]
    if None not in starts and starts[0] != starts[1]:
        raise ValueError(
            f"{str(seq_dir)!r}: the input starts at {first['input'].name} but the ground truth at "
            f"{first['groundtruth'].name}; frames are paired by position and must be numbered alike."
        )


#: every value a CDnet ground-truth pixel may hold
_GT_LABELS = (GT_STATIC, GT_SHADOW, GT_OUTSIDE_ROI, GT_UNKNOWN, GT_MOTION)
#: share of the scored pixels that may hold other values (anti-aliased edges in a few
#: CDnet files) before the ground truth is taken for another coding (0/1, 0/255 RGB, ...)
_MAX_UNLABELLED_SHARE = 0.01


def evaluate_sequence(
    seq_dir: str | os.PathLike,
    make_model: Callable[[], Callable[[Tensor], Tensor]],
    *,
    device: str | torch.device = "cpu",
    postprocess: dict | None = None,
    gray: bool = False,
) -> dict:
    """Run one model over one CDnet sequence and score it, with and without post-processing.

    Frames 1 .. last of the temporal ROI are fed in order (the frames before its start warm
    the model up); scores count frames inside the temporal ROI and pixels inside ``ROI.bmp``.

    Args:
        seq_dir: a CDnet sequence folder (``input/``, ``groundtruth/``, ``temporalROI.txt``,
            ``ROI.bmp``).
        make_model: returns a fresh callable mapping ``(1, C, H, W)`` uint8 frames to
            ``(1, 1, H, W)`` bool masks (see :func:`method_factories`).
        device: where frames, masks and counts live.
        postprocess: keyword arguments of :func:`apply_postprocess`; the row then also holds
            ``"postprocessed"`` scores.
        gray: feed grey frames (C = 1).

    Returns:
        ``{"sequence": "category/name", "frames", "fps", "Recall", ..., "F-measure", "TP", ...}``.
    """
    seq_dir = Path(seq_dir)
    device = resolve_device(device)
    info = read_cdnet_sequence_info(seq_dir)
    roi = info.roi.to(device)
    raw = ChangeDetectionCounter(roi=roi, temporal_roi=info.temporal_roi)
    cleaned = ChangeDetectionCounter(roi=roi, temporal_roi=info.temporal_roi) if postprocess else None
    model = make_model()
    first, last = info.temporal_roi
    labels = torch.tensor(_GT_LABELS, dtype=torch.uint8, device=device)
    unlabelled = torch.zeros((), dtype=torch.int64, device=device)  # scored pixels with other values
    frames = 0
    t0 = time.perf_counter()
    with (
        step_threads(device, roi.numel()),  # the readers decode on threads beside the model
        VideoReader(seq_dir / "input", gray=gray, end=last, device=device) as inputs,
        VideoReader(seq_dir / "groundtruth", gray=True, end=last, device=device) as truth,
    ):
        for index, (frame, gt) in enumerate(zip(inputs, truth, strict=True)):
            mask = model(frame.unsqueeze(0))
            raw.update(mask, gt.unsqueeze(0), frame_index=index)
            if cleaned is not None:
                cleaned.update(apply_postprocess(mask, **postprocess), gt.unsqueeze(0), frame_index=index)
            if index + 1 >= first:  # no host sync: checked once at the end
                unlabelled += (~torch.isin(gt[0], labels) & roi).sum()
            frames += 1
    elapsed = time.perf_counter() - t0
    scored = int(roi.sum()) * (last - first + 1)
    if int(unlabelled) > _MAX_UNLABELLED_SHARE * scored:
        raise ValueError(
            f"{str(seq_dir / 'groundtruth')!r}: {int(unlabelled)} of the {scored} scored pixels "
            f"({100 * int(unlabelled) / scored:.1f}%) hold values other than CDnet's labels {_GT_LABELS} "
            "(0 static, 50 shadow, 85 outside the ROI, 170 unknown, 255 motion) and would not be scored; "
            "is the ground truth coded otherwise (e.g. 0/1)?"
        )
    row = dict(sequence=_sequence_name(seq_dir), frames=frames, fps=frames / elapsed, **raw.compute())
    if cleaned is not None:
        row["postprocessed"] = cleaned.compute()
    _warn_undefined(row)
    return row


def _warn_undefined(row: dict) -> None:
    """One warning naming the sequence and its undefined scores, and why they are."""
    undefined = [k for k in SCORE_KEYS if math.isnan(row[k])]
    if not undefined:
        return
    tp, fp, fn, tn = (row[k] for k in ("TP", "FP", "FN", "TN"))
    why = (
        "no pixel is scored (every pixel of its temporal ROI is outside the ROI or unknown: 85/170)"
        if tp + fp + fn + tn == 0
        else "its ground truth has no motion pixel (255)"
        if tp + fn == 0
        else "nothing was detected"
        if tp + fp == 0
        else "no static pixel (0/50) is scored"
    )
    warnings.warn(
        f"{row['sequence']}: {', '.join(undefined)} undefined (NaN; null in results.json, blank in "
        f"results.csv) because {why}; left out of the means.",
        UndefinedScoreWarning,
        stacklevel=3,
    )


SCORE_KEYS = ("Recall", "Specificity", "FPR", "FNR", "PWC", "Precision", "F-measure")
#: file stem of the rows an interrupted evaluation writes (see :func:`evaluate_dataset`)
INTERRUPTED_STEM = "results-interrupted"


def evaluate_dataset(
    root: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    methods: dict[str, Callable[[], Callable[[Tensor], Tensor]]],
    device: str | torch.device = "auto",
    postprocess: dict | None = None,
    gray: bool = False,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    raise_errors: bool = True,
    metadata: dict | None = None,
) -> list[dict]:
    """Evaluate each method on every CDnet sequence under ``root`` (or under each of several roots).

    Every sequence is checked (ROI, temporal ROI, input and ground-truth images numbered
    alike) and ``out_dir`` created before any model runs. A sequence that fails part-way (a
    corrupt frame, ground truth that is not CDnet-coded) does not stop the others: its row
    holds the error instead of scores, and the results of the others are written.

    Args:
        root: dataset root (``category/sequence/`` folders), or one sequence folder, or a list
            of them: their sequences are scored alike and the means taken over all of them
            (two sequences of the same ``category/name`` are refused).
        methods: name -> model factory (see :func:`method_factories`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        postprocess: keyword arguments of :func:`apply_postprocess`; each row then holds
            ``"postprocessed"`` scores as well.
        gray: feed grey frames.
        out_dir: write ``results.json`` and ``results.csv`` there (see :func:`write_results`;
            the JSON says ``"complete": true``), also when a sequence failed. On Ctrl-C the
            rows done so far go to ``results-interrupted.json``/``.csv`` (``"complete":
            false``) instead, so an earlier complete ``results.json`` is not replaced by a
            partial one; a complete run removes them.
        progress: a progress bar per method on stderr.
        raise_errors: once every sequence is done and the results are written, raise the
            first sequence's error (the others as notes); False returns the rows instead.
        metadata: JSON-serialisable facts about the run (e.g. the model settings, which
            ``methods`` does not expose) for the written JSON's ``"settings"``, beside the
            dataset root, methods, device, ``gray``, post-processing and versions recorded
            here (a key of both takes the value given here).

    Returns:
        One row per (method, sequence), then per method the per-category and overall means
        (``sequence`` = ``"category/mean"``, ``"overall/mean"``), as CDnet averages: a
        category's scores are the means over its sequences, the overall scores the means
        over the categories; sequences that failed are left out. A failed sequence's row has
        ``"error"`` (the message) and ``"error_type"`` instead of scores.

    Raises:
        FileNotFoundError, ValueError: a missing or malformed sequence, or a bad setting
            (before any work).
        OSError: ``out_dir`` cannot be created (before any work).
        Exception: with ``raise_errors``, the first failed sequence's error, after the
            results are written.
    """
    from tqdm import tqdm

    device = resolve_device(device)
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    sequences = [seq for r in roots for seq in find_cdnet_sequences(r)]
    names = [_sequence_name(seq) for seq in sequences]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the roots {[str(r) for r in roots]} hold the same sequence more than once: {twice}.")
    postprocess_settings(postprocess)  # checked before any work; applied as given
    for seq in sequences:
        _check_sequence(seq)
    if out_dir is not None:
        make_output_folder(out_dir)  # a file in the way fails now, not after the work
    settings = {  # the caller's facts win over those recorded here
        **dict(
            root=str(Path(roots[0]).resolve()) if len(roots) == 1 else [str(Path(r).resolve()) for r in roots],
            methods=list(methods),
            device=str(device),
            gray=gray,
            postprocess=postprocess,
            torchgmm=__version__,
            torch=torch.__version__,
        ),
        **(metadata or {}),
    }
    rows: list[dict] = []
    errors: list[Exception] = []
    try:
        for name, make_model in methods.items():
            for seq in tqdm(sequences, desc=name, disable=not progress, file=sys.stderr):
                try:
                    row = evaluate_sequence(seq, make_model, device=device, postprocess=postprocess, gray=gray)
                except Exception as exc:  # noqa: BLE001 - this sequence fails, the others go on
                    errors.append(exc)
                    row = dict(sequence=_sequence_name(seq), error=str(exc), error_type=type(exc).__name__)
                rows.append(dict(method=name, **row))
    except BaseException as exc:  # Ctrl-C: the rows done so far are kept, apart from a complete run's
        if out_dir is not None:
            paths = write_results(
                rows + _mean_rows(rows), out_dir, stem=INTERRUPTED_STEM, complete=False, settings=settings
            )
            add_note(exc, f"the {len(rows)} sequence run(s) done are in {str(paths[0])!r}")
        raise
    rows += _mean_rows(rows)
    if out_dir is not None:
        write_results(rows, out_dir, complete=True, settings=settings)
        for stale in (INTERRUPTED_STEM + ".json", INTERRUPTED_STEM + ".csv"):  # of an earlier, interrupted run
            (Path(out_dir) / stale).unlink(missing_ok=True)
    if errors and raise_errors:
        for other in errors[1:]:
            add_note(errors[0], f"another sequence failed as well: {other}")
        raise errors[0]
    return rows


def write_results(
    rows: list[dict], out_dir: str | os.PathLike, stem: str = "results", **extra: Any
) -> tuple[Path, Path]:
    """Write evaluation rows as ``<stem>.json`` (``{"rows": [...], **extra}``) and ``<stem>.csv``.

    The CSV has one line per row; post-processed scores appear as ``post_<score>`` columns.

    Returns:
        the JSON and CSV paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    rows = [_defined_or_none(r) for r in rows]  # strict JSON has no NaN: undefined is null
    atomic_write_text(json_path, json.dumps(dict(extra, rows=rows), indent=2, default=str, allow_nan=False) + "\n")
    flat = []
    for r in rows:
        line = {k: v for k, v in r.items() if not isinstance(v, dict)}
        line.update({f"post_{k}": v for k, v in r.get("postprocessed", {}).items()})
        flat.append(line)
    fields = list(dict.fromkeys(k for line in flat for k in line))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(csv_path, text.getvalue())
    return json_path, csv_path


def _defined_or_none(value: Any) -> Any:
    """``value`` with every NaN float (an undefined score) replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: _defined_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Per-category and overall means of the scores, per method, as CDnet averages: a
    category's scores are the means over its videos, the overall scores the means over the
    categories (so a category with more videos does not weigh more). ``frames`` are summed,
    ``fps`` is the mean over videos."""

    def mean(members: list[dict]) -> dict:
        return mean_scores(members, SCORE_KEYS)  # undefined scores are left out

    def mean_row(method: str, label: str, members: list[dict], videos: list[dict]) -> dict:
        row = dict(
            method=method,
            sequence=label,
            frames=sum(r["frames"] for r in videos),
            fps=sum(r["fps"] for r in videos) / len(videos),
            **mean(members),
        )
        if all("postprocessed" in r for r in members):
            row["postprocessed"] = mean([r["postprocessed"] for r in members])
        return row

    means = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and "error" not in r]
        if not mine:
            continue
        categories = dict.fromkeys(r["sequence"].split("/")[0] for r in mine)
        per_category = []
        for c in categories:
            videos = [r for r in mine if r["sequence"].split("/")[0] == c]
            per_category.append(mean_row(method, f"{c}/mean", videos, videos))
        means += [*per_category, mean_row(method, "overall/mean", per_category, mine)]
    return means


def _cell(scores: dict, key: str, size: int, digits: int) -> str:
    """A score for :func:`format_table`; an undefined (NaN) one reads "n/a"."""
    value = float(scores[key])
    return f"{value:{size}.{digits}f}" if math.isfinite(value) else f"{'n/a':>{size}}"


def format_table(rows: Iterable[dict], *, postprocessed: bool = False) -> str:
    """A plain-text table of Recall, Precision, F-measure, PWC and fps per row.

    Args:
        rows: rows of :func:`evaluate_dataset`.
        postprocessed: show the post-processed scores (rows without them are left out).
    """
    rows = list(rows)
    width = max([len("method")] + [len(r["method"]) for r in rows])
    lines = [f"{'method':{width}} {'sequence':26} {'Recall':>7} {'Precision':>9} {'F':>7} {'PWC':>7} {'fps':>8}"]
    for r in rows:
        scores = r
        if "error" in r:
            if not postprocessed:
                lines.append(f"{r['method']:{width}} {r['sequence'][:26]:26} failed: {r['error_type']}")
            continue
        if postprocessed:
            if "postprocessed" not in r:
                continue
            scores = r["postprocessed"]
        lines.append(
            f"{r['method']:{width}} {r['sequence'][:26]:26} {_cell(scores, 'Recall', 7, 4)} "
            f"{_cell(scores, 'Precision', 9, 4)} {_cell(scores, 'F-measure', 7, 4)} {_cell(scores, 'PWC', 7, 3)} "
            f"{float(r['fps']):8.1f}"
        )
    return "\n".join(lines)

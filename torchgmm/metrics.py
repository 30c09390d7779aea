"""Change-detection counts and scores with the CDnet 2014 conventions.

Ground truth (CDnet ``groundtruth/gt%06d.png``) labels every pixel:

====== ============== ==============================================
value  meaning        scored as
====== ============== ==============================================
0      static         negative (TN when predicted static, else FP)
50     hard shadow    negative (TN / FP)
85     outside ROI    not scored
170    unknown motion not scored
255    motion         positive (TP when predicted motion, else FN)
====== ============== ==============================================

Only pixels inside the spatial ROI (``ROI.bmp``, nonzero = inside) and frames inside the
temporal ROI (``temporalROI.txt``: 1-based inclusive ``start end``) count. Other gray values
(a few CDnet files hold anti-aliased edges) are not scored either.

Scores follow the CDnet definitions, with 0/0 returned as 0 (see :func:`scores`).

Shape vocabulary: B frames (batch), H height, W width.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from torchgmm.exceptions import UndefinedScoreWarning
from torchgmm._checks import ShapeError, check_tensor

__all__ = [
    "GT_STATIC",
    "GT_SHADOW",
    "GT_OUTSIDE_ROI",
    "GT_UNKNOWN",
    "GT_MOTION",
    "confusion_counts",
    "scores",
    "mean_scores",
    "UndefinedScoreWarning",
    "ChangeDetectionCounter",
    "CDnetSequenceInfo",
    "read_cdnet_sequence_info",
]

#: ground-truth labels (CDnet 2014)
GT_STATIC = 0
GT_SHADOW = 50
GT_OUTSIDE_ROI = 85
GT_UNKNOWN = 170
GT_MOTION = 255


def _as_bhw(x: Tensor, name: str) -> Tensor:
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ShapeError(f"`{name}` must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}.")
        return x[:, 0]
    if x.ndim == 3:
        return x
    if x.ndim == 2:
        return x.unsqueeze(0)
    raise ShapeError(f"`{name}` must have shape (B, 1, H, W), (B, H, W) or (H, W), got {tuple(x.shape)}.")


def confusion_counts(
    pred: Tensor,
    gt: Tensor,
    roi: Tensor | None = None,
    *,
    per_frame: bool = False,
) -> Tensor:
    """Count ``[TP, FP, FN, TN]`` of change masks against CDnet ground truth.

    Runs on the inputs' device without a host sync. Positives are gt 255; negatives are gt 0
    and 50 (shadow); every other gt value (85 outside ROI, 170 unknown, anything else) and
    every pixel outside ``roi`` is ignored.

    Args:
        pred: predicted foreground masks (bool; any nonzero value counts as foreground).
        gt: CDnet ground-truth labels (uint8, or any integer dtype).
        roi: optional spatial region of interest, bool (nonzero = scored); broadcast over B.
        per_frame: return one row of counts per frame instead of the sum.

    Returns:
        int64 counts ``[TP, FP, FN, TN]``: shape ``(4,)``, or ``(B, 4)`` with ``per_frame``.

    Raises:
        TypeError: an input is not a tensor.
        ShapeError: ``pred`` and ``gt`` differ in shape, a shape is not one of those below, or
            ``roi`` is not ``(H, W)``.

    Shape:
        - pred: ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``
        - gt: the same shape as ``pred``
        - roi: ``(H, W)`` (or ``(1, H, W)``, ``(1, 1, H, W)``)
        - Output: ``(4,)`` or ``(B, 4)``

    Example:
        >>> pred = torch.tensor([[True, False], [True, False]])
        >>> gt = torch.tensor([[255, 255], [50, 170]], dtype=torch.uint8)
        >>> confusion_counts(pred, gt).tolist()   # TP, FP (shadow), FN, TN (none)
        [1, 1, 1, 0]
    """
    check_tensor(pred, "pred")
    check_tensor(gt, "gt")
    if gt.is_floating_point() or gt.dtype == torch.bool:
        raise TypeError(f"`gt` must hold CDnet's integer labels (0, 50, 85, 170, 255), got dtype {gt.dtype}.")
    p = _as_bhw(pred, "pred")
    g = _as_bhw(gt, "gt")
    if p.shape != g.shape:
        raise ShapeError(f"`pred` {tuple(pred.shape)} and `gt` {tuple(gt.shape)} must have the same shape.")
    if p.dtype != torch.bool:
        p = p != 0
    positive = g == GT_MOTION
    negative = (g == GT_STATIC) | (g == GT_SHADOW)
    if roi is not None:
        check_tensor(roi, "roi")
        r = roi.reshape(roi.shape[-2:]) if roi.ndim > 2 and roi.shape[:-2].numel() == 1 else roi
        if r.ndim != 2 or tuple(r.shape) != tuple(g.shape[-2:]):
            raise ShapeError(f"`roi` must have shape (H, W) = {tuple(g.shape[-2:])}, got {tuple(roi.shape)}.")
        r = r.to(device=g.device) != 0
        positive = positive & r
        negative = negative & r
    tp = (p & positive).sum(dim=(-2, -1))
    fn = (~p & positive).sum(dim=(-2, -1))
    fp = (p & negative).sum(dim=(-2, -1))
    tn = (~p & negative).sum(dim=(-2, -1))
    counts = torch.stack([tp, fp, fn, tn], dim=-1).to(torch.int64)  # (B, 4)
    return counts if per_frame else counts.sum(0)


def scores(counts: Tensor) -> dict[str, float]:
    """CDnet scores from ``[TP, FP, FN, TN]`` counts.

    Definitions (changedetection.net, 2014):

    - Recall (Re) = TP / (TP + FN)
    - Specificity (Sp) = TN / (TN + FP)
    - FPR = FP / (FP + TN)
    - FNR = FN / (TP + FN)
    - PWC = 100 * (FN + FP) / (TP + FN + FP + TN)
    - Precision (Pr) = TP / (TP + FP)
    - F-measure = 2 * Pr * Re / (Pr + Re) = 2 TP / (2 TP + FP + FN)

    A score whose denominator is 0 is undefined and is NaN, never a made-up 0: Recall on
    frames without motion, Precision where nothing was detected, every score where no pixel
    was scored. The F-measure is computed as ``2 TP / (2 TP + FP + FN)``, so it is 0 where
    motion was all missed (as scikit-learn's F1) and undefined only when TP, FP and FN are
    all 0. :func:`mean_scores` leaves undefined scores out of an average.

    Args:
        counts: ``[TP, FP, FN, TN]``, shape ``(4,)``; ``(B, 4)`` rows are summed first.

    Returns:
        a dict with keys ``"Recall"``, ``"Specificity"``, ``"FPR"``, ``"FNR"``, ``"PWC"``,
        ``"Precision"``, ``"F-measure"`` (Python floats) and the counts ``"TP"``, ``"FP"``,
        ``"FN"``, ``"TN"`` (ints).

    Raises:
        TypeError: ``counts`` is not an integer tensor.
        ShapeError: ``counts`` is not ``(4,)`` or ``(B, 4)``.
        ValueError: a count is negative.

    Shape:
        - counts: ``(4,)`` or ``(B, 4)``, integer (e.g. int64 from :func:`confusion_counts`)

    Example:
        >>> s = scores(torch.tensor([8, 2, 2, 88]))
        >>> round(s["F-measure"], 3), s["PWC"]
        (0.8, 4.0)
    """
    check_tensor(counts, "counts")
    if counts.shape[-1:] != (4,) or counts.ndim not in (1, 2):
        raise ShapeError(f"`counts` must have shape (4,) or (B, 4), got {tuple(counts.shape)}.")
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"`counts` must hold integer counts, got dtype {counts.dtype}.")
    if counts.ndim == 2:
        counts = counts.sum(0)
    tp, fp, fn, tn = (int(v) for v in counts.tolist())
    if min(tp, fp, fn, tn) < 0:
        raise ValueError(f"`counts` must be >= 0, got [TP, FP, FN, TN] = {[tp, fp, fn, tn]}.")

    def ratio(num: float, den: float) -> float:
        return num / den if den else math.nan

    return {
        "Recall": ratio(tp, tp + fn),
        "Specificity": ratio(tn, tn + fp),
        "FPR": ratio(fp, fp + tn),
        "FNR": ratio(fn, tp + fn),
        "PWC": 100.0 * ratio(fn + fp, tp + fn + fp + tn),
        "Precision": ratio(tp, tp + fp),
        "F-measure": ratio(2 * tp, 2 * tp + fp + fn),
        "TP": tp,
        "FP": fp,
        "FN": fn,
        "TN": tn,
    }


def mean_scores(rows: Sequence[dict], keys: Iterable[str]) -> dict[str, float]:
    """The mean of each score over ``rows``, leaving undefined (NaN) values out.

    A score undefined in every row is NaN. A sequence on which no pixel was scored would
    otherwise pull a category's mean down as if it had scored 0 (or make it NaN).

    Args:
        rows: score dicts (from :func:`scores`).
        keys: the scores to average.

    Returns:
        key -> mean over the rows where it is defined.

    Example:
        >>> rows = [{"F-measure": 0.8}, {"F-measure": float("nan")}, {"F-measure": 0.6}]
        >>> round(mean_scores(rows, ["F-measure"])["F-measure"], 3)
        0.7
    """
    out = {}
    for key in keys:
        values = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


class ChangeDetectionCounter:
    """Streaming CDnet confusion counts: ``update`` per batch, ``compute`` the scores, ``reset``.

    Counts stay on the device of the first update (no host sync until :meth:`compute`).

    Args:
        roi: spatial ROI ``(H, W)`` (nonzero = scored), or None for the whole frame.
        temporal_roi: ``(first, last)`` frame numbers, **1-based and inclusive** as in CDnet's
            ``temporalROI.txt``; frames outside are skipped. None scores every frame.

    Raises:
        TypeError: ``roi`` is not a tensor, or ``temporal_roi`` is not two ints.
        ValueError: ``temporal_roi`` is not 1-based with ``first <= last``.

    Shape:
        - pred, gt: ``(B, 1, H, W)`` or ``(B, H, W)``; ``frame_index``: int (first frame of the
          batch) or ``(B,)`` tensor; **0-based** (``in000001.jpg`` is index 0).
        - counts: ``(4,)`` int64 ``[TP, FP, FN, TN]``; frames: ``()`` int64.

    Example:
        >>> counter = ChangeDetectionCounter(temporal_roi=(2, 3))
        >>> pred = torch.ones(4, 1, 2, 2, dtype=torch.bool)
        >>> gt = torch.full((4, 1, 2, 2), 255, dtype=torch.uint8)
        >>> counter.update(pred, gt, frame_index=0)   # frames 1..4, only 2 and 3 count
        >>> counter.counts.tolist()
        [8, 0, 0, 0]
    """

    def __init__(self, roi: Tensor | None = None, temporal_roi: tuple[int, int] | None = None) -> None:
        if roi is not None:
            check_tensor(roi, "roi")
        if temporal_roi is not None:
            if len(temporal_roi) != 2 or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in temporal_roi
            ):
                raise TypeError(f"`temporal_roi` must be two int frame numbers (first, last), got {temporal_roi!r}.")
            first, last = (int(v) for v in temporal_roi)
            if first < 1 or last < first:
                raise ValueError(
                    f"`temporal_roi` must be 1-based (first, last) with 1 <= first <= last, got {temporal_roi!r}."
                )
            temporal_roi = (first, last)
        self.roi = roi
        self.temporal_roi = temporal_roi
        #: (4,) int64 running [TP, FP, FN, TN]
        self.counts = torch.zeros(4, dtype=torch.int64)
        #: () int64 number of frames inside the temporal ROI seen so far
        self.frames = torch.zeros((), dtype=torch.int64)

    def reset(self) -> None:
        """Zero the counts (keeping their device)."""
        self.counts = torch.zeros_like(self.counts)
        self.frames = torch.zeros_like(self.frames)

    def update(self, pred: Tensor, gt: Tensor, frame_index: int | Tensor = 0) -> None:
        """Add a batch of masks and ground truths.

        Args:
            pred: predicted masks ``(B, 1, H, W)`` or ``(B, H, W)``.
            gt: CDnet labels of the same shape.
            frame_index: 0-based index of the batch's first frame (consecutive frames
                assumed), or a ``(B,)`` tensor with each frame's index.
        """
        check_tensor(pred, "pred")
        check_tensor(gt, "gt")
        per_frame = confusion_counts(pred, gt, self.roi, per_frame=True)  # (B, 4)
        b = per_frame.shape[0]
        if self.temporal_roi is not None:
            if isinstance(frame_index, Tensor):
                idx = frame_index.to(per_frame.device).reshape(-1)
                if idx.numel() != b:
                    raise ShapeError(f"`frame_index` must hold one index per frame ({b}), got {idx.numel()}.")
                number = idx + 1
                keep = (number >= self.temporal_roi[0]) & (number <= self.temporal_roi[1])
                per_frame = per_frame * keep.unsqueeze(-1)
                n_frames = keep.sum()
            else:
                first = int(frame_index) + 1  # 1-based frame number
                lo = max(self.temporal_roi[0] - first, 0)
                hi = min(self.temporal_roi[1] - first + 1, b)
                per_frame = per_frame[lo:hi] if hi > lo else per_frame[:0]
                n_frames = max(hi - lo, 0)
        else:
            n_frames = b
        if self.counts.device != per_frame.device:
            self.counts = self.counts.to(per_frame.device)
            self.frames = self.frames.to(per_frame.device)
        self.counts += per_frame.sum(0)
        self.frames += n_frames

    def compute(self) -> dict[str, float]:
        """The CDnet scores of everything seen since the last reset (see :func:`scores`)."""
        return scores(self.counts)


class CDnetSequenceInfo(NamedTuple):
    """What a CDnet sequence folder says about scoring."""

    #: (H, W) bool, True inside the region of interest
    roi: Tensor
    #: (first, last), 1-based inclusive frame numbers
    temporal_roi: tuple[int, int]


def _read_roi(path: Path) -> Tensor:
    """Read ROI.bmp (Pillow when installed, else PyAV's image demuxer) as (H, W) bool."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        Image = None  # type: ignore[assignment]
    if Image is not None:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"))
        except Exception as exc:
            raise ValueError(f"cannot read ROI image {str(path)!r}: {exc}") from exc
        return torch.from_numpy(arr.copy()) != 0
    try:  # pragma: no cover - Pillow is normally installed with torchvision
        import av

        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return torch.from_numpy(frame.to_ndarray(format="gray").copy()) != 0
    except Exception as exc:  # pragma: no cover
        raise ValueError(f"cannot read ROI image {str(path)!r} (install Pillow): {exc}") from exc


def read_cdnet_sequence_info(seq_dir: str | os.PathLike) -> CDnetSequenceInfo:
    """Read ``ROI.bmp`` and ``temporalROI.txt`` of a CDnet sequence folder.

    Args:
        seq_dir: e.g. ``dataset/baseline/highway`` (holding ``input/``, ``groundtruth/``).

    Returns:
        the spatial ROI ``(H, W)`` bool (nonzero pixels of ``ROI.bmp``; ``ROI.png``/``ROI.jpg``
        are tried when there is no BMP, a JPEG thresholded at 128) and the temporal ROI
        ``(first, last)``, 1-based inclusive.

    Raises:
        FileNotFoundError: the folder, ``temporalROI.txt`` or the ROI image is missing.
        ValueError: ``temporalROI.txt`` does not hold two integers ``first <= last``.

    Shape:
        - roi: ``(H, W)`` bool

    Example:
        >>> import tempfile
        >>> from torchgmm.io.images import write_png
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "temporalROI.txt").write_text("470 1700")
        ...     write_png(f"{d}/ROI.png", torch.tensor([[0, 255, 255]], dtype=torch.uint8))
        ...     info = read_cdnet_sequence_info(d)
        >>> info.roi.tolist(), info.temporal_roi
        ([[False, True, True]], (470, 1700))
    """
    seq = Path(seq_dir)
    if not seq.is_dir():
        raise FileNotFoundError(f"CDnet sequence folder {str(seq)!r} does not exist.")
    troi_path = seq / "temporalROI.txt"
    if not troi_path.is_file():
        raise FileNotFoundError(f"{str(troi_path)!r} does not exist; expected a CDnet sequence folder.")
    fields = troi_path.read_text().split()
    try:
        first, last = (int(v) for v in fields[:2])
        if len(fields) < 2 or first < 1 or last < first:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{str(troi_path)!r} must hold two 1-based frame numbers 'first last' with first <= last, "
            f"got {' '.join(fields)!r}."
        ) from None
    for name in ("ROI.bmp", "ROI.png", "ROI.jpg"):
        roi_path = seq / name
        if roi_path.is_file():
            break
    else:
        raise FileNotFoundError(f"no ROI.bmp (or ROI.png/ROI.jpg) in {str(seq)!r}.")
    roi = _read_roi(roi_path)
    if roi_path.suffix == ".jpg":
        # JPEG artefacts: threshold the grey value instead of "nonzero"
        from PIL import Image
        import numpy as np

        with Image.open(roi_path) as im:
            roi = torch.from_numpy(np.asarray(im.convert("L")).copy()) >= 128
    return CDnetSequenceInfo(roi=roi, temporal_roi=(first, last))

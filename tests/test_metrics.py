"""CDnet confusion counts and scores against hand-computed values; post-processing ops.

The connected-component labelling is checked against OpenCV and against
``tests/reference_labels.py`` (the pixel-wise labelling torchgmm used before it labelled row
runs) on shapes chosen to be hard for it: long paths, spirals, Hilbert curves, diagonal
zig-zags, checkerboards, 1-pixel-wide masks and batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference_labels import reference_component_labels, reference_remove_small_blobs
from torchgmm import postprocess
from torchgmm._checks import ShapeError
from torchgmm.metrics import (
    ChangeDetectionCounter,
    confusion_counts,
    read_cdnet_sequence_info,
    scores,
)
from torchgmm.postprocess import (
    binary_dilation,
    binary_erosion,
    binary_opening,
    connected_component_labels,
    median_filter_mask,
    remove_small_blobs,
)

# 3x4 ground truth using every CDnet label
GT = torch.tensor(
    [
        [255, 255, 0, 0],
        [50, 50, 170, 85],
        [255, 0, 170, 85],
    ],
    dtype=torch.uint8,
)
PRED = torch.tensor(
    [
        [1, 0, 1, 0],
        [1, 0, 1, 1],
        [0, 0, 0, 1],
    ],
    dtype=torch.bool,
)
# by hand: motion (255) at (0,0) pred 1 -> TP; (0,1) pred 0 -> FN; (2,0) pred 0 -> FN
# static (0) at (0,2) pred 1 -> FP; (0,3) -> TN; (2,1) -> TN
# shadow (50) at (1,0) pred 1 -> FP; (1,1) -> TN
# unknown (170) and outside (85): ignored whatever pred says
HAND = [1, 2, 2, 3]  # TP, FP, FN, TN


def _reference_counts(pred: np.ndarray, gt: np.ndarray, roi: np.ndarray | None) -> list[int]:
    """Independent per-pixel loop written from the CDnet rules."""
    tp = fp = fn = tn = 0
    for idx in np.ndindex(gt.shape):
        if roi is not None and not roi[idx[-2:]]:
            continue
        g, p = int(gt[idx]), bool(pred[idx])
        if g == 255:
            tp, fn = tp + p, fn + (not p)
        elif g in (0, 50):
            fp, tn = fp + p, tn + (not p)
    return [tp, fp, fn, tn]


class TestConfusionCounts:
    def test_hand_computed(self, device):
        got = confusion_counts(PRED.to(device)[None, None], GT.to(device)[None, None])
        assert got.dtype == torch.int64 and got.device.type == device.type
        assert got.tolist() == HAND

    def test_shapes_2d_3d_4d(self):
        for p, g in [(PRED, GT), (PRED[None], GT[None]), (PRED[None, None], GT[None, None])]:
            assert confusion_counts(p, g).tolist() == HAND

    def test_roi(self, device):
        roi = torch.ones(3, 4, dtype=torch.bool)
        roi[0, :] = False  # drops TP at (0,0), FN at (0,1), FP at (0,2), TN at (0,3)
        got = confusion_counts(PRED[None].to(device), GT[None].to(device), roi.to(device))
        assert got.tolist() == [0, 1, 1, 2]

    def test_per_frame_and_random_reference(self, device):
        g = torch.Generator().manual_seed(0)
        labels = torch.tensor([0, 50, 85, 170, 255], dtype=torch.uint8)
        gt = labels[torch.randint(0, 5, (5, 1, 9, 11), generator=g)]
        pred = torch.rand(5, 1, 9, 11, generator=g) > 0.5
        roi = torch.rand(9, 11, generator=g) > 0.3
        per = confusion_counts(pred.to(device), gt.to(device), roi.to(device), per_frame=True)
        assert per.shape == (5, 4)
        for b in range(5):
            assert per[b].tolist() == _reference_counts(pred[b, 0].numpy(), gt[b, 0].numpy(), roi.numpy())
        assert confusion_counts(pred, gt, roi).tolist() == per.sum(0).cpu().tolist()

    def test_non_bool_pred_and_noncontiguous(self):
        p = PRED.to(torch.uint8).t().contiguous().t() * 255  # non-contiguous view pattern
        assert confusion_counts(p, GT).tolist() == HAND
        wide = torch.zeros(3, 8, dtype=torch.uint8)
        wide[:, ::2] = GT
        assert confusion_counts(PRED, wide[:, ::2]).tolist() == HAND

    def test_errors(self):
        with pytest.raises(ShapeError, match="same shape"):
            confusion_counts(PRED, GT[:2])
        with pytest.raises(ShapeError, match="roi"):
            confusion_counts(PRED, GT, torch.ones(2, 2, dtype=torch.bool))
        with pytest.raises(ShapeError, match=r"\(B, 1, H, W\)"):
            confusion_counts(PRED[None, None].expand(1, 2, 3, 4), GT[None, None].expand(1, 2, 3, 4))
        with pytest.raises(TypeError, match="pred"):
            confusion_counts(PRED.numpy(), GT)
        with pytest.raises(TypeError, match="integer labels"):  # 0..1 floats would score nothing
            confusion_counts(PRED, GT.float() / 255)


class TestScores:
    def test_definitions(self):
        tp, fp, fn, tn = 8, 2, 4, 86
        s = scores(torch.tensor([tp, fp, fn, tn]))
        re, pr = tp / (tp + fn), tp / (tp + fp)
        assert s["Recall"] == pytest.approx(re)
        assert s["Specificity"] == pytest.approx(tn / (tn + fp))
        assert s["FPR"] == pytest.approx(fp / (fp + tn))
        assert s["FNR"] == pytest.approx(fn / (tp + fn))
        assert s["PWC"] == pytest.approx(100 * (fn + fp) / (tp + fn + fp + tn))
        assert s["Precision"] == pytest.approx(pr)
        assert s["F-measure"] == pytest.approx(2 * pr * re / (pr + re))
        assert (s["TP"], s["FP"], s["FN"], s["TN"]) == (tp, fp, fn, tn)

    def test_zero_denominators_are_undefined_not_zero(self):
        s = scores(torch.tensor([0, 0, 0, 10]))  # no motion, nothing detected
        assert math.isnan(s["Recall"]) and math.isnan(s["FNR"]) and math.isnan(s["Precision"])
        assert math.isnan(s["F-measure"])
        assert s["Specificity"] == 1.0 and s["FPR"] == 0.0 and s["PWC"] == 0.0
        nothing = scores(torch.zeros(4, dtype=torch.int64))  # no pixel scored
        assert all(
            math.isnan(nothing[k]) for k in ("Recall", "Specificity", "FPR", "FNR", "PWC", "Precision", "F-measure")
        )

    def test_f_measure_of_missed_motion_is_zero_as_in_sklearn(self):
        sk = pytest.importorskip("sklearn.metrics")
        for tp, fp, fn, tn in [(0, 0, 5, 10), (0, 3, 5, 10), (4, 0, 0, 1), (3, 2, 1, 9)]:
            truth = [1] * (tp + fn) + [0] * (fp + tn)
            pred = [1] * tp + [0] * fn + [1] * fp + [0] * tn
            ours = scores(torch.tensor([tp, fp, fn, tn]))["F-measure"]
            assert ours == pytest.approx(sk.f1_score(truth, pred, zero_division=0.0)), (tp, fp, fn, tn)
        assert math.isnan(scores(torch.tensor([0, 0, 5, 10]))["Precision"])  # nothing detected

    def test_mean_scores_leave_undefined_out(self):
        from torchgmm.metrics import mean_scores

        rows = [
            {"F-measure": 0.5, "Recall": math.nan},
            {"F-measure": math.nan, "Recall": math.nan},
            {"F-measure": 0.9, "Recall": math.nan},
        ]
        means = mean_scores(rows, ["F-measure", "Recall"])
        assert means["F-measure"] == pytest.approx(0.7) and math.isnan(means["Recall"])

    def test_rows_summed(self):
        assert scores(torch.tensor([[1, 2, 0, 3], [1, 0, 2, 0]]))["TP"] == 2

    def test_errors(self):
        with pytest.raises(ShapeError, match="counts"):
            scores(torch.zeros(3))
        with pytest.raises(TypeError, match="integer counts"):
            scores(torch.tensor([2.5, 0.0, 1.0, 3.0]))  # int() would truncate 2.5 silently
        with pytest.raises(ValueError, match=r"\[TP, FP, FN, TN\] = \[1, -2, 0, 3\]"):
            scores(torch.tensor([1, -2, 0, 3]))


class TestChangeDetectionCounter:
    def test_temporal_roi_int_index(self, device):
        # 6 frames, numbered 1..6; temporal ROI 3..5 (1-based inclusive) keeps frames 3, 4, 5
        gt = GT.to(device).expand(6, 1, 3, 4).clone()
        pred = PRED.to(device).expand(6, 1, 3, 4).clone()
        counter = ChangeDetectionCounter(temporal_roi=(3, 5))
        counter.update(pred[:4], gt[:4], frame_index=0)  # frames 1..4 -> 3, 4 count
        counter.update(pred[4:], gt[4:], frame_index=4)  # frames 5..6 -> 5 counts
        assert counter.counts.tolist() == [3 * v for v in HAND]
        assert int(counter.frames) == 3
        assert counter.compute()["TP"] == 3
        counter.reset()
        assert counter.counts.tolist() == [0, 0, 0, 0] and counter.counts.device.type == device.type

    def test_temporal_roi_tensor_index_and_roi(self):
        roi = torch.ones(3, 4, dtype=torch.bool)
        roi[0, :] = False
        counter = ChangeDetectionCounter(roi=roi, temporal_roi=(2, 2))
        gt = GT.expand(3, 3, 4).clone()
        pred = PRED.expand(3, 3, 4).clone()
        counter.update(pred, gt, frame_index=torch.tensor([5, 1, 0]))  # only index 1 (= frame 2)
        assert counter.counts.tolist() == [0, 1, 1, 2]
        assert int(counter.frames) == 1

    def test_batch_outside_roi(self):
        counter = ChangeDetectionCounter(temporal_roi=(10, 20))
        counter.update(PRED[None], GT[None], frame_index=0)
        counter.update(PRED[None], GT[None], frame_index=25)
        assert counter.counts.tolist() == [0, 0, 0, 0]
        assert math.isnan(counter.compute()["PWC"])  # nothing scored: undefined

    def test_bad_temporal_roi(self):
        with pytest.raises(ValueError, match="1-based"):
            ChangeDetectionCounter(temporal_roi=(0, 5))
        with pytest.raises(ValueError, match="1-based"):
            ChangeDetectionCounter(temporal_roi=(5, 4))
        with pytest.raises(TypeError, match="two int frame numbers"):
            ChangeDetectionCounter(temporal_roi=(1.5, 2))  # int() would make it (1, 2) silently
        assert ChangeDetectionCounter(temporal_roi=(np.int64(2), 3)).temporal_roi == (2, 3)


class TestReadCDnetSequenceInfo:
    def _make(self, tmp_path, troi="3 7\n"):
        from PIL import Image

        seq = tmp_path / "seq"
        seq.mkdir()
        (seq / "temporalROI.txt").write_text(troi)
        roi = np.zeros((5, 6), np.uint8)
        roi[1:4, 2:5] = 255
        img = Image.fromarray(roi).convert("P")  # palette BMP as CDnet ships it
        img.save(seq / "ROI.bmp")
        return seq, roi

    def test_reads_roi_and_temporal_roi(self, tmp_path):
        seq, roi = self._make(tmp_path)
        info = read_cdnet_sequence_info(seq)
        assert info.temporal_roi == (3, 7)
        assert info.roi.dtype == torch.bool and info.roi.shape == (5, 6)
        assert torch.equal(info.roi, torch.from_numpy(roi != 0))

    def test_errors(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="nothere"):
            read_cdnet_sequence_info(tmp_path / "nothere")
        seq, _ = self._make(tmp_path, troi="7 3")
        with pytest.raises(ValueError, match="temporalROI"):
            read_cdnet_sequence_info(seq)
        (seq / "temporalROI.txt").unlink()
        with pytest.raises(FileNotFoundError, match="temporalROI"):
            read_cdnet_sequence_info(seq)


class TestPostprocess:
    def test_median_majority(self, device):
        m = torch.zeros(1, 1, 7, 7, dtype=torch.bool, device=device)
        m[0, 0, 1:6, 1:6] = True
        m[0, 0, 3, 3] = False  # hole filled
        out = median_filter_mask(m, 3)
        assert bool(out[0, 0, 3, 3]) and not bool(out[0, 0, 1, 1])  # corner of the square: 4/9
        assert out.dtype == torch.bool and out.shape == m.shape

    @pytest.mark.parametrize("k", [3, 5, 7, 17])  # 17: window counts above 255
    def test_median_matches_opencv_including_borders(self, k, device):
        cv2 = pytest.importorskip("cv2")
        g = torch.Generator().manual_seed(k)
        m = torch.rand(2, 1, 20, 25, generator=g) > 0.5
        m[0, 0, :6, :6] = True  # an object in the corner keeps its corner pixel
        m[1, 0, :, :13] = True  # more than half of a 17x17 window, counted exactly
        got = median_filter_mask(m.to(device), k)
        assert got.device.type == device.type
        got = got.cpu()
        assert bool(got[0, 0, 0, 0]) or k > 7
        for b in range(2):
            ref = cv2.medianBlur(m[b, 0].numpy().astype(np.uint8) * 255, k) > 127
            assert np.array_equal(got[b, 0].numpy(), ref)

    @pytest.mark.parametrize("size", [3, 5])
    def test_opening_matches_opencv(self, size, device):
        cv2 = pytest.importorskip("cv2")
        g = torch.Generator().manual_seed(1)
        m = torch.rand(2, 1, 20, 25, generator=g) > (0.4 if size == 3 else 0.2)
        got = binary_opening(m.to(device), size).cpu()
        assert got.any() and (got != m).any()
        k = np.ones((size, size), np.uint8)
        for b in range(2):
            ref = cv2.morphologyEx(m[b, 0].numpy().astype(np.uint8), cv2.MORPH_OPEN, k)
            assert np.array_equal(got[b, 0].numpy(), ref.astype(bool))
        assert torch.equal(binary_dilation(binary_erosion(m, size), size), got)

    @pytest.mark.parametrize("check_every", [1, 3])
    def test_remove_small_blobs_matches_opencv(self, device, check_every):
        cv2 = pytest.importorskip("cv2")
        g = torch.Generator().manual_seed(2)
        m = median_filter_mask(torch.rand(3, 1, 30, 40, generator=g) > 0.55, 3)
        got = remove_small_blobs(m.to(device), 6, check_every=check_every)
        labels = connected_component_labels(m.to(device), check_every=check_every)
        assert got.device.type == labels.device.type == device.type
        got, labels = got.cpu(), labels.cpu()
        assert torch.equal(labels, connected_component_labels(m))  # the CPU's labels, exactly
        index = np.arange(1, 30 * 40 + 1).reshape(30, 40)
        for b in range(3):
            n, lab, stats, _ = cv2.connectedComponentsWithStats(m[b, 0].numpy().astype(np.uint8), connectivity=8)
            keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 6]
            assert 0 < len(keep) < n - 1  # some components kept, some removed
            assert np.array_equal(got[b, 0].numpy(), np.isin(lab, keep))
            # each component named by its largest flat index + 1, background 0
            expected = np.zeros_like(index)
            for i in range(1, n):
                expected[lab == i] = index[lab == i].max()
            assert np.array_equal(labels[b, 0].numpy(), expected)

    @staticmethod
    def snakes(h: int, w: int) -> list[np.ndarray]:
        """Masks whose components have long paths: the case plain max propagation is slow on."""

        def serpentine(h: int, w: int) -> np.ndarray:  # one path of about h * w / 2 pixels
            m = np.zeros((h, w), bool)
            m[::2] = True
            m[1::4, -1] = m[3::4, 0] = True
            return m

        zigzag = np.zeros((h, w), bool)  # anti-diagonal stripes, 8-connected only
        yy, xx = np.mgrid[:h, :w]
        zigzag[(xx + yy) % 4 == 0] = True
        zigzag[0, 1::8] = zigzag[0, 2::8] = zigzag[0, 3::8] = True  # join stripes in pairs
        walk = np.zeros((h, w), bool)  # a random 8-connected walk: one component
        rng = np.random.default_rng(5)
        y, x = h // 2, w // 2
        for dy, dx in rng.integers(-1, 2, size=(4 * h * w, 2)):
            y, x = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
            walk[y, x] = True
        return [serpentine(h, w), serpentine(w, h).T.copy(), zigzag, walk, rng.random((h, w)) > 0.5]

    def test_component_labels_on_snakes(self, device):
        h, w = 96, 128
        masks = self.snakes(h, w)
        batch = torch.from_numpy(np.stack(masks)[:, None]).to(device)
        labels = connected_component_labels(batch).cpu().numpy()[:, 0]
        index = np.arange(1, h * w + 1).reshape(h, w)
        # closed forms: the serpentines and the walk are one component each, named by their
        # largest flat index + 1
        for b in (0, 1, 3):
            assert set(np.unique(labels[b][masks[b]])) == {index[masks[b]].max()}
        for b, m in enumerate(masks):
            assert np.all(labels[b][~m] == 0)
            cv2 = pytest.importorskip("cv2")
            n, ref = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            pairs = set(zip(labels[b][m].tolist(), ref[m].tolist()))
            assert len(pairs) == n - 1 == len({label for label, _ in pairs}), f"mask {b}: partition differs"
            for label, component in pairs:  # each component named by its largest index + 1
                assert label == index[ref == component].max()

    def test_remove_small_blobs_on_a_long_snake(self, device):
        # one component of 28,800 pixels along a path of ~14,000: plain max propagation
        # needed a host sync and a pooling pass per step of that path
        h, w = 240, 240
        serpentine = torch.zeros(1, 1, h, w, dtype=torch.bool, device=device)
        serpentine[0, 0, ::2] = True
        serpentine[0, 0, 1::4, -1] = serpentine[0, 0, 3::4, 0] = True
        area = int(serpentine.sum())
        assert torch.equal(remove_small_blobs(serpentine, area), serpentine)
        assert not remove_small_blobs(serpentine, area + 1).any()

    @pytest.mark.parametrize("shape", [(2, 1, 0, 5), (1, 1, 4, 0), (0, 1, 3, 3)])
    def test_empty_masks(self, shape):
        m = torch.zeros(shape, dtype=torch.bool)
        for op in (median_filter_mask, binary_erosion, binary_dilation, binary_opening):
            assert op(m, 5).shape == shape
        assert remove_small_blobs(m, 5).shape == shape
        assert connected_component_labels(m).shape == shape

    def test_errors(self):
        with pytest.raises(TypeError, match="bool"):
            binary_opening(torch.zeros(1, 1, 4, 4))
        with pytest.raises(ShapeError, match=r"\(B, 1, H, W\)"):
            median_filter_mask(torch.zeros(4, 4, dtype=torch.bool))
        with pytest.raises(ValueError, match="odd"):
            median_filter_mask(torch.zeros(1, 1, 4, 4, dtype=torch.bool), 4)


def _hilbert(order: int) -> np.ndarray:
    """A Hilbert curve of ``4**order`` points, drawn 2 pixels apart: one 4-connected path in a
    ``(2**(order + 1) - 1)``-pixel square, turning at every other pixel."""
    n = 2**order
    t = np.arange(n * n)
    x, y = np.zeros_like(t), np.zeros_like(t)
    s = 1
    while s < n:  # the classic d2xy, vectorised over the points
        rx, ry = 1 & (t // 2), 1 & (t ^ (1 & (t // 2)))
        flip = (ry == 0) & (rx == 1)
        x, y = np.where(flip, s - 1 - x, x), np.where(flip, s - 1 - y, y)
        x, y = np.where(ry == 0, y, x), np.where(ry == 0, x, y)
        x, y, t, s = x + s * rx, y + s * ry, t // 4, s * 2
    m = np.zeros((2 * n - 1, 2 * n - 1), bool)
    m[2 * y, 2 * x] = True
    m[y[:-1] + y[1:], x[:-1] + x[1:]] = True  # the pixel between consecutive points
    return m


def _spiral(h: int, w: int) -> np.ndarray:
    """One 4-connected path spiralling inwards, with one background pixel between its laps."""
    m = np.zeros((h, w), bool)
    top, bottom, left, right = 0, h - 1, 0, w - 1
    y = x = 0
    m[0, 0] = True
    while True:  # one lap: right, down, left, up
        if x > right:
            break
        m[y, x : right + 1], x, top = True, right, top + 2
        if y >= bottom:
            break
        m[y : bottom + 1, x], y, right = True, bottom, right - 2
        if x <= left:
            break
        m[y, left : x + 1], x, bottom = True, left, bottom - 2
        if y <= top:
            break
        m[top : y + 1, x], y, left = True, top, left + 2
    return m


def _diagonal_snake(h: int, w: int) -> np.ndarray:
    """Anti-diagonal stripes (8-connected only) joined alternately at their two ends: one path."""
    yy, xx = np.mgrid[:h, :w]
    m = (xx + yy) % 4 == 0
    for k, d in enumerate(range(0, h + w - 5, 4)):
        if k % 2 == 0:  # join stripes d and d + 4 at their upper-right ends
            (y1, x1), (y2, x2) = (max(0, d - w + 1), min(d, w - 1)), (max(0, d - w + 5), min(d + 4, w - 1))
            m[y1, x1 : x2 + 1] = m[y1 : y2 + 1, x2] = True
        else:  # at their lower-left ends
            (y1, x1), (y2, x2) = (min(d, h - 1), max(0, d - h + 1)), (min(d + 4, h - 1), max(0, d - h + 5))
            m[y1 : y2 + 1, x1] = m[y2, x1 : x2 + 1] = True
    return m


def _hard_masks(h: int, w: int) -> dict[str, np.ndarray]:
    """``(h, w)`` masks whose components have long, winding paths, or many row runs."""
    yy, xx = np.mgrid[:h, :w]
    serpentine = np.zeros((h, w), bool)  # rows joined at alternate ends
    serpentine[::2] = True
    serpentine[1::4, -1] = serpentine[3::4, 0] = True
    columns = np.zeros((w, h), bool)  # the same along columns: one run per pixel
    columns[::2] = True
    columns[1::4, -1] = columns[3::4, 0] = True
    comb = np.zeros((h, w), bool)  # teeth hanging from the top row
    comb[:, ::2] = comb[0] = True
    rng = np.random.default_rng(h * w)
    return {
        "serpentine": serpentine,
        "column serpentine": columns.T.copy(),
        "spiral": _spiral(h, w),
        "upside-down spiral": _spiral(h, w)[::-1].copy(),
        "diagonal snake": _diagonal_snake(h, w),
        "mirrored diagonal snake": _diagonal_snake(h, w)[:, ::-1].copy(),
        "diagonal zig-zag": (xx + yy) % 4 == 0,
        "checkerboard": (xx + yy) % 2 == 0,
        "comb": comb,
        "all true": np.ones((h, w), bool),
        "all false": np.zeros((h, w), bool),
        "noise": rng.random((h, w)) < 0.5,
    }


def _assert_labels_match_opencv(labels: np.ndarray, masks: np.ndarray) -> None:
    """``labels`` (B, H, W) partition each mask like OpenCV (8-connectivity) and name each
    component by its largest flat pixel index + 1; background 0."""
    cv2 = pytest.importorskip("cv2")
    index = np.arange(1, masks[0].size + 1).reshape(masks[0].shape)
    for b, m in enumerate(masks):
        assert np.all(labels[b][~m] == 0) and np.all(labels[b][m] > 0), f"mask {b}: background"
        n, ref, _, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        last = np.zeros(n, np.int64)
        np.maximum.at(last, ref[m], index[m])  # largest flat index + 1 of each OpenCV component
        assert np.array_equal(labels[b][m], last[ref[m]]), f"mask {b}: partition or names differ"


def _opencv_remove_small_blobs(masks: np.ndarray, min_area: int) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    out = np.empty_like(masks)
    for b, m in enumerate(masks):
        _, ref, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        out[b] = keep[ref]
    return out


def _check_labelling(masks: np.ndarray, min_areas: tuple[int, ...] = (2, 7, 60)) -> None:
    """Labels and small-blob removal of the (B, H, W) ``masks`` against OpenCV and the
    pixel-wise reference, exactly."""
    batch = torch.from_numpy(masks[:, None])
    labels = connected_component_labels(batch)
    assert labels.dtype == torch.int64 and labels.shape == batch.shape and labels.is_contiguous()
    _assert_labels_match_opencv(labels[:, 0].numpy(), masks)
    assert torch.equal(labels, reference_component_labels(batch))
    for min_area in min_areas:
        kept = remove_small_blobs(batch, min_area)
        assert kept.dtype == torch.bool and kept.shape == batch.shape
        assert np.array_equal(kept[:, 0].numpy(), _opencv_remove_small_blobs(masks, min_area)), min_area
        assert torch.equal(kept, reference_remove_small_blobs(batch, min_area)), min_area


@pytest.mark.usefixtures("one_torch_thread")
class TestComponentLabelling:
    """connected_component_labels and remove_small_blobs on shapes hard for run labelling."""

    @pytest.mark.parametrize("size", [(45, 64), (64, 45), (1, 57), (57, 1), (2, 9), (9, 2)])
    def test_hard_shapes_match_opencv_and_reference(self, size):
        cv2 = pytest.importorskip("cv2")
        masks = _hard_masks(*size)
        for name, m in masks.items():
            if min(size) > 1 and name not in ("diagonal zig-zag", "all false", "noise"):  # one component each
                assert cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] == 2, name
            try:
                _check_labelling(m[None])
            except AssertionError as e:
                raise AssertionError(f"{name} {size}: {e}") from e
        _check_labelling(np.stack(list(masks.values())))  # all of them as one batch

    @pytest.mark.parametrize("order", [3, 5, 6])
    def test_hilbert_curves(self, order):
        m = _hilbert(order)
        cv2 = pytest.importorskip("cv2")
        assert cv2.connectedComponents(m.astype(np.uint8), connectivity=4)[0] == 2  # one path
        _check_labelling(np.stack([m, m.T[::-1], m[::-1, ::-1]]), min_areas=(2, int(m.sum()), int(m.sum()) + 1))

    @pytest.mark.parametrize("density", [0.05, 0.3, 0.45, 0.55, 0.7, 0.95])
    def test_random_masks(self, density):
        rng = np.random.default_rng(int(density * 100))
        for shape in [(4, 37, 53), (3, 1, 200), (3, 200, 1), (2, 2, 2)]:
            _check_labelling(rng.random(shape) < density)

    def test_batches_are_independent(self):
        rng = np.random.default_rng(3)
        masks = rng.random((5, 23, 31)) < 0.6
        masks[0, -1] = masks[1, 0] = True  # touching across the boundary if masks leaked
        masks[2, -1, -1] = masks[3, 0, 0] = True  # adjacent in the flat layout
        masks[4] = True
        batch = torch.from_numpy(masks[:, None])
        labels = connected_component_labels(batch)
        kept = remove_small_blobs(batch, 40)
        for b in range(len(masks)):
            alone = batch[b : b + 1]
            assert torch.equal(labels[b : b + 1], connected_component_labels(alone)), b
            assert torch.equal(kept[b : b + 1], remove_small_blobs(alone, 40)), b
        assert labels[4].unique().tolist() == [23 * 31]  # named within its own mask

    def test_runs_do_not_wrap_into_the_next_row(self):
        m = torch.zeros(1, 1, 4, 5, dtype=torch.bool)
        m[0, 0, 1, 3:] = m[0, 0, 2, :2] = True  # end of row 1, start of row 2: not neighbours
        assert connected_component_labels(m)[0, 0].unique().tolist() == [0, 10, 12]
        column = torch.ones(1, 1, 4, 1, dtype=torch.bool)  # with W = 1 they are
        assert connected_component_labels(column).flatten().tolist() == [4, 4, 4, 4]

    def test_non_contiguous_masks(self):
        rng = np.random.default_rng(4)
        masks = torch.from_numpy(rng.random((3, 1, 30, 20)) < 0.5)
        transposed = masks.transpose(2, 3).contiguous().transpose(2, 3)
        assert not transposed.is_contiguous()
        assert torch.equal(connected_component_labels(transposed), connected_component_labels(masks))
        assert torch.equal(remove_small_blobs(transposed, 5), remove_small_blobs(masks, 5))

    def test_check_every_and_jumps_do_not_change_the_labels(self):
        masks = np.stack([_spiral(40, 50), _diagonal_snake(40, 50), np.random.default_rng(6).random((40, 50)) < 0.6])
        batch = torch.from_numpy(masks[:, None])
        expected = reference_component_labels(batch)
        for check_every, jumps in [(1, 1), (2, 1), (3, 2), (1, 4), (5, 7)]:
            assert torch.equal(connected_component_labels(batch, check_every=check_every, jumps=jumps), expected)
        assert torch.equal(remove_small_blobs(batch, 30, check_every=4), reference_remove_small_blobs(batch, 30))
        with pytest.raises(ValueError, match="jumps"):
            connected_component_labels(batch, jumps=0)
        with pytest.raises(ValueError, match="check_every"):
            remove_small_blobs(batch, 3, check_every=0)

    def test_int64_indices_give_the_same_results(self, monkeypatch):
        # run indices and painted labels are int32 below 2**31 keys; the int64 path otherwise
        masks = np.stack([_spiral(30, 41), np.random.default_rng(8).random((30, 41)) < 0.55])
        batch = torch.from_numpy(masks[:, None])
        expected = connected_component_labels(batch), remove_small_blobs(batch, 9)
        monkeypatch.setattr(postprocess, "_INT32_LIMIT", 0)
        labels = connected_component_labels(batch)
        assert torch.equal(labels, expected[0])
        assert labels.is_contiguous() and labels.view(-1).numel() == batch.numel()  # not a view into the padded sums
        assert torch.equal(remove_small_blobs(batch, 9), expected[1])

    def test_iterations_stay_few_on_long_paths(self, monkeypatch):
        # each iteration ends with one convergence check (torch.equal, plus a second once
        # converged): count them. Measured 2-6 with the default 4 jumps; plain max
        # propagation would need about as many as the path is long (thousands)
        calls = []
        equal = torch.equal
        monkeypatch.setattr(torch, "equal", lambda a, b: calls.append(1) or equal(a, b))
        masks = _hard_masks(255, 255)
        for name, m in [
            ("hilbert", _hilbert(7)),
            ("serpentine", masks["serpentine"]),
            ("column serpentine", masks["column serpentine"]),
            ("spiral", masks["spiral"]),
            ("diagonal snake", masks["diagonal snake"]),
        ]:
            calls.clear()
            labels = connected_component_labels(torch.from_numpy(m[None, None]))
            assert labels.unique().numel() == 2, name  # one component and the background
            assert len(calls) - 1 <= 9, f"{name}: {len(calls) - 1} iterations"

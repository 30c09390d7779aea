"""Benchmark mask post-processing (torchgmm.postprocess) against OpenCV, frame by frame.

For a batch of ``--batch`` masks of ``--size`` (default 8 x 640x480) of four kinds:

- noise: uniform noise above 0.5 (many small components, branching percolation clusters);
- blobs: a few discs plus 2 % speckle (what a background model's mask looks like);
- serpentine: rows joined at alternate ends, one component along a path of ~W*H/2 pixels;
- walk: a random 8-connected walk, one long irregular component;

it times :func:`~torchgmm.postprocess.remove_small_blobs` (``--min-area``) against OpenCV's
``connectedComponentsWithStats`` + area filter on each mask, and, on the blobs,
:func:`~torchgmm.postprocess.median_filter_mask` (5x5) against ``cv2.medianBlur`` and
:func:`~torchgmm.postprocess.binary_opening` (3x3) against ``cv2.morphologyEx``. Every row
also checks that both give the same masks. Ratios are torchgmm / OpenCV time in the same run.

Usage: ``python scripts/bench_postprocess.py [--threads 2] [--device cpu] [--json bench_out/bench_postprocess.json]``
(needs the ``bench`` extra: ``opencv-contrib-python-headless``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from torchgmm.postprocess import binary_opening, median_filter_mask, remove_small_blobs  # noqa: E402


def make_masks(kind: str, batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``(batch, h, w)`` bool masks of one kind (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for b in range(batch):
        if kind == "noise":
            out[b] = rng.random((h, w)) > 0.5
        elif kind == "blobs":
            for _ in range(8):
                cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 40 + 2, h // 8 + 3)
                out[b] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            out[b] |= rng.random((h, w)) > 0.98
        elif kind == "serpentine":
            out[b, b % 2 :: 2] = True
            out[b, 1 + b % 2 :: 4, -1] = out[b, 3 + b % 2 :: 4, 0] = True
        elif kind == "walk":
            steps = rng.integers(-1, 2, size=(h * w // 2, 2))
            pos = np.cumsum(steps, axis=0) + [h // 2, w // 2]
            # reflect into the frame, keeping 8-connectivity of consecutive steps
            pos = np.abs(pos)
            pos[:, 0] = np.where((pos[:, 0] // (h - 1)) % 2 == 0, pos[:, 0] % (h - 1), (h - 1) - pos[:, 0] % (h - 1))
            pos[:, 1] = np.where((pos[:, 1] // (w - 1)) % 2 == 0, pos[:, 1] % (w - 1), (w - 1) - pos[:, 1] % (w - 1))
            out[b, pos[:, 0], pos[:, 1]] = True
        else:
            raise ValueError(kind)
    return out


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    """Best wall time of ``repeats`` calls (after one warm-up) and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def opencv_remove_small_blobs(masks: np.ndarray, min_area: int) -> np.ndarray:
    import cv2

    out = np.empty_like(masks)
    for b, m in enumerate(masks):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False  # background
        out[b] = keep[labels]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x480", help="mask size WxH")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--min-area", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="bench_out/bench_postprocess.json")
    args = p.parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.lower().split("x"))

    rows = []
    for kind in ("noise", "blobs", "serpentine", "walk"):
        masks = make_masks(kind, args.batch, h, w)
        batch = torch.from_numpy(masks[:, None]).to(device)
        t_torch, got = timed(lambda: remove_small_blobs(batch, args.min_area), device, args.repeats)
        t_cv, ref = timed(lambda: opencv_remove_small_blobs(masks, args.min_area), torch.device("cpu"), args.repeats)
        rows.append(
            dict(
                op=f"remove_small_blobs({args.min_area})",
                masks=kind,
                torchgmm_ms=1e3 * t_torch,
                opencv_ms=1e3 * t_cv,
                agree=bool(np.array_equal(got[:, 0].cpu().numpy(), ref)),
            )
        )
    masks = make_masks("blobs", args.batch, h, w)
    batch = torch.from_numpy(masks[:, None]).to(device)
    u8 = masks.astype(np.uint8) * 255
    t_torch, got = timed(lambda: median_filter_mask(batch, 5), device, args.repeats)
    t_cv, ref = timed(lambda: np.stack([cv2.medianBlur(m, 5) for m in u8]) > 0, torch.device("cpu"), args.repeats)
    rows.append(
        dict(
            op="median_filter_mask(5)",
            masks="blobs",
            torchgmm_ms=1e3 * t_torch,
            opencv_ms=1e3 * t_cv,
            agree=bool(np.array_equal(got[:, 0].cpu().numpy(), ref)),
        )
    )
    kernel = np.ones((3, 3), np.uint8)
    t_torch, got = timed(lambda: binary_opening(batch, 3), device, args.repeats)
    t_cv, ref = timed(
        lambda: np.stack([cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel) for m in u8]) > 0,
        torch.device("cpu"),
        args.repeats,
    )
    rows.append(
        dict(
            op="binary_opening(3)",
            masks="blobs",
            torchgmm_ms=1e3 * t_torch,
            opencv_ms=1e3 * t_cv,
            agree=bool(np.array_equal(got[:, 0].cpu().numpy(), ref)),
        )
    )

    print(f"{args.batch} masks of {w}x{h}, {args.threads} threads, torchgmm on {device}")
    print(f"{'op':26s} {'masks':11s} {'torchgmm ms':>12s} {'OpenCV ms':>10s} {'ratio':>7s}  agree")
    print("-" * 76)
    for r in rows:
        r["ratio"] = r["torchgmm_ms"] / r["opencv_ms"]
        print(
            f"{r['op']:26s} {r['masks']:11s} {r['torchgmm_ms']:12.1f} {r['opencv_ms']:10.1f} "
            f"{r['ratio']:7.2f}  {r['agree']}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        size=[w, h],
        batch=args.batch,
        threads=args.threads,
        device=str(device),
        torch=torch.__version__,
        opencv=cv2.__version__,
        python=platform.python_version(),
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"[bench_postprocess] wrote {out}")
    return 0 if all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure how closely BackgroundSubtractorMOG2 reproduces OpenCV's CPU MOG2, on real video.

For each sequence (default: the first 500 frames of ``shared/data/video/vtest.avi`` and of
every CDnet sequence ``shared/data/cdnet/baseline/*/input/in%06d.jpg``), in grey and in
colour, with shadow detection on and off, both models are fed the same decoded frames (cv2
decodes them once; the same BGR, or ``COLOR_BGR2GRAY``, arrays go to
``cv2.createBackgroundSubtractorMOG2()`` and, as ``(1, C, H, W)`` uint8 tensors, to
``BackgroundSubtractorMOG2()``), both at their default settings (OpenCV's). Reported per run:

- ``mask_agreement``: share of pixels, over all frames, whose uint8 mask (0 / 127 / 255) is
  equal; also the worst frame's share and the share of frames that are equal everywhere.
- ``background_within_1``: share of background-image pixels (``getBackgroundImage`` vs
  ``background_image()`` after the last frame) that differ by at most one grey level, and
  ``background_equal`` (exactly equal).
- the foreground and shadow shares of OpenCV's masks (what the comparison is about).

Targets: ``mask_agreement >= 0.999`` and ``background_within_1 >= 0.999`` everywhere.

    python scripts/parity_mog2.py                     # every sequence, 500 frames
    python scripts/parity_mog2.py --frames 100 --compile 0 --out bench_out/parity_mog2.json
    python scripts/parity_mog2.py --video some.avi    # other inputs (repeatable)

Prints a table and writes JSON with ``--out`` (default ``bench_out/parity_mog2.json``).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
TARGET = 0.999


def read_frames(source: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` BGR frames of a video file or a ``in%06d.jpg`` folder, decoded by cv2."""
    import cv2

    frames = []
    if source.is_dir():
        for index in range(1, limit + 1):
            image = cv2.imread(str(source / f"in{index:06d}.jpg"), cv2.IMREAD_COLOR)
            if image is None:
                break
            frames.append(image)
    else:
        capture = cv2.VideoCapture(str(source))
        try:
            while len(frames) < limit:
                ok, image = capture.read()
                if not ok:
                    break
                frames.append(image)
        finally:
            capture.release()
    if not frames:
        raise SystemExit(f"no frames could be read from {source}")
    return frames


def compare(frames: list[np.ndarray], detect_shadows: bool, compile_flag: bool | None) -> dict:
    """Run both models over ``frames`` (HxW or HxWx3 uint8) and measure their agreement."""
    import cv2

    from torchgmm.mog2 import BackgroundSubtractorMOG2

    opencv = cv2.createBackgroundSubtractorMOG2(detectShadows=detect_shadows)
    model = BackgroundSubtractorMOG2(detect_shadows=detect_shadows, compile=compile_flag)
    equal = pixels = 0
    worst, frames_equal, foreground, shadow = 1.0, 0, 0, 0
    started = time.perf_counter()
    for image in frames:
        want = opencv.apply(image)
        tensor = torch.from_numpy(image[None, None] if image.ndim == 2 else image.transpose(2, 0, 1)[None].copy())
        got = model.apply(tensor)[0].numpy()
        same = int((got == want).sum())
        equal, pixels = equal + same, pixels + want.size
        worst = min(worst, same / want.size)
        frames_equal += same == want.size
        foreground += int((want == 255).sum())
        shadow += int((want == 127).sum())
    want_bg = opencv.getBackgroundImage()
    want_bg = want_bg[None] if want_bg.ndim == 2 else want_bg.transpose(2, 0, 1)
    got_bg = model.background_image()[0].numpy()
    diff = np.abs(got_bg.astype(np.int16) - want_bg.astype(np.int16))
    return dict(
        frames=len(frames),
        mask_agreement=equal / pixels,
        worst_frame_agreement=worst,
        frames_equal=frames_equal / len(frames),
        background_within_1=float((diff <= 1).mean()),
        background_equal=float((diff == 0).mean()),
        background_max_diff=int(diff.max()),
        opencv_foreground=foreground / pixels,
        opencv_shadow=shadow / pixels,
        seconds=time.perf_counter() - started,
    )


def sources(args) -> list[tuple[str, Path]]:
    if args.video:
        paths = [Path(v) for v in args.video]
        return [(p.parent.name if p.name == "input" else p.stem, p) for p in paths]
    found = [("vtest", DATA / "video" / "vtest.avi")]
    found += [(f"cdnet/baseline/{d.parent.name}", d) for d in sorted((DATA / "cdnet" / "baseline").glob("*/input"))]
    return [(name, path) for name, path in found if path.exists()]


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'sequence':<24} {'C':>1} {'shadows':>7} {'frames':>6} {'masks equal':>11} {'worst frame':>11} "
        f"{'bg <= 1':>8} {'bg equal':>8} {'cv fg':>6} {'cv sh':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['sequence']:<24} {r['channels']:>1} {r['detect_shadows']!s:>7} error: {r['error']}")
            continue
        print(
            f"{r['sequence']:<24} {r['channels']:>1} {r['detect_shadows']!s:>7} {r['frames']:>6} "
            f"{r['mask_agreement']:>11.5%} {r['worst_frame_agreement']:>11.4%} {r['background_within_1']:>8.4%} "
            f"{r['background_equal']:>8.4%} {r['opencv_foreground']:>6.2%} {r['opencv_shadow']:>6.2%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", action="append", help="a video file or an in%%06d.jpg folder (repeatable)")
    parser.add_argument("--frames", type=int, default=500, help="first N frames of each sequence")
    parser.add_argument("--channels", nargs="+", type=int, default=[1, 3], choices=[1, 3])
    parser.add_argument("--compile", type=int, default=1, choices=[0, 1], help="1: compiled step, 0: eager")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_out/parity_mog2.json")
    args = parser.parse_args()

    import cv2

    from torchgmm.background import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rows = []
    for name, path in sources(args):
        bgr = read_frames(path, args.frames)
        for channels in args.channels:
            frames = bgr if channels == 3 else [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr]
            for detect_shadows in (True, False):
                row = dict(
                    sequence=name,
                    source=str(path),
                    channels=channels,
                    detect_shadows=detect_shadows,
                    height=frames[0].shape[0],
                    width=frames[0].shape[1],
                )
                try:
                    row.update(compare(frames, detect_shadows, bool(args.compile)))
                except Exception as exc:  # noqa: BLE001 - recorded in the table and the JSON
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                print(
                    f"{name} C={channels} shadows={detect_shadows}: "
                    + (row.get("error") or f"{row['mask_agreement']:.5%} masks, {row['seconds']:.0f} s"),
                    flush=True,
                )
    print()
    print_table(rows)
    ok = [r for r in rows if "error" not in r]
    passed = (
        bool(ok)
        and len(ok) == len(rows)
        and all(r["mask_agreement"] >= TARGET and r["background_within_1"] >= TARGET for r in ok)
    )
    print(
        f"\ntarget: masks and background within 1 level on >= {TARGET:.1%} of pixels: {'met' if passed else 'NOT met'}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                machine=platform.machine(),
                python=platform.python_version(),
                torch=torch.__version__,
                opencv=cv2.__version__,
                frames=args.frames,
                compile=bool(args.compile),
                threads=args.threads,
                target=TARGET,
                target_met=passed,
                rows=rows,
            ),
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Score shadow detection on a CDnet sequence: F-measure with shadows off and on, and the shadow label itself.

Models (all torchgmm, compiled unless ``--no-compile``, fed the same RGB frames 1 .. last of
the temporal ROI in order):

- ``sg-default``: ``BackgroundSubtractorMOG`` at the library defaults (``PRESETS["default"]``);
- ``sg-cdnet-baseline``: the ``cdnet-baseline`` preset;
- ``mog2``: ``BackgroundSubtractorMOG2`` at OpenCV's MOG2 defaults (history 500, K = 5,
  T = 0.9), for comparison.

Each runs once with ``detect_shadows=True`` and ``return_shadows``: the shadow test only
reads the state, so the shadows-off mask is ``foreground | shadow``, the mask of the same
model with shadows off (``tests/test_background_shadows.py::TestModule::test_off_is_unchanged``;
``--verify-off`` runs the off models too and checks it frame by frame).

Scores follow CDnet 2014 (``torchgmm.metrics``: frames of ``temporalROI.txt``, pixels of
``ROI.bmp``; ground truth 255 motion is positive, 0 static and 50 hard shadow are negative,
85 outside the ROI and 170 unknown are not scored); a detected shadow is not foreground.
The shadow label is scored against the value-50 pixels over the same frames and ROI:
precision = shadow on 50 / shadow on {0, 50, 255}, recall = shadow on 50 / all 50; the
share of motion (255) pixels labelled shadow is what the shadow test takes from the objects.

    python scripts/eval_shadows.py                       # ../shared/data/cdnet/baseline/highway
    python scripts/eval_shadows.py --json bench_out/eval_shadows.json

Prints a table; ``--json`` writes the rows with the settings and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from torchgmm.background import BackgroundSubtractorMOG, retain_freed_memory
from torchgmm.defaults import PRESETS
from torchgmm.io import VideoReader
from torchgmm.metrics import (
    GT_MOTION,
    GT_SHADOW,
    GT_STATIC,
    GT_UNKNOWN,
    ChangeDetectionCounter,
    read_cdnet_sequence_info,
)
from torchgmm.mog2 import BackgroundSubtractorMOG2

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEQUENCE = REPO.parent / "shared" / "data" / "cdnet" / "baseline" / "highway"


def make_models(
    compile_: bool, detect_shadows: bool = True, shadow_threshold: float = 0.5
) -> dict[str, torch.nn.Module]:
    """The compared models, fresh, by name."""
    shadows = dict(detect_shadows=detect_shadows, shadow_threshold=shadow_threshold, compile=compile_)
    return {
        "sg-default": BackgroundSubtractorMOG(**PRESETS["default"], **shadows),
        "sg-cdnet-baseline": BackgroundSubtractorMOG(**PRESETS["cdnet-baseline"], **shadows),
        "mog2": BackgroundSubtractorMOG2(**shadows),
    }


def labels(model: torch.nn.Module, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(foreground, shadow)``, ``(1, 1, H, W)`` bool each, for one ``(1, C, H, W)`` frame."""
    foreground, shadow = model(frame, return_shadows=True)
    if foreground.ndim == 3:  # MOG2: (B, H, W)
        foreground, shadow = foreground[:, None], shadow[:, None]
    return foreground, shadow


def shadow_truth(gt: torch.Tensor) -> torch.Tensor:
    """CDnet labels recoded for scoring the shadow label: 50 -> 255 (positive), 0 and 255 -> 0
    (negative), the rest -> 170 (not scored)."""
    scored = (gt == GT_STATIC) | (gt == GT_MOTION)
    return torch.where(gt == GT_SHADOW, GT_MOTION, torch.where(scored, GT_STATIC, GT_UNKNOWN)).to(torch.uint8)


def evaluate(
    seq_dir: Path, *, compile_: bool, verify_off: bool, max_frames: int | None, shadow_threshold: float = 0.5
) -> tuple[list[dict], dict]:
    info = read_cdnet_sequence_info(seq_dir)
    first, last = info.temporal_roi
    if max_frames is not None:
        last = min(last, max_frames)
    temporal_roi = (min(first, last), last)
    models = make_models(compile_, shadow_threshold=shadow_threshold)
    off_models = make_models(compile_, detect_shadows=False) if verify_off else {}
    counters = {
        name: {key: ChangeDetectionCounter(roi=info.roi, temporal_roi=temporal_roi) for key in ("off", "on", "shadow")}
        for name in models
    }
    motion_shadow = {name: torch.zeros((), dtype=torch.int64) for name in models}
    motion = torch.zeros((), dtype=torch.int64)
    seconds = dict.fromkeys(models, 0.0)
    frames = 0
    with (
        VideoReader(seq_dir / "input", end=last) as inputs,
        VideoReader(seq_dir / "groundtruth", gray=True, end=last) as truth,
    ):
        for index, (frame, gt) in enumerate(zip(inputs, truth, strict=True)):
            frame, gt = frame[None], gt[None]
            scored_frame = index + 1 >= temporal_roi[0]
            is_motion = (gt == GT_MOTION) & info.roi
            if scored_frame:
                motion += is_motion.sum()
            for name, model in models.items():
                start = time.perf_counter()
                foreground, shadow = labels(model, frame)
                if index >= 10:  # after the compilation
                    seconds[name] += time.perf_counter() - start
                counters[name]["off"].update(foreground | shadow, gt, frame_index=index)
                counters[name]["on"].update(foreground, gt, frame_index=index)
                counters[name]["shadow"].update(shadow, shadow_truth(gt), frame_index=index)
                if scored_frame:
                    motion_shadow[name] += (shadow & is_motion).sum()
                if name in off_models:
                    off = off_models[name](frame)
                    off = off if off.ndim == 4 else off[:, None]
                    if not torch.equal(off, foreground | shadow):
                        raise AssertionError(
                            f"{name}: frame {index + 1}: the shadows-off model's mask is not "
                            "foreground | shadow of the model with shadows"
                        )
            frames += 1
    rows = []
    for name, model in models.items():
        off, on, sh = (counters[name][key].compute() for key in ("off", "on", "shadow"))
        rows.append(
            dict(
                method=name,
                settings=model.extra_repr(),
                frames=frames,
                fps=(frames - 10) / seconds[name] if seconds[name] else None,  # model calls only, from frame 11
                f_off=off["F-measure"],
                f_on=on["F-measure"],
                precision_off=off["Precision"],
                recall_off=off["Recall"],
                precision_on=on["Precision"],
                recall_on=on["Recall"],
                shadow_precision=sh["Precision"],
                shadow_recall=sh["Recall"],
                shadow_tp=sh["TP"],
                shadow_fp=sh["FP"],
                shadow_fn=sh["FN"],
                motion_labelled_shadow=int(motion_shadow[name]) / int(motion) if int(motion) else None,
                fp_off=off["FP"],
                fp_on=on["FP"],
                fn_off=off["FN"],
                fn_on=on["FN"],
                tp_off=off["TP"],
                tp_on=on["TP"],
            )
        )
    meta = dict(
        sequence=str(seq_dir),
        temporal_roi=list(temporal_roi),
        roi_pixels=int(info.roi.sum()),
        shadow_pixels=rows[0]["shadow_tp"] + rows[0]["shadow_fn"],
        motion_pixels=int(motion),
        verified_off=verify_off,
        shadow_threshold=shadow_threshold,
    )
    return rows, meta


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'method':18} {'F off':>7} {'F on':>7} {'dF':>7} {'Pr off':>7} {'Re off':>7} {'Pr on':>7} "
        f"{'Re on':>7} {'sh Pr':>7} {'sh Re':>7} {'mot->sh':>8} {'frames/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        fps = "-" if r["fps"] is None else f"{r['fps']:.1f}"
        lines.append(
            f"{r['method']:18} {r['f_off']:7.4f} {r['f_on']:7.4f} {r['f_on'] - r['f_off']:+7.4f} "
            f"{r['precision_off']:7.4f} {r['recall_off']:7.4f} {r['precision_on']:7.4f} {r['recall_on']:7.4f} "
            f"{r['shadow_precision']:7.4f} {r['shadow_recall']:7.4f} {100 * r['motion_labelled_shadow']:7.2f}% "
            f"{fps:>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_SEQUENCE), help="a CDnet sequence folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no-compile", action="store_true", help="run the models eagerly")
    parser.add_argument(
        "--verify-off",
        action="store_true",
        help="also run the models with shadows off and check their masks are foreground | shadow",
    )
    parser.add_argument(
        "--shadow-threshold",
        type=float,
        default=0.5,
        help="tau of every model (OpenCV's default 0.5: a shadow is at most 2x darker)",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this frame (a quick look)")
    parser.add_argument("--json", default=None, help="write the rows and settings here")
    args = parser.parse_args()
    seq_dir = Path(args.root)
    if not seq_dir.is_dir():
        raise SystemExit(f"no CDnet sequence at {seq_dir}; pass --root")
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    start = time.perf_counter()
    rows, meta = evaluate(
        seq_dir,
        compile_=not args.no_compile,
        verify_off=args.verify_off,
        max_frames=args.max_frames,
        shadow_threshold=args.shadow_threshold,
    )
    elapsed = time.perf_counter() - start
    print(f"shadow_threshold (tau) {args.shadow_threshold}")
    print(
        f"{seq_dir}: frames 1..{meta['temporal_roi'][1]} fed, {meta['temporal_roi'][0]}..{meta['temporal_roi'][1]} "
        f"scored; {meta['shadow_pixels']} hard-shadow (50) and {meta['motion_pixels']} motion (255) pixels in the ROI"
    )
    print(format_table(rows))
    print(
        "F: CDnet F-measure, a shadow scored as not foreground (off: shadows not detected); sh Pr / sh Re: the "
        "shadow label against gt 50; mot->sh: motion (255) pixels labelled shadow"
    )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta.update(
            date=time.strftime("%Y-%m-%d"),
            seconds=elapsed,
            threads=args.threads,
            compile=not args.no_compile,
            torch=torch.__version__,
            python=platform.python_version(),
            machine=platform.machine(),
            presets={k: PRESETS[k] for k in ("default", "cdnet-baseline")},
        )
        out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Score torchgmm and OpenCV's mixture models side by side on CDnet sequences.

All methods see the same decoded RGB frames (frames 1 .. last of each temporal ROI), get the
same K, background ratio T and rate schedule (history = 1 / alpha: OpenCV's ``learningRate=-1``
schedule; torchgmm's warmup ``max(alpha, 1/t)``), and the same optional post-processing;
scores follow CDnet 2014 (temporal ROI, spatial ROI, shadows count as negatives, unknown and
outside-ROI pixels not scored). Methods: ``torchgmm`` (BackgroundSubtractorMOG with the
preset), ``mog2`` (OpenCV ``createBackgroundSubtractorMOG2(detectShadows=False)``),
``mog2-defaults`` / ``mog2-shadows`` (the same at OpenCV's own defaults: history 500, K = 5,
T = 0.9, shadows off / on; they share only the frames and the post-processing) and
``bgsegm-mog`` (OpenCV contrib ``bgsegm.createBackgroundSubtractorMOG``).

    python scripts/eval_cdnet.py                                  # ../shared/data/cdnet, preset default
    python scripts/eval_cdnet.py --preset cdnet-baseline --median 5
    python scripts/eval_cdnet.py --root ../shared/data/cdnet more/cdnet   # several dataset roots

Prints the comparison table (and the post-processed one when a post-processing option is
given) and writes ``bench_out/eval_cdnet_<preset>.json`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from torchgmm.background import retain_freed_memory
from torchgmm.defaults import PRESETS
from torchgmm.jobs.baselines import method_factories
from torchgmm.jobs.evaluate import evaluate_dataset, format_table, write_results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "cdnet"

#: published Stauffer-Grimson (GMM) F-measures on changedetection.net (shared/data/README.md)
PUBLISHED = {"baseline/highway": 0.9240, "baseline/office": 0.5919, "baseline/mean": 0.8245}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", nargs="+", default=[str(DEFAULT_ROOT)], help="CDnet-layout dataset roots or sequences"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument(
        "--methods", default="torchgmm,mog2,mog2-defaults,mog2-shadows,bgsegm-mog", help="comma-separated"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="run torchgmm eagerly")
    parser.add_argument("--median", type=int, default=0, help="post-process: median filter window (0 = off)")
    parser.add_argument("--opening", type=int, default=0, help="post-process: opening window (0 = off)")
    parser.add_argument("--min-area", type=int, default=0, help="post-process: minimum blob area (0 = off)")
    parser.add_argument("--out", default=str(REPO / "bench_out"), help="folder for the JSON and CSV")
    args = parser.parse_args()

    for root in args.root:
        if not Path(root).exists():
            raise SystemExit(f"no CDnet data at {root}; pass --root")  # the rest is checked before any work
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    if any(m in args.methods for m in ("mog2", "bgsegm")):
        import cv2

        cv2.setNumThreads(args.threads)
    settings = dict(PRESETS[args.preset])
    if args.no_compile:
        settings["compile"] = False
    methods = method_factories(
        args.methods.split(","),
        n_components=settings.pop("n_components"),
        learning_rate=settings.pop("learning_rate"),
        background_ratio=settings.pop("background_ratio"),
        device=args.device,
        model_options=settings,
    )
    post = dict(median=args.median, opening=args.opening, min_area=args.min_area)
    rows = evaluate_dataset(
        args.root, methods=methods, device=args.device, postprocess=post if any(post.values()) else None
    )
    print(f"preset {args.preset}: {PRESETS[args.preset]}")
    print(format_table(rows))
    if any(post.values()):
        print(f"\nwith post-processing {post}:")
        print(format_table(rows, postprocessed=True))
    print("\npublished Stauffer-Grimson F-measure: " + ", ".join(f"{k} {v:.4f}" for k, v in PUBLISHED.items()))
    paths = write_results(
        rows,
        args.out,
        f"eval_cdnet_{args.preset}",
        preset=args.preset,
        settings=PRESETS[args.preset],
        compile=not args.no_compile,
        postprocess=post,
        published=PUBLISHED,
        threads=args.threads,
        device=args.device,
        torch=torch.__version__,
        machine=platform.machine(),
    )
    print("wrote " + " and ".join(map(str, paths)))


if __name__ == "__main__":
    main()

"""The ``torchgmm`` command line: argument parsing and progress only.

Each subcommand parses its arguments and calls the same public library functions a user
would call from Python. Exit status: 0 on success, 1 when some inputs failed (each named on
stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Iterator, Sequence

__all__ = ["main", "build_parser"]


# --- demo ------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled cameraman image and model a generated clip")
    p.add_argument("--out", default="torchgmm-demo", help="output folder (default: ./torchgmm-demo)")
    p.add_argument("--classes", type=int, default=3, help="number of intensity classes (default: 3)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from torchgmm.demo import run_demo

    try:
        return run_demo(args.out, n_classes=args.classes)
    except (ValueError, TypeError, OSError) as exc:  # bad arguments or an unwritable folder
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _add_engine_options(p: argparse.ArgumentParser, work: str) -> None:
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"where {work} runs: this process (default) or a Ray cluster (pip install "
        '"torchmog[ray]"; the output folder must be at the same path on every node)',
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="the Ray cluster for --engine ray (default: $RAY_ADDRESS, else a local cluster started for this run)",
    )


# --- segment (issue 3) -------------------------------------------------------------------
def _add_segment(sub: argparse._SubParsersAction) -> None:
    from torchgmm.defaults import HISTOGRAM_INITS

    p = sub.add_parser(
        "segment",
        help="segment images by histogram EM",
        description="Segment images into K intensity classes by histogram EM. Writes, per image, "
        "NAME_labels.png (values 0..K-1, 0 darkest) and NAME_colour.png, and the fitted "
        "parameters of the run to OUT/segments.jsonl. Finished images are skipped on re-runs. "
        "An image that ends with fewer classes than K (a class holding less than half a pixel's "
        "worth of weight) gets a 'warning:' line naming it and what to try.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    p.add_argument("--classes", "-k", type=int, default=3, help="number of classes K (default: 3)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mode",
        choices=("luminance", "rgb"),
        default="luminance",
        help="colour images: segment BT.601 luminance (default) or fit RGB mixtures",
    )
    p.add_argument(
        "--init",
        choices=HISTOGRAM_INITS,
        default="range",
        help="how EM starts: range (default, the textbook demo) cuts grey levels 0..255 into K "
        "equal intervals and can leave a class empty when two classes share one; data-range "
        "cuts each image's occupied [min, max] instead (low-contrast images); kmeans++ "
        "seeds from the histogram; random. kmeans++, random and --mode rgb draw with seed 0 for "
        "each image, so an image's result does not depend on its batch. Luminance only: "
        "--mode rgb always uses k-means++",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument("--workers", type=int, default=2, help="decoding worker processes (default: 2)")
    p.add_argument("--tol", type=float, default=1e-3, help="EM convergence threshold (default: 1e-3)")
    p.add_argument("--max-iter", type=int, default=100, help="most EM iterations (default: 100)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo images whose outputs exist (without it they are skipped, and a rerun with "
        "other settings than those recorded in OUT/segments.jsonl is refused)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_engine_options(p, "the decoding, segmenting and writing")
    p.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from torchgmm.jobs.segment import segment_files

    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        print(f"error: --device must be auto, cpu or cuda, got {args.device!r}", file=sys.stderr)
        return 2
    try:
        s = segment_files(
            args.inputs,
            args.out,
            args.classes,
            mode=args.mode,
            init=args.init,
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            overwrite=args.overwrite,
            tol=args.tol,
            max_iter=args.max_iter,
            progress=not args.no_progress,
            engine=args.engine,
            ray_address=args.ray_address,
        )
    except (OSError, ValueError, TypeError) as exc:  # before any work (OSError: e.g. --out is a file)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"segmented {s.n_done}, skipped {s.n_skipped} already done, failed {len(s.failed)} "
        f"of {s.n_found} image(s) in {s.wall_s:.1f} s; parameters in {s.jsonl}",
        file=sys.stderr,
    )
    if s.negligible:  # each warning line above says what to try
        print(
            f"{len(s.negligible)} image(s) ended with fewer classes than {args.classes} (named in the warnings above)",
            file=sys.stderr,
        )
    for path, _ in s.failed:
        print(f"failed: {path}", file=sys.stderr)
    return 1 if s.failed else 0


# --- background ------------------------------------------------------------------------
def _add_model_options(p: argparse.ArgumentParser) -> None:
    from torchgmm.defaults import PRESETS

    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="named model settings (default: default); the options below override it",
    )
    p.add_argument("--components", type=int, default=None, metavar="K", help="Gaussians per pixel (default preset: 3)")
    p.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="ALPHA",
        help="learning rate; about 1/ALPHA frames of memory (default preset: 0.001, cdnet-baseline: 0.0005)",
    )
    p.add_argument(
        "--background-ratio",
        type=float,
        default=None,
        metavar="T",
        help="share of the weight that is background (default preset: 0.65, cdnet-baseline: 0.5)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--gray", action="store_true", help="model grey frames instead of RGB")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="run the model eagerly (slower per frame); by default the CPU runs a kernel compiled "
        "ahead of time (built in the background on first use, the eager step meanwhile), CUDA torch.compile",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _model_settings(args: argparse.Namespace) -> dict:
    """The model's keyword arguments: the preset, overridden by the options given.

    ``--model mog2`` (``torchgmm background``) starts from OpenCV's MOG2 defaults instead:
    ``--components`` is its ``n_mixtures``, ``--learning-rate ALPHA`` its ``history``
    ``round(1 / ALPHA)`` (its automatic rate tends to ``1 / history``), and the presets, which
    are Stauffer-Grimson settings, do not apply.
    """
    from torchgmm.defaults import PRESETS

    if getattr(args, "model", "mog") == "mog2":
        if args.preset != "default":
            raise ValueError(
                f"--preset {args.preset} holds Stauffer-Grimson settings: it does not apply to --model mog2."
            )
        settings: dict = dict(detect_shadows=args.shadows)
        if args.components is not None:
            settings["n_mixtures"] = args.components
        if args.background_ratio is not None:
            settings["background_ratio"] = args.background_ratio
        if args.learning_rate is not None:
            if not args.learning_rate > 0:
                raise ValueError(f"--learning-rate must be > 0 with --model mog2, got {args.learning_rate}.")
            settings["history"] = max(1, round(1 / args.learning_rate))
        if args.no_compile:
            settings["compile"] = False
        return settings
    settings = dict(PRESETS[args.preset])
    if getattr(args, "shadows", False):
        settings["detect_shadows"] = True
    for key, value in (
        ("n_components", args.components),
        ("learning_rate", args.learning_rate),
        ("background_ratio", args.background_ratio),
    ):
        if value is not None:
            settings[key] = value
    if args.no_compile:
        settings["compile"] = False
    return settings


def _add_postprocess_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--median", type=int, default=0, metavar="K", help="post-process: median filter window (0 = off)")
    p.add_argument("--opening", type=int, default=0, metavar="K", help="post-process: opening window (0 = off)")
    p.add_argument(
        "--min-area", type=int, default=0, metavar="PIXELS", help="post-process: drop blobs smaller than this (0 = off)"
    )


def _postprocess_settings(args: argparse.Namespace) -> dict | None:
    """Keyword arguments of ``apply_postprocess``, or None when every step is off."""
    post = dict(median=args.median, opening=args.opening, min_area=args.min_area)
    return post if any(post.values()) else None


def _add_background(sub: argparse._SubParsersAction) -> None:
    from torchgmm.defaults import BACKGROUND_MODELS, VIDEO_BACKENDS

    p = sub.add_parser(
        "background",
        help="per-pixel mixture background subtraction of videos",
        description="Model each pixel of static-camera videos as a mixture of K Gaussians "
        "(Stauffer-Grimson, or Zivkovic's MOG2 with --model mog2) and write, per input into OUT/NAME/: the masks "
        "(mask.mp4, mask.mkv or mask/), the final background image (background.png), "
        "optionally an overlay, and summary.json. With --start/--end/--step/--size the model "
        "sees only the selected, resized frames, and every output is of those frames. Exit "
        "status: 0 when every input was processed, 1 when some input failed part-way (its frames "
        "before the damage are written), 2 on bad arguments or inputs that cannot be opened "
        "(nothing is done).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files or folders of numbered images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        choices=BACKGROUND_MODELS,
        default="mog",
        help="mog: Stauffer-Grimson (default); mog2: Zivkovic's MOG2 as OpenCV computes it, at "
        "OpenCV's defaults (--components sets its mixtures, --learning-rate its history 1/ALPHA)",
    )
    p.add_argument(
        "--shadows",
        action="store_true",
        help="detect shadows (darker, same-colour background): masks hold 0 background, 127 "
        "shadow, 255 foreground; a shadow is not foreground",
    )
    _add_model_options(p)
    p.add_argument(
        "--start",
        default=None,
        metavar="POS",
        help="first frame to model: a frame index (300) or a time in seconds (12.5s: the first "
        "frame at or after it, at the video's average frame rate; image folders: 25 frames/s); "
        "default 0. Earlier frames are decoded and skipped (exact, not a seek)",
    )
    p.add_argument(
        "--end",
        default=None,
        metavar="POS",
        help="stop before this frame (index, or seconds as 60s), after --start; default: the end of the video",
    )
    p.add_argument(
        "--step",
        type=int,
        default=1,
        metavar="N",
        help="model every N-th frame from --start (default 1); the masks get one frame per "
        "modelled frame, at the video's frame rate / N",
    )
    p.add_argument(
        "--size",
        default=None,
        metavar="WxH",
        help="resize every frame to exactly W x H pixels before the model (the aspect ratio is "
        "not kept; bilinear, averaging when shrinking); masks, overlay and background.png "
        "are at this size",
    )
    p.add_argument(
        "--batch-streams",
        type=int,
        default=1,
        metavar="N",
        help="process up to N inputs of the same size (after --size: any inputs) together as one batch (default 1)",
    )
    p.add_argument(
        "--mask-format",
        choices=["mp4", "mkv", "png"],
        default="mp4",
        help="lossless H.264 .mp4 (default), FFV1 .mkv, or a PNG sequence",
    )
    p.add_argument("--overlay", action="store_true", help="also write the frames with the foreground tinted red")
    _add_postprocess_options(p)
    p.add_argument(
        "--checkpoint",
        type=int,
        default=0,
        metavar="N",
        help="save the model state every N modelled frames and when interrupted, to --resume "
        "from, also after a hard kill (kill -9, OOM): every frame is then written as its own "
        "fragment or cluster and the checkpoint trails the written frames by one",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue each input from its checkpoint (same settings, and the same frames: "
        "--start/--end/--step/--size); the masks equal an uninterrupted run's",
    )
    p.add_argument(
        "--decoder",
        choices=VIDEO_BACKENDS,
        default="pyav",
        help="what decodes video files: PyAV (default) or TorchCodec (pip install "
        '"torchmog[torchcodec]", with the system\'s FFmpeg libraries)',
    )
    p.add_argument(
        "--on-damage",
        choices=["stop", "skip"],
        default="stop",
        help="a frame that cannot be decoded: stop that input there (default; its masks up to "
        "it are kept) or skip past it, as players do; summary.json lists the skipped frames "
        "(skip: not with --checkpoint/--resume)",
    )
    _add_engine_options(p, "each batch of --batch-streams inputs")
    p.set_defaults(run=_run_background)


def _run_background(args: argparse.Namespace) -> int:
    from torchgmm.background import retain_freed_memory
    from torchgmm.io.video import parse_position, parse_size
    from torchgmm.jobs.background import FrameSelection, MaskOutputs, run_background

    retain_freed_memory()  # the job sets its threads by the frame size (see jobs.background)
    try:
        settings = _model_settings(args)
        # the spelling only ("12.5s" -> 12.5 seconds); run_background checks the values
        frames = FrameSelection(
            start=None if args.start is None else parse_position(args.start, "--start"),
            end=None if args.end is None else parse_position(args.end, "--end"),
            step=args.step,
            size=None if args.size is None else parse_size(args.size, "--size"),
            gray=args.gray,
            decoder=args.decoder,
        )
        outputs = MaskOutputs(format=args.mask_format, overlay=args.overlay, postprocess=_postprocess_settings(args))
        summaries = run_background(
            args.inputs,
            args.out,
            model=args.model,
            model_options=settings,
            frames=frames,
            outputs=outputs,
            checkpoint_every=args.checkpoint,
            resume=args.resume,
            device=args.device,
            batch_streams=args.batch_streams,
            on_damage=args.on_damage,
            progress=not args.no_progress,
            raise_errors=False,
            engine=args.engine,
            ray_address=args.ray_address,
        )
    except (OSError, ValueError, TypeError, ImportError) as exc:  # before any work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for s in summaries:
        fps = "" if s["fps"] is None else f" at {s['fps']:.1f} frames/s"
        print(f"{s['input']}: {s['frames']} frames{fps} -> {s['output']}")
        if s["error"]:
            failed += 1
            print(f"error: {s['error']}", file=sys.stderr)
    if failed:
        print(
            f"{failed} of {len(summaries)} input(s) failed; their frames before the error are written.", file=sys.stderr
        )
    return 1 if failed else 0


# --- evaluate ------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from torchgmm.defaults import EVALUATION_METHODS

    p = sub.add_parser(
        "evaluate",
        help="score the background model on CDnet-layout sequences",
        description="Run the background model over every category/sequence/ (CDnet layout: "
        "input/, groundtruth/, temporalROI.txt, ROI.bmp) under DATASET_ROOT and print Recall, "
        "Precision, F-measure, PWC and fps per sequence, with category and overall means. "
        "Exit status: 0 ok, 1 a sequence failed part-way (the others are scored and written), 2 bad "
        "arguments or dataset (nothing is run).",
    )
    p.add_argument("root", metavar="DATASET_ROOT")
    p.add_argument(
        "--method",
        choices=EVALUATION_METHODS,
        action="append",
        help="method to score (repeatable; default torchgmm; torchgmm-mog2: OpenCV's MOG2 with "
        "shadows at its defaults, computed by torchgmm; mog2-defaults / mog2-shadows: OpenCV's MOG2 at its "
        "defaults, shadows off / on; the OpenCV methods need "
        "opencv-contrib-python-headless)",
    )
    _add_model_options(p)
    _add_postprocess_options(p)
    p.add_argument("--out", default=None, help="write results.json and results.csv into this folder")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from torchgmm.background import retain_freed_memory
    from torchgmm.jobs.baselines import method_factories
    from torchgmm.jobs.evaluate import evaluate_dataset, format_table

    settings = _model_settings(args)
    model_settings = dict(settings)  # recorded in results.json; the factories take them apart
    post = _postprocess_settings(args)
    retain_freed_memory()
    try:
        methods = method_factories(
            args.method or ["torchgmm"],
            n_components=settings.pop("n_components"),
            learning_rate=settings.pop("learning_rate"),
            background_ratio=settings.pop("background_ratio"),
            device=args.device,
            model_options=settings,
        )
        rows = evaluate_dataset(
            args.root,
            methods=methods,
            device=args.device,
            gray=args.gray,
            out_dir=args.out,
            postprocess=post,
            progress=not args.no_progress,
            raise_errors=False,
            metadata=dict(preset=args.preset, model=model_settings),
        )
    except (OSError, ValueError, TypeError, ImportError) as exc:  # before any work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if post:
        print(f"\nwith post-processing (median {args.median}, opening {args.opening}, min area {args.min_area}):")
        print(format_table(rows, postprocessed=True))
    if args.out:
        print(f"wrote {args.out}/results.json and {args.out}/results.csv")
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        print(f"error: {r['method']} on {r['sequence']}: {r['error']}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} sequence run(s) failed; the others are scored above.", file=sys.stderr)
    return 1 if failed else 0


# --- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchgmm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_background, _add_evaluate):
        add(sub)
    return parser


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each Python warning once, as a ``warning:`` line like the jobs' own lines.

    The library warns (a gap in a numbered sequence, a model that fell back to eager, ...);
    on the command line a warning is a message for the user, not a source location, and a
    job that opens an input twice (planning, then running) must not say it twice.
    """
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202, ARG001
        text = str(message)
        if text in seen:
            return
        seen.add(text)
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {text}", file=sys.stderr)  # above a progress bar, not through it

    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    with _warnings_as_lines():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        # inside the try: building the parser imports torch (the package itself does not),
        # which takes a few seconds in which a Ctrl-C must also read "interrupted"
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):  # e.g. where the work done so far is
            print(note, file=sys.stderr)
        return 130


def run() -> None:
    """The ``torchgmm`` command: :func:`main` on ``sys.argv``, then a quick exit.

    Python's finalisation after torch is imported (freeing its modules and their C++ objects)
    costs a noticeable share of a short job (docs/benchmarks.md, "Jobs end to end"). The job
    has closed and renamed its outputs by then, so the command runs the ``atexit`` handlers
    (Ray's shutdown, logging's flush), flushes its streams and ends the process. Only when no
    other non-daemon thread is left: otherwise it exits as usual, waiting for them.
    """
    import atexit
    import os
    import threading

    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit would run first
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()

"""Throughput of VideoReader alone versus VideoReader + BackgroundSubtractorMOG.

For each clip (the OpenCV sample ``vtest.avi`` from ``shared/data`` when present, plus clips
generated here at 640x480 and 1920x1080) it measures:

- decode: frames/s of ``VideoReader`` iterated without any work (decode + convert + stack);
- model: frames/s of the model on already decoded batches (no decoding);
- end-to-end: frames/s of decoding with prefetch while the model runs on each batch;
- keep: end-to-end / decode (the target is >= 80 % at 640x480);
- overlap: end-to-end / min(decode, model), i.e. how close the pipeline gets to its slower
  stage (1.0 = decoding fully hidden behind the model or the other way round).

``--backend`` picks what decodes video files (``VideoReader(backend=...)``): ``pyav`` (the
default), ``torchcodec``, or ``both``, which times decoding with each backend in turn in the
same process (``--repeats`` rounds, alternating, so both see the same load) and prints their
frames/s side by side; the model columns then use the first backend (PyAV). ``--model none``
measures decoding only.

Run ``python scripts/bench_video.py --help`` for options; results go to a table on stdout
and to JSON (``--json``, default ``bench_out/bench_video.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torchgmm.io.video import VideoReader, VideoWriter, video_backends  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/video/vtest.avi"


def make_clip(path: Path, n: int, h: int, w: int) -> Path:
    """A synthetic H.264 clip: moving gradient background, a moving square, sensor noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx * 255 // max(w - 1, 1) + yy * 128 // max(h - 1, 1)) % 256).astype(np.int16)
    with VideoWriter(path, fps=25, codec="libx264", lossless=False, options={"preset": "veryfast"}) as writer:
        for t in range(n):
            img = base + rng.integers(-2, 3, (h, w), dtype=np.int16)
            s = h // 6
            y0, x0 = (t * 7) % (h - s), (t * 13) % (w - s)
            img[y0 : y0 + s, x0 : x0 + s] = 230
            img = np.clip(img, 0, 255).astype(np.uint8)
            rgb = np.stack([img, np.roll(img, 5, 1), 255 - img])
            writer.write(torch.from_numpy(rgb))
    return path


class RunningAverage(torch.nn.Module):
    """Stand-in model (``--model running-average``): exponential running mean, |x - mean| > 30."""

    def __init__(self, alpha: float = 0.02, threshold: float = 30.0) -> None:
        super().__init__()
        self.alpha, self.threshold = alpha, threshold
        self.register_buffer("mean", torch.empty(0), persistent=True)  #: (C, H, W) running mean

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float()
        out = torch.empty(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
        if self.mean.numel() == 0:
            self.mean = x[0].clone()
        for t in range(x.shape[0]):
            out[t, 0] = (x[t] - self.mean).abs().amax(0) > self.threshold
            self.mean.lerp_(x[t], self.alpha)
        return out

    process = forward  # frames of one stream, like BackgroundSubtractorMOG.process


class OpenCVSubtractor(torch.nn.Module):
    """Reference model (``--model opencv-mog2`` / ``opencv-mog``): OpenCV's subtractor, frame by
    frame, behind the same reader, so its keep ratio is measured in the same way as ours.

    Frames arrive as ``(T, C, H, W)`` uint8 tensors; each is handed to OpenCV as a contiguous
    ``(H, W, C)`` array (one copy per frame, as OpenCV's own capture would produce).
    """

    def __init__(self, kind: str, n_components: int = 3, threads: int | None = None) -> None:
        super().__init__()
        import cv2

        if threads:
            cv2.setNumThreads(threads)
        if kind == "opencv-mog2":
            self.subtractor = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
            self.subtractor.setNMixtures(n_components)
        else:
            self.subtractor = cv2.bgsegm.createBackgroundSubtractorMOG(nmixtures=n_components)
        self.learning_rate = 0.005

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        hwc = frames.permute(0, 2, 3, 1).contiguous().numpy()
        masks = [self.subtractor.apply(frame, learningRate=self.learning_rate) for frame in hwc]
        return torch.from_numpy(np.stack(masks)[:, None] > 0)

    process = forward


class _EveryConfiguration:
    """Stands in for ``torchgmm.background._cpp_wrapper_failures``: every configuration has
    'failed', so the CPU step is compiled with Inductor's Python wrapper (``--python-wrapper``)."""

    def __contains__(self, config: object) -> bool:
        return True

    def add(self, config: object) -> None:
        pass


def load_model(
    device: torch.device,
    name: str = "mog",
    n_components: int = 3,
    python_wrapper: bool = False,
    threads: int | None = None,
):
    """A factory building a fresh model (state is per clip), or None and the reason."""
    if name == "running-average":
        return (lambda: RunningAverage().to(device)), None
    if name.startswith("opencv"):
        if device.type != "cpu":
            return None, f"--model {name} runs on the CPU only"
        try:
            OpenCVSubtractor(name, n_components)
        except Exception as exc:  # opencv-contrib-python-headless is an optional extra
            return None, f"{type(exc).__name__}: {exc}"
        return (lambda: OpenCVSubtractor(name, n_components, threads)), None
    try:
        from torchgmm import background
        from torchgmm.background import BackgroundSubtractorMOG
    except Exception as exc:  # the model may not exist yet in this checkout
        return None, f"{type(exc).__name__}: {exc}"
    if python_wrapper and hasattr(background, "_cpp_wrapper_failures"):
        background._cpp_wrapper_failures = _EveryConfiguration()
    return (lambda: BackgroundSubtractorMOG(n_components=n_components, learning_rate=0.005).to(device)), None


def time_decode(path: Path, args, max_frames: int, backend: str | None = None) -> tuple[float, int]:
    n = 0
    t0 = time.perf_counter()
    with VideoReader(
        path,
        batch_size=args.batch_size,
        gray=args.gray,
        end=max_frames,
        size=args.size,
        prefetch=args.prefetch,
        device=args.device,
        backend=backend or args.backends[0],
    ) as reader:
        for batch in reader:
            n += batch.shape[0]
    if args.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), n


def time_model(model, path: Path, args, max_frames: int, repeats: int = 2) -> float:
    """Model-only frames/s on up to 16 pre-decoded batches; best of ``repeats`` passes."""
    with VideoReader(
        path,
        batch_size=args.batch_size,
        gray=args.gray,
        end=min(max_frames, 16 * args.batch_size),
        size=args.size,
        device=args.device,
        backend=args.backends[0],
    ) as reader:
        batches = list(reader)
    best = 0.0
    with torch.inference_mode():
        model.process(batches[0])  # warm-up (compilation, allocations, lazy state)
        for _ in range(repeats):
            if args.device.type == "cuda":
                torch.cuda.synchronize()
            n = 0
            t0 = time.perf_counter()
            for b in batches:
                model.process(b)  # the frames of one stream, in order
                n += b.shape[0]
            if args.device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, n / (time.perf_counter() - t0))
    return best


def time_end_to_end(model, path: Path, args, max_frames: int) -> tuple[float, int, float]:
    n = 0
    fg = torch.zeros((), dtype=torch.int64, device=args.device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        with VideoReader(
            path,
            batch_size=args.batch_size,
            gray=args.gray,
            end=max_frames,
            size=args.size,
            prefetch=args.prefetch,
            device=args.device,
            backend=args.backends[0],
        ) as reader:
            for batch in reader:
                mask = model.process(batch)
                fg += mask.sum()
                n += batch.shape[0]
        if args.device.type == "cuda":
            torch.cuda.synchronize()
        fps = n / (time.perf_counter() - t0)
    return fps, n, float(fg) / max(n, 1)


def _versions(backends: list[str]) -> dict[str, object]:
    """Versions of the decoding libraries measured (and the FFmpeg each links)."""
    import av

    out: dict[str, object] = dict(av=av.__version__, av_ffmpeg=av.library_versions.get("libavcodec"))
    if "torchcodec" in backends:
        import torchcodec
        from torchcodec import _core  # the FFmpeg it loaded (TorchCodec uses the system's)

        out.update(
            torchcodec=torchcodec.__version__,
            torchcodec_ffmpeg=_core.get_ffmpeg_library_versions().get("ffmpeg_version"),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--video",
        type=Path,
        nargs="+",
        default=[DEFAULT_VIDEO],
        help="real clips (default: shared vtest.avi); a path that is no file is skipped",
    )
    p.add_argument("--frames", type=int, default=400, help="frames per measurement (at most)")
    p.add_argument("--gen-frames", type=int, default=120, help="frames of each generated clip")
    p.add_argument("--sizes", default="640x480,1920x1080", help="generated clip sizes WxH, comma separated")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--gray", action="store_true", help="decode to one grey channel")
    p.add_argument("--size", default=None, metavar="WxH", help="resize frames as they are decoded (VideoReader size)")
    p.add_argument(
        "--backend",
        choices=["pyav", "torchcodec", "both"],
        default="pyav",
        help="what decodes video files; both: decode frames/s of each, side by side",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="decode timings per backend, alternating between backends (median and best kept)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--model",
        choices=["mog", "running-average", "opencv-mog2", "opencv-mog", "none"],
        default="mog",
        help="BackgroundSubtractorMOG (default); a cheap stand-in to check decode/compute "
        "overlap; or OpenCV's MOG2 (detectShadows=False) or bgsegm MOG behind the same "
        "reader, to measure the reference's keep ratio on the same machine; none: "
        "decoding only",
    )
    p.add_argument("--components", type=int, default=3, metavar="K", help="Gaussians per pixel (default 3)")
    p.add_argument(
        "--python-wrapper",
        action="store_true",
        help="compile the CPU step with Inductor's Python wrapper, which holds the GIL during "
        "the kernel (the default C++ wrapper releases it): to measure what that costs",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the model; default on CPU: cores - 1 (one core is left "
        "to the decoding thread: OpenMP workers competing with it for cores stall badly)",
    )
    p.add_argument("--json", type=Path, default=REPO / "bench_out/bench_video.json")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.backends = ["pyav", "torchcodec"] if args.backend == "both" else [args.backend]
    if "torchcodec" in args.backends and "torchcodec" not in video_backends():
        p.error('--backend torchcodec: TorchCodec is not installed (pip install "torchmog[torchcodec]")')
    if args.size is not None:
        from torchgmm.io.video import parse_size

        args.size = parse_size(args.size, "--size")
    if args.threads is None and args.device.type == "cpu":
        args.threads = max(1, (os.cpu_count() or 2) - 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchgmm.background import retain_freed_memory

    retain_freed_memory()  # as the torchgmm command does

    model, why = (
        (None, "--model none")
        if args.model == "none"
        else load_model(args.device, args.model, args.components, args.python_wrapper, args.threads)
    )
    if args.model == "none":
        print("[bench_video] --model none: measuring decoding only.")
    elif model is None:
        print(f"[bench_video] model {args.model!r} is unavailable ({why}); measuring decoding only.")

    clips: list[tuple[str, Path]] = []
    for video in args.video:
        if video.is_file():
            clips.append((video.name, video))
        else:
            print(f"[bench_video] {video} not found; skipping it.")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in filter(None, args.sizes.split(",")):
            w, h = (int(v) for v in size.lower().split("x"))
            t0 = time.perf_counter()
            clips.append((f"generated {w}x{h}", make_clip(Path(tmp) / f"gen_{w}x{h}.mp4", args.gen_frames, h, w)))
            print(f"[bench_video] generated {w}x{h} x {args.gen_frames} frames in {time.perf_counter() - t0:.1f} s")
        for name, path in clips:
            with VideoReader(path) as r:
                info = dict(
                    clip=name, path=str(path), width=r.width, height=r.height, fps=r.fps, frame_count=r.frame_count
                )
            by_backend: dict[str, list[float]] = {b: [] for b in args.backends}
            for backend in args.backends:
                time_decode(path, args, min(args.frames, 2 * args.batch_size), backend)  # warm caches
            for _ in range(max(1, args.repeats)):
                for backend in args.backends:  # alternating: the backends share the machine's load
                    dec, n = time_decode(path, args, args.frames, backend)
                    by_backend[backend].append(dec)
            decode = {b: dict(median=float(np.median(v)), best=max(v), runs=v) for b, v in by_backend.items()}
            row = dict(info, frames=n, decode_fps=decode[args.backends[0]]["median"], decode_by_backend=decode)
            if model is not None:
                row["model_fps"] = time_model(model(), path, args, args.frames)
                e2e, _, fg = time_end_to_end(model(), path, args, args.frames)
                dec = row["decode_fps"]  # the first backend's median
                row.update(
                    end_to_end_fps=e2e, keep=e2e / dec, overlap=e2e / min(dec, row["model_fps"]), mean_foreground_px=fg
                )
            rows.append(row)

    hdr = f"{'clip':<24}{'size':>11}{'frames':>8}{'decode f/s':>12}{'model f/s':>11}{'e2e f/s':>10}{'keep':>7}{'overlap':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        size = f"{r['width']}x{r['height']}"
        model_s = (
            f"{r['model_fps']:>11.1f}{r['end_to_end_fps']:>10.1f}{r['keep']:>7.0%}{r['overlap']:>9.0%}"
            if "keep" in r
            else f"{'-':>11}{'-':>10}{'-':>7}{'-':>9}"
        )
        print(f"{r['clip']:<24}{size:>11}{r['frames']:>8}{r['decode_fps']:>12.1f}{model_s}")
    if len(args.backends) > 1:
        hdr = f"{'clip':<24}{'size':>11}{'frames':>8}{'pyav f/s':>12}{'torchcodec f/s':>16}{'tc/pyav':>9}"
        print(f"\ndecode frames/s, median (best) of {max(1, args.repeats)} alternating runs")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            a, b = r["decode_by_backend"]["pyav"], r["decode_by_backend"]["torchcodec"]
            size = f"{r['width']}x{r['height']}"
            pyav, tc = f"{a['median']:.1f} ({a['best']:.0f})", f"{b['median']:.1f} ({b['best']:.0f})"
            print(f"{r['clip']:<24}{size:>11}{r['frames']:>8}{pyav:>12}{tc:>16}{b['median'] / a['median']:>8.2f}x")

    out = dict(
        device=str(args.device),
        batch_size=args.batch_size,
        prefetch=args.prefetch,
        gray=args.gray,
        size=args.size,
        backends=args.backends,
        repeats=args.repeats,
        versions=_versions(args.backends),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        load_average_after=os.getloadavg() if hasattr(os, "getloadavg") else None,
        model=None
        if model is None
        else (
            f"BackgroundSubtractorMOG(n_components={args.components}, learning_rate=0.005)"
            if args.model == "mog"
            else args.model
        ),
        model_threads=args.threads,
        inductor_wrapper="python" if args.python_wrapper else "c++ (CPU)",
        model_unavailable=why,
        rows=rows,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"[bench_video] wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark BackgroundSubtractorMOG (or MOG2) against OpenCV's MOG2 and bgsegm MOG, side by side in one run.

What is measured (CPU, every case, same frames and same thread count for every method):

- ``mog2``: ``cv2.createBackgroundSubtractorMOG2(detectShadows=False)`` with
  ``setNMixtures(K)``, default learning rate. THE reference: ratio = method time / MOG2 time.
- ``bgsegm_mog``: OpenCV contrib ``cv2.bgsegm.createBackgroundSubtractorMOG(nmixtures=K)``.
- ``torchgmm``: ``BackgroundSubtractorMOG(n_components=K, compile=True)``, defaults otherwise.
- ``torchgmm_eager``: the same with ``compile=False``.
- ``torchgmm_default``: ``BackgroundSubtractorMOG(n_components=K)`` as a user writes it (the
  README's loop): on the CPU the step compiled ahead of time, its package built (and
  waited for) before the warm-up frames, so the measured frames are the package's.
- ``torchgmm_fp16``: compiled, ``state_dtype=torch.float16`` (``--no-fp16`` to leave it out;
  an error is recorded, not raised).
- ``torchgmm_shadow`` (with ``--shadows``): compiled, ``detect_shadows=True``, the bool
  foreground of ``model(frames)`` as ``torchgmm``'s row: the cost of the shadow test, to
  compare with ``torchgmm`` (shadows off) in the same run.

``--mode mog2`` times OpenCV's MOG2 model itself instead, with shadows on (the default):

- ``mog2``: ``cv2.createBackgroundSubtractorMOG2(detectShadows=True)``, ``setNMixtures(K)``,
  default learning rate: the reference.
- ``torchgmm_mog2``: ``BackgroundSubtractorMOG2(n_mixtures=K, compile=True)`` (``apply``: the
  same uint8 mask as OpenCV's), defaults otherwise (OpenCV's).
- ``torchgmm_mog2_eager``: the same with ``compile=False``.

(The mode applies to the CPU cases; ``--cpu-streams`` and the GPU section time
BackgroundSubtractorMOG in either mode.)

Frames: a synthetic video generated once per (size, channels) in memory with NumPy (seeded):
a static textured background, Gaussian sensor noise on every frame, and a few rectangles
moving across it. OpenCV gets ``uint8`` HxWxC arrays (HxW for grey), torchgmm pre-made
contiguous ``(1, C, H, W)`` ``uint8`` tensors of the same pixels (conversion not timed).

Each method starts from a fresh model and learns the warm-up frames (default 20; they
include ``torch.compile``'s compilation and the first-frame initialisation) untimed. The
measured frames (default 100) are then timed with ``time.perf_counter`` around the loop
(with ``torch.cuda.synchronize`` on CUDA). By default the methods take turns every 10
measured frames (``--interleave``; each method keeps its own state and walks through the
same frames in order), so that a change in the load of a shared machine during the run
hits every method alike and the ratio stays meaningful; ``--interleave 0`` runs each
method's measured frames in one loop, one method after the other. A method's time is the
sum of its timed loops. Per-frame timestamps are also taken inside the loops (one
``perf_counter`` call per frame) to report the median / slowest frame and catch stalls;
the dynamo counter of compiled graphs and the process's minor page faults are read around
each loop for the same reason. Before each case ``torch._dynamo.reset()`` is called
(``--no-dynamo-reset`` keeps the caches), so each case compiles for its own static shapes,
as an application processing one video would; the first warm-up frame's time
(compilation included) is reported as ``first_frame_s``.

By default the script calls ``torchgmm.background.retain_freed_memory()`` (glibc: freed
state memory is reused, no page faults per frame), as the ``torchgmm`` command does;
``--no-retain-memory`` measures with the allocator's default settings.

GPU section (when ``torch.cuda.is_available()``): frames/s of the compiled model at
3840x2160 RGB K=3 with batches of 1, 4 and 16 streams, frames pre-loaded on the GPU;
frames/s counts every stream's frame, and GB/s assumes 124 bytes moved per pixel (float32
state of RGB K=3 spherical read and written once: 2 x 60 bytes, plus the 3-byte frame and
the 1-byte mask).

Examples:
    python scripts/bench_background.py --quick
    python scripts/bench_background.py --threads 2                 # full CPU run, several minutes
    python scripts/bench_background.py --sizes 640x480 --channels 3 --components 3 5
    python scripts/bench_background.py --skip-eager-above 1000000  # no eager run at 1080p
    python scripts/bench_background.py --quick --cpu-streams 1 2 4  # + B streams per step on the CPU
    python scripts/bench_background.py --mode mog2 --quick          # MOG2 vs OpenCV MOG2, 640x480 RGB K=5
    python scripts/bench_background.py --quick --shadows --no-fp16  # S-G with shadows on vs off, 640x480 RGB K=3

Prints a table and writes JSON (``--json``, default ``bench_out/bench_background.json``).
Target: torchgmm / MOG2 <= 1.5 at 640x480 RGB K=3; ``--mode mog2``: torchgmm_mog2 / MOG2 <= 1.0
at 640x480 RGB K=5, shadows on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.5
TARGET_CASE = (640, 480, 3, 3)  # width, height, channels, K
#: per --mode: (ratio threshold, (width, height, channels, K), the method it is about)
TARGETS = {"mog": (TARGET_RATIO, TARGET_CASE, "torchgmm"), "mog2": (1.0, (640, 480, 3, 5), "torchgmm_mog2")}
GPU_BYTES_PER_PIXEL = 124


# ----------------------------------------------------------------------------------------
# Synthetic video
# ----------------------------------------------------------------------------------------
def make_video(n: int, h: int, w: int, c: int, seed: int = 0, noise_sigma: float = 4.0) -> np.ndarray:
    """``(n, H, W, C)`` uint8: textured static background + Gaussian noise + moving rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = np.empty((h, w, c), np.float32)
    for ch in range(c):
        # Smooth gradient + low-frequency blobs (a coarse random grid, bilinearly upsampled)
        # + fixed fine texture: every pixel has its own static mean.
        gy, gx = rng.integers(6, 12, 2)
        coarse = rng.uniform(-40, 40, (gy, gx)).astype(np.float32)
        ys = np.linspace(0, gy - 1, h, dtype=np.float32)
        xs = np.linspace(0, gx - 1, w, dtype=np.float32)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, gy - 1), np.minimum(x0 + 1, gx - 1)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        blobs = (
            coarse[y0][:, x0] * (1 - fy) * (1 - fx)
            + coarse[y1][:, x0] * fy * (1 - fx)
            + coarse[y0][:, x1] * (1 - fy) * fx
            + coarse[y1][:, x1] * fy * fx
        )
        gradient = 60 * (xx / max(w - 1, 1)) + 40 * (yy / max(h - 1, 1)) + 20 * ch
        texture = rng.uniform(-15, 15, (h, w)).astype(np.float32)
        background[..., ch] = 70 + gradient + blobs + texture
    # Moving rectangles: position, velocity (pixels/frame), size, colour; they bounce.
    n_rects = 3
    sizes = [(max(h // s, 2), max(w // s, 2)) for s in (5, 7, 9)]
    pos = [np.array([rng.uniform(0, h - sh), rng.uniform(0, w - sw)]) for sh, sw in sizes]
    vel = [rng.uniform(2, 6, 2) * rng.choice([-1, 1], 2) * max(h / 480, 1) for _ in range(n_rects)]
    colours = rng.uniform(0, 255, (n_rects, c)).astype(np.float32)
    video = np.empty((n, h, w, c), np.uint8)
    frame = np.empty((h, w, c), np.float32)
    for t in range(n):
        frame[:] = rng.standard_normal((h, w, c), dtype=np.float32)
        frame *= noise_sigma
        frame += background
        for i, (sh, sw) in enumerate(sizes):
            y, x = int(pos[i][0]), int(pos[i][1])
            frame[y : y + sh, x : x + sw] = (
                colours[i] + frame[y : y + sh, x : x + sw] - background[y : y + sh, x : x + sw]
            )
            pos[i] = pos[i] + vel[i]
            for d, limit in ((0, h - sh), (1, w - sw)):
                if not 0 <= pos[i][d] <= limit:
                    vel[i][d] = -vel[i][d]
                    pos[i][d] = min(max(pos[i][d], 0), limit)
        np.clip(frame, 0, 255, out=frame)
        np.rint(frame, out=frame)
        video[t] = frame
    return video


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OtherLoad:
    """CPU time used by other processes while the benchmark runs, in cores (Linux /proc/stat)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample():  # noqa: ANN205
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        own = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = end[0] - self.start[0]
        return max(0.0, ((end[1] - self.start[1]) - (end[2] - self.start[2])) / wall)


def _graphs_compiled() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - only a diagnostic
        return -1


class Timer:
    """Warm-up, then chunked timing of one method's ``step(t)`` (t = frame index)."""

    def __init__(self, step: Callable[[int], object], device: torch.device = torch.device("cpu")) -> None:
        self.step, self.device = step, device
        self.warm_s: list[float] = []
        self.per_frame: list[float] = []
        self.elapsed = 0.0
        self.faults = 0
        self.graphs = 0
        self.out = None

    def warm(self, n_warmup: int) -> None:
        """Untimed frames 0..n_warmup-1 (compilation and first-frame initialisation happen here)."""
        for t in range(n_warmup):
            start = time.perf_counter()
            self.step(t)
            _sync(self.device)
            self.warm_s.append(time.perf_counter() - start)

    def measure(self, first: int, stop: int) -> None:
        """Time frames first..stop-1: perf_counter around the loop, plus per-frame stamps."""
        graphs_before = _graphs_compiled()
        stamps = np.empty(stop - first + 1)
        _sync(self.device)
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        stamps[0] = start = time.perf_counter()
        for i, t in enumerate(range(first, stop)):
            self.out = self.step(t)
            stamps[i + 1] = time.perf_counter()
        _sync(self.device)
        self.elapsed += time.perf_counter() - start
        self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
        self.graphs += _graphs_compiled() - graphs_before if graphs_before >= 0 else 0
        self.per_frame.extend(np.diff(stamps).tolist())

    def result(self) -> dict:
        n = len(self.per_frame)
        per_frame = np.array(self.per_frame)
        ms = self.elapsed / n * 1e3
        foreground = None
        out = self.out
        if out is not None:  # share of foreground pixels in the last mask: a sanity check, untimed
            foreground = float((out > 0).float().mean()) if isinstance(out, torch.Tensor) else float((out > 0).mean())
        return dict(
            ms_per_frame=ms,
            fps=1e3 / ms,
            total_s=self.elapsed,
            median_ms=float(np.median(per_frame) * 1e3),
            max_ms=float(per_frame.max() * 1e3),
            slow_frames=int((per_frame > 3 * np.median(per_frame)).sum()),
            first_frame_s=self.warm_s[0] if self.warm_s else None,
            warmup_ms=[round(x * 1e3, 3) for x in self.warm_s],
            graphs_compiled_while_measuring=self.graphs,
            page_faults_per_frame=self.faults / n,
            foreground_last_frame=foreground,
        )


def time_frames(
    step: Callable[[int], object], n_warmup: int, n_measure: int, device: torch.device = torch.device("cpu")
) -> dict:
    """Warm-up frames untimed, then the measured frames in one timed loop."""
    timer = Timer(step, device)
    timer.warm(n_warmup)
    timer.measure(n_warmup, n_warmup + n_measure)
    return timer.result()


# ----------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------
def opencv_mog2(k: int, detect_shadows: bool = False):
    import cv2

    sub = cv2.createBackgroundSubtractorMOG2(detectShadows=detect_shadows)
    sub.setNMixtures(k)
    return sub.apply


def opencv_bgsegm(k: int):
    import cv2

    if not hasattr(cv2, "bgsegm"):
        raise RuntimeError("cv2.bgsegm missing (install opencv-contrib-python)")
    return cv2.bgsegm.createBackgroundSubtractorMOG(nmixtures=k).apply


def torchgmm_model(k: int, device: torch.device, **kwargs):
    from torchgmm.background import BackgroundSubtractorMOG

    return BackgroundSubtractorMOG(n_components=k, **kwargs).to(device)


def torchgmm_mog2_model(k: int, device: torch.device, **kwargs):
    from torchgmm.mog2 import BackgroundSubtractorMOG2

    return BackgroundSubtractorMOG2(n_mixtures=k, **kwargs).to(device)


def _mog2_methods(k: int, frames_np, frames_t, args, device: torch.device, too_big: bool) -> list:
    """--mode mog2: OpenCV's MOG2 with shadows (the reference) and BackgroundSubtractorMOG2."""
    methods = [
        ("mog2", lambda: _cv_step(opencv_mog2(k, detect_shadows=True), frames_np), False),
        ("torchgmm_mog2", lambda: _torch_apply_step(torchgmm_mog2_model(k, device, compile=True), frames_t), True),
    ]
    if too_big:
        methods.append(("torchgmm_mog2_eager", None, False))
    else:
        methods.append(
            (
                "torchgmm_mog2_eager",
                lambda: _torch_apply_step(torchgmm_mog2_model(k, device, compile=False), frames_t),
                False,
            )
        )
    return methods


def bench_case(video: np.ndarray, k: int, args, device: torch.device) -> list[dict]:
    n, h, w, c = video.shape
    frames_np = [video[t, ..., 0] if c == 1 else video[t] for t in range(n)]  # HxW / HxWx3 views
    clip = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous().to(device)  # (n, C, H, W)
    frames_t = [clip[t : t + 1] for t in range(n)]  # contiguous (1, C, H, W) views
    methods: list[tuple[str, Callable[[], Callable[[int], object]], bool]] = [
        ("mog2", lambda: _cv_step(opencv_mog2(k), frames_np), False),
        ("bgsegm_mog", lambda: _cv_step(opencv_bgsegm(k), frames_np), False),
        ("torchgmm", lambda: _torch_step(torchgmm_model(k, device, compile=True), frames_t), True),
    ]
    methods.append(("torchgmm_default", lambda: _default_step(k, device, frames_t), True))
    if args.skip_eager_above and h * w > args.skip_eager_above:
        methods.append(("torchgmm_eager", None, False))
    else:
        methods.append(
            ("torchgmm_eager", lambda: _torch_step(torchgmm_model(k, device, compile=False), frames_t), False)
        )
    if not args.no_fp16:
        methods.append(
            (
                "torchgmm_fp16",
                lambda: _torch_step(torchgmm_model(k, device, compile=True, state_dtype=torch.float16), frames_t),
                True,
            )
        )
    if args.shadows:
        methods.append(
            (
                "torchgmm_shadow",
                lambda: _torch_step(torchgmm_model(k, device, compile=True, detect_shadows=True), frames_t),
                True,
            )
        )
    if args.mode == "mog2":
        methods = _mog2_methods(
            k, frames_np, frames_t, args, device, bool(args.skip_eager_above and h * w > args.skip_eager_above)
        )
    if args.methods:
        methods = [m for m in methods if m[0] in args.methods or m[0] == "mog2"]

    if not args.no_dynamo_reset:
        torch._dynamo.reset()  # fresh static-shape compilation for this case (fp16 is a second graph)
    rows, timers = [], []
    for name, make, compiled in methods:
        row = dict(
            case=f"{w}x{h} C={c} K={k}",
            width=w,
            height=h,
            channels=c,
            components=k,
            method=name,
            frames=args.frames,
            warmup=args.warmup,
            interleave=args.interleave,
        )
        rows.append(row)
        if args.mode == "mog2" or name == "torchgmm_shadow":
            row["detect_shadows"] = True
        if make is None:
            row["skipped"] = f"--skip-eager-above {args.skip_eager_above} (frame has {h * w} pixels)"
            continue
        try:
            timer = Timer(make(), device)
            timer.warm(args.warmup)
            timers.append((row, timer))
        except Exception as exc:  # noqa: BLE001 - record and go on (e.g. fp16 unsupported)
            _record_error(row, exc, args.verbose)
    # Measured frames: in chunks of --interleave frames, the methods taking turns (starting
    # with a different one each round), so that a change in the machine's load hits all alike.
    chunk = args.interleave or args.frames
    for round_, first in enumerate(range(0, args.frames, chunk)):
        stop = min(first + chunk, args.frames)
        for i in range(len(timers)):
            row, timer = timers[(i + round_) % len(timers)]
            if "error" in row:
                continue
            try:
                timer.measure(args.warmup + first, args.warmup + stop)
            except Exception as exc:  # noqa: BLE001
                _record_error(row, exc, args.verbose)
    for row, timer in timers:
        if "error" not in row:
            row.update(timer.result())
    for row in rows:
        print(
            f"  {row['case']:20} {row['method']:15} "
            + (
                f"{row['ms_per_frame']:9.2f} ms/frame"
                if "ms_per_frame" in row
                else row.get("error", row.get("skipped", ""))
            ),
            flush=True,
        )
    ref = next((r for r in rows if r["method"] == "mog2" and "ms_per_frame" in r), None)
    for r in rows:
        r["ratio"] = r["ms_per_frame"] / ref["ms_per_frame"] if ref and "ms_per_frame" in r else None
        # The same on the median frame: robust to bursts of load from other jobs on the machine.
        r["ratio_median"] = r["median_ms"] / ref["median_ms"] if ref and "median_ms" in r else None
    del clip, frames_t, timers
    return rows


def _record_error(row: dict, exc: Exception, verbose: bool) -> None:
    row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if verbose:
        traceback.print_exc()


def _cv_step(apply, frames_np):
    return lambda t: apply(frames_np[t])


def _torch_step(model, frames_t):
    @torch.inference_mode()
    def step(t: int):
        return model(frames_t[t])

    return step


def _default_step(k: int, device: torch.device, frames_t):
    """``torchgmm_default``: the model with its default ``compile``, its package built first."""
    from torchgmm import _aot

    model = torchgmm_model(k, device)
    with torch.inference_mode():
        model(frames_t[0])
    _aot.wait_for_builds()  # the CPU default builds its package in the background
    model.reset()
    return _torch_step(model, frames_t)


def _torch_apply_step(model, frames_t):
    return lambda t: model.apply(frames_t[t])  # OpenCV's uint8 mask, as cv2's apply returns


# ----------------------------------------------------------------------------------------
# GPU section
# ----------------------------------------------------------------------------------------
def bench_gpu(
    args, device: torch.device = torch.device("cuda"), h: int = 2160, w: int = 3840, batches: list[int] | None = None
) -> list[dict]:
    """Compiled model at 3840x2160 RGB K=3, B = 1, 4, 16 streams, frames already on the GPU.

    Also the CPU batch-of-streams section (``--cpu-streams``: ``device`` cpu, a smaller size).
    """
    cuda = device.type == "cuda"
    c, k = 3, 3
    n_distinct = 8  # distinct frames per stream, cycled (memory: 8 x B x 25 MB)
    gen = torch.Generator(device=device).manual_seed(0)
    yy = torch.linspace(0, 1, h, device=device)[:, None]
    xx = torch.linspace(0, 1, w, device=device)[None, :]
    rows = []
    for b in batches or args.gpu_batches:
        row = dict(
            case=f"{w}x{h} C={c} K={k}",
            streams=b,
            method="torchgmm",
            device=torch.cuda.get_device_name(device) if cuda else str(device),
        )
        try:
            base = torch.stack([70 + 60 * xx + 40 * yy + 20 * ch for ch in range(c)])  # (C, H, W)
            base = base + torch.rand((b, c, h, w), generator=gen, device=device) * 30 - 15
            frames = []
            for t in range(n_distinct):
                f = base + 4 * torch.randn((b, c, h, w), generator=gen, device=device)
                s = h // 6
                y0, x0 = (t * 37) % (h - s), (t * 53) % (w - s)
                f[:, :, y0 : y0 + s, x0 : x0 + s] = 230.0
                frames.append(f.clamp_(0, 255).round_().to(torch.uint8))
            del base
            if not args.no_dynamo_reset:
                torch._dynamo.reset()
            model = torchgmm_model(k, device, compile=True)
            n_warm, n_meas = 10, args.gpu_frames

            @torch.inference_mode()
            def step(t: int, model=model, frames=frames):
                return model(frames[t % n_distinct])

            timing = time_frames(step, n_warm, n_meas, device)
            for key in ("median_ms", "max_ms", "slow_frames"):  # per-frame stamps of async launches
                timing.pop(key)
            pixels = h * w * b
            row.update(timing)
            row["fps_all_streams"] = b * n_meas / timing["total_s"]
            row["gb_per_s"] = GPU_BYTES_PER_PIXEL * pixels * n_meas / timing["total_s"] / 1e9
            row["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if args.verbose:
                traceback.print_exc()
        model = frames = step = None  # free this batch size's memory before the next, error or not
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)
        msg = f"{row['fps_all_streams']:9.1f} frames/s" if "fps_all_streams" in row else row["error"]
        print(f"  {'GPU' if cuda else 'CPU'} {row['case']:20} B={b:<3} {msg}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':22} {'method':15} {'ms/frame':>9} {'frames/s':>9} {'ratio':>7} {'median':>8} {'ratio_md':>8} {'max':>8} "
        f"{'1st s':>7} {'faults':>7} {'fg %':>6}"
    )
    print(header)
    print("-" * len(header))
    last = None
    for r in rows:
        if r["case"] != last:
            if last is not None:
                print()
            if r.get("other_processes_cpus") is not None:
                print(f"[{r['case']}: other processes used {r['other_processes_cpus']:.2f} CPUs meanwhile]")
        last = r["case"]
        if "ms_per_frame" not in r:
            print(
                f"{r['case']:22} {r['method']:15} "
                + ("error: " + r["error"] if "error" in r else "skipped: " + r["skipped"])
            )
            continue
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        ratio_md = "-" if r.get("ratio_median") is None else f"{r['ratio_median']:.2f}"
        first = "-" if r["first_frame_s"] is None else f"{r['first_frame_s']:.2f}"
        note = ""
        if r.get("graphs_compiled_while_measuring"):
            note += f"  RECOMPILED x{r['graphs_compiled_while_measuring']} while measuring"
        if r["slow_frames"]:
            note += f"  {r['slow_frames']} frames > 3x median"
        print(
            f"{r['case']:22} {r['method']:15} {r['ms_per_frame']:9.2f} {r['fps']:9.1f} {ratio:>7} "
            f"{r['median_ms']:8.2f} {ratio_md:>8} {r['max_ms']:8.2f} {first:>7} {r['page_faults_per_frame']:7.0f} "
            f"{100 * r['foreground_last_frame']:6.2f}{note}"
        )
    print(
        "ratio = method time / OpenCV MOG2 time (lower is better); median/max = per-frame ms in the "
        "measured loop;\nratio_md = median frame / MOG2's median frame (robust to load bursts); 1st s = first warm-up frame (torch.compile included);\nfaults = minor page faults per "
        "measured frame (whole process); fg % = foreground pixels in the last mask (sanity check)."
    )


def print_gpu_table(rows: list[dict]) -> None:
    print(f"{'case':22} {'streams':>7} {'frames/s':>10} {'ms/step':>9} {'GB/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:22} {r['streams']:>7} error: {r['error']}")
        else:
            print(
                f"{r['case']:22} {r['streams']:>7} {r['fps_all_streams']:10.1f} {r['ms_per_frame']:9.2f} {r['gb_per_s']:8.1f}"
            )
    print(f"frames/s counts every stream's frame; GB/s assumes {GPU_BYTES_PER_PIXEL} bytes moved per pixel.")


def target_line(rows: list[dict], mode: str = "mog") -> tuple[str, float | None]:
    threshold, (w, h, c, k), method = TARGETS[mode]
    r = next(
        (
            r
            for r in rows
            if (r["width"], r["height"], r["channels"], r["components"]) == (w, h, c, k)
            and r["method"] == method
            and r.get("ratio") is not None
        ),
        None,
    )
    if r is None:
        return f"target: {method}/MOG2 <= {threshold} at {w}x{h} RGB K={k}: not measured", None
    verdict = "PASS" if r["ratio"] <= threshold else "FAIL"
    return (
        f"target: {method}/MOG2 <= {threshold} at {w}x{h} RGB K={k}: {r['ratio']:.2f} {verdict} "
        f"(median-frame ratio {r['ratio_median']:.2f})"
    ), r["ratio"]


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and cv2.setNumThreads")
    parser.add_argument(
        "--mode",
        choices=sorted(TARGETS),
        default="mog",
        help="mog: BackgroundSubtractorMOG vs OpenCV (default); mog2: BackgroundSubtractorMOG2 vs "
        "OpenCV's MOG2, shadows on",
    )
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"], help="WxH, e.g. 640x480")
    parser.add_argument("--channels", nargs="+", type=int, default=[1, 3], choices=[1, 3])
    parser.add_argument("--components", nargs="+", type=int, default=[3, 5], help="K values")
    parser.add_argument("--frames", type=int, default=100, help="measured frames per method")
    parser.add_argument("--warmup", type=int, default=20, help="untimed frames first (compilation included)")
    parser.add_argument("--quick", action="store_true", help="640x480 RGB K=3 only")
    parser.add_argument(
        "--interleave",
        type=int,
        default=10,
        metavar="FRAMES",
        help="methods take turns every FRAMES measured frames (0: each method's measured "
        "frames in one loop, one method after the other)",
    )
    parser.add_argument(
        "--skip-eager-above",
        type=int,
        default=0,
        metavar="PIXELS",
        help="skip eager torchgmm when H*W > PIXELS (0: never skip)",
    )
    parser.add_argument("--no-fp16", action="store_true", help="leave out the float16-state model")
    parser.add_argument(
        "--shadows",
        action="store_true",
        help="add torchgmm_shadow: BackgroundSubtractorMOG with detect_shadows=True (compiled)",
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="restrict to these methods (mog2 always runs: it is the reference)"
    )
    parser.add_argument(
        "--no-retain-memory", action="store_true", help="do not call torchgmm.background.retain_freed_memory()"
    )
    parser.add_argument(
        "--no-dynamo-reset",
        action="store_true",
        help="keep torch.compile caches between cases (a configuration's second "
        "frame size then recompiles it with dynamic shapes)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (cuda: GPU section only)")
    parser.add_argument("--gpu-batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--cpu-streams",
        nargs="+",
        type=int,
        default=[],
        help="also time B streams per step on the CPU (first --sizes, RGB, K=3), e.g. 1 2 4: "
        "per-stream cost of batching",
    )
    parser.add_argument("--gpu-frames", type=int, default=50, help="measured steps per GPU batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
    parser.add_argument("--json", default="bench_out/bench_background.json")
    args = parser.parse_args()

    import cv2
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    retained = None
    if not args.no_retain_memory:
        from torchgmm.background import retain_freed_memory

        retained = retain_freed_memory()
    if args.quick:
        args.sizes, args.channels, args.components = ["640x480"], [3], [TARGETS[args.mode][1][3]]
    run_cpu = args.device in ("auto", "cpu")
    run_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())

    rows: list[dict] = []
    cpu_stream_rows: list[dict] = []
    gpu_rows: list[dict] = []
    gpu_note = None
    others = OtherLoad()
    with threadpool_limits(limits=args.threads):
        if run_cpu:
            cpu = torch.device("cpu")
            for size in args.sizes:
                w, h = parse_size(size)
                for c in args.channels:
                    start = time.perf_counter()
                    video = make_video(args.warmup + args.frames, h, w, c, seed=args.seed)
                    print(
                        f"{w}x{h} C={c}: {video.shape[0]} frames generated in {time.perf_counter() - start:.1f} s",
                        flush=True,
                    )
                    for k in args.components:
                        case_load = OtherLoad()
                        case_rows = bench_case(video, k, args, cpu)
                        busy = case_load.cores()
                        for r in case_rows:
                            r["other_processes_cpus"] = busy
                        rows += case_rows
                    del video
            if args.cpu_streams:
                w, h = parse_size(args.sizes[0])
                cpu_stream_rows = bench_gpu(args, cpu, h, w, batches=args.cpu_streams)
        if run_gpu:
            if torch.cuda.is_available():
                gpu_rows = bench_gpu(args)
            else:
                gpu_note = "--device cuda but torch.cuda.is_available() is False"
        elif args.device == "cpu":
            gpu_note = "skipped (--device cpu)"
        else:
            gpu_note = "skipped: no CUDA device (torch.cuda.is_available() is False)"
    other_cores = others.cores()

    if rows:
        print()
        print(
            f"CPU, {args.threads} threads (torch and OpenCV), {args.frames} measured frames after "
            f"{args.warmup} warm-up frames"
        )
        print_table(rows)
    if cpu_stream_rows:
        print()
        print(f"CPU, batches of streams ({args.threads} threads; frames/s counts every stream's frame)")
        print_gpu_table(cpu_stream_rows)
    if gpu_rows:
        print()
        print(f"GPU: {torch.cuda.get_device_name()}")
        print_gpu_table(gpu_rows)
    elif gpu_note:
        print(f"GPU section {gpu_note}")
    line, ratio = target_line(rows, args.mode)
    print(line)
    if other_cores is not None:
        print(f"other processes used {other_cores:.2f} of {os.cpu_count()} CPUs on average during the run")
        if other_cores > 0.25:
            print(
                "note: the machine was shared; with --threads = all cores, OpenMP (torch) suffers more from "
                "that than OpenCV's thread pool (a parallel loop waits for its slowest thread). Repeat on a "
                "quiet machine, or compare with --threads 1."
            )

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        threads=args.threads,
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        opencv=cv2.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor() or _cpu_model(),
        torch_threads=torch.get_num_threads(),
        cv2_threads=cv2.getNumThreads(),
        retain_freed_memory=retained,
        dynamo_reset_per_case=not args.no_dynamo_reset,
        frames=args.frames,
        warmup=args.warmup,
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        other_processes_cpus=other_cores,
        device="cpu" + (f" + {torch.cuda.get_device_name()}" if gpu_rows else ""),
    )
    threshold = TARGETS[args.mode][0]
    meta["mode"] = args.mode
    target = dict(text=line, ratio=ratio, threshold=threshold, passed=None if ratio is None else ratio <= threshold)
    out.write_text(
        json.dumps(
            dict(meta=meta, target=target, cpu=rows, cpu_streams=cpu_stream_rows, gpu=gpu_rows, gpu_note=gpu_note),
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""What bounds the background update: memory traffic or arithmetic? Three compiled kernels, one run.

All three are compiled as the module compiles its step (``torch.compile``, one fused loop,
Inductor's C++ wrapper on CPU) and called on the same synthetic frames (a static textured
background plus sensor noise), interleaved round by round so that a change in the machine's
load hits them alike:

- ``step``: the real update, :func:`torchgmm.background.mog_update` with the rate schedule,
  one frame per call (what ``BackgroundSubtractorMOG`` runs, without its Python overhead).
- ``traffic``: a kernel that reads and writes exactly the step's bytes (the frame, the
  state, a new state of the same layout and the mask) with one add per value: the time
  the memory traffic alone takes.
- ``arithmetic``: the real update chained over ``--chain`` frames in one call, the state
  kept in registers between them (read once, written once), so its traffic is amortised
  over the frames: time per frame = the update's arithmetic plus 1/chain of the traffic.
  Its final state is checked against ``chain`` single steps before timing.

If ``step`` is close to ``traffic`` and well above ``arithmetic`` the update is memory
bound; if close to ``arithmetic``, compute bound. Bytes per pixel (float32 state): frame C,
state 2 x (K + K C + K) for spherical variances, mask 1 (124 for RGB, K = 3).

Examples:
    python scripts/bench_roofline.py                       # 640x480 RGB K=3, 1 and 2 threads
    python scripts/bench_roofline.py --size 1920x1080 --threads 2
    python scripts/bench_roofline.py --device cuda --size 3840x2160

Prints a table and writes JSON (``--json``, default ``bench_out/bench_roofline.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torchgmm import background as bg  # noqa: E402


def _step(frame, weight, mean, variance, frames_seen, rate, settings):  # noqa: ANN001, ANN202
    mask, weight, mean, variance = bg.mog_update(frame, weight, mean, variance, rate, **settings)
    return mask, weight, mean, variance, frames_seen + 1


def _traffic(frame, weight, mean, variance, frames_seen, rate, settings):  # noqa: ANN001, ANN202
    # Same inputs, same outputs, same layouts as _step; one add per value instead of the update.
    mask = frame.amax(1, keepdim=True) > 128
    return mask, weight + rate, mean + rate, variance + rate, frames_seen + 1


def _chained(frames, weight, mean, variance, frames_seen, rate, settings):  # noqa: ANN001, ANN202
    # (T, B, C, H, W) frames, T unrolled; the state stays in per-component planes in between
    # (the same helpers mog_update uses), so inductor keeps it in registers.
    xs, ws, mus, vs = bg._unpack(frames[0], weight, mean, variance)
    masks = []
    for t in range(frames.shape[0]):
        if t:
            xs = bg._unpack(frames[t], weight, mean, variance)[0]
        mask, ws, mus, vs = bg._update_planes(xs, ws, mus, vs, rate, **settings)
        masks.append(mask[:, None])
    return (torch.stack(masks), *bg._pack(ws, mus, vs, weight, mean, variance), frames_seen + frames.shape[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_frames(n: int, c: int, h: int, w: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``(n, 1, C, H, W)`` uint8: a static textured background plus Gaussian noise (sigma 4)."""
    g = torch.Generator().manual_seed(seed)
    background = torch.rand((1, c, h, w), generator=g) * 200 + 20
    noise = torch.randn((n, 1, c, h, w), generator=g) * 4
    return (background + noise).round().clamp(0, 255).to(torch.uint8).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="640x480", help="WxH")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU thread counts")
    parser.add_argument("--chain", type=int, default=8, help="frames per call of the arithmetic kernel")
    parser.add_argument("--frames", type=int, default=48, help="measured frames per kernel per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median round is reported")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default="bench_out/bench_roofline.json")
    args = parser.parse_args()
    if args.frames % args.chain:
        parser.error(f"--frames ({args.frames}) must be a multiple of --chain ({args.chain})")
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.lower().split("x"))
    c, k = args.channels, args.components
    bg.retain_freed_memory()

    frames = make_frames(args.frames, c, h, w, device)
    weight = torch.zeros(1, k, h, w, device=device)
    mean = torch.zeros(1, k, c, h, w, device=device)
    variance = torch.full((1, k, h, w), 100.0, device=device)
    state = [bg.component_major(t) for t in (weight, mean, variance)]
    scalar = lambda v: torch.tensor(v, device=device)  # noqa: E731
    settings = dict(background_ratio=scalar(0.7), match_sigma=scalar(2.5), init_var=scalar(100.0),
                    min_var=scalar(36.0), init_weight=scalar(0.05), rho="inverse_weight")
    seen = torch.zeros((), dtype=torch.int64, device=device)
    # learn the first frames eagerly (rate 1/t) so the timed state is a settled model
    for t in range(min(8, args.frames)):
        _, *state, seen = _step(frames[t], *state, seen, scalar(1.0 / (t + 1)), settings)
    rate = scalar(0.005)

    options = {"max_fusion_size": 4096}
    if device.type == "cpu":
        options["cpp_wrapper"] = True
    kernels = {name: torch.compile(fn, fullgraph=True, options=options)
               for name, fn in (("step", _step), ("traffic", _traffic), ("arithmetic", _chained))}

    # correctness of the chained kernel: chain frames at once == chain single steps
    chained = kernels["arithmetic"](frames[: args.chain], *state, seen, rate, settings)
    single = (None, *state, seen)
    for t in range(args.chain):
        single = kernels["step"](frames[t], *single[1:4], single[4], rate, settings)
    for got, want in zip(chained[1:4], single[1:4]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    kernels["traffic"](frames[0], *state, seen, rate, settings)  # compile

    def run(name: str) -> float:
        """Seconds for all measured frames through one kernel (state carried along)."""
        kernel, st = kernels[name], (*state, seen)
        _sync(device)
        start = time.perf_counter()
        if name == "arithmetic":
            for t in range(0, args.frames, args.chain):
                _, *st = kernel(frames[t : t + args.chain], *st[:3], st[3], rate, settings)
        else:
            for t in range(args.frames):
                _, *st = kernel(frames[t], *st[:3], st[3], rate, settings)
        _sync(device)
        return time.perf_counter() - start

    pixels = h * w
    bytes_per_pixel = c + 2 * (k + k * c + k) * 4 + 1
    rows = []
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    for threads in thread_counts:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        for name in kernels:
            run(name)  # warm
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(args.rounds):
            for name in kernels:
                times[name].append(run(name) / args.frames * 1e3)
        median = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
        row = dict(threads=threads, **{f"{n}_ms": median[n] for n in kernels},
                   traffic_over_step=median["traffic"] / median["step"],
                   arithmetic_over_step=median["arithmetic"] / median["step"],
                   traffic_gb_s=bytes_per_pixel * pixels / (median["traffic"] * 1e-3) / 1e9,
                   all_rounds_ms=times)
        rows.append(row)

    print(f"{w}x{h} C={c} K={k} on {device.type}, {bytes_per_pixel} bytes/pixel, chain {args.chain}, "
          f"median of {args.rounds} interleaved rounds of {args.frames} frames")
    print("| threads | step ms | traffic ms | arithmetic ms/frame | traffic / step | arithmetic / step | traffic GB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['step_ms']:.3f} | {r['traffic_ms']:.3f} | {r['arithmetic_ms']:.3f} | "
              f"{r['traffic_over_step']:.2f} | {r['arithmetic_over_step']:.2f} | {r['traffic_gb_s']:.1f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(size=[w, h], channels=c, components=k, chain=args.chain, frames=args.frames, rounds=args.rounds,
                device=str(device), bytes_per_pixel=bytes_per_pixel, torch=torch.__version__,
                machine=platform.machine(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

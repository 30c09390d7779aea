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

``--mode em``: the same question for one EM iteration of :mod:`torchgmm.mixture` (N=1,000,000,
D=2, K=5, full, float32 by default), interleaved round by round:

- ``engine``: the iteration the fit runs (eager): the fused E-step statistics in tiles of N
  (:func:`torchgmm.mixture._e_step_statistics`), then the M-step and the Cholesky factors.
- ``compiled``: the same iteration with the E-step statistics as one compiled loop over the
  samples (:func:`torchgmm.mixture._unrolled_statistics` under ``torch.compile``), checked
  against ``engine`` first.
- ``traffic``: a compiled kernel reading exactly the bytes the iteration must read, the
  quadratic features ``B F N`` numbers (F = D (D + 3) / 2), with one add per value.

``--mode em-memory``: peak RSS of a chunked fit of ``--em-n`` x ``--em-d`` float32 samples
generated chunk by chunk (50,000,000 x 8 by default), above the RSS before the fit.

    python scripts/bench_roofline.py --mode em --threads 2
    python scripts/bench_roofline.py --mode em-memory --em-n 50000000 --em-d 8
"""

from __future__ import annotations

import argparse
import json
import os
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


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def em_main(args: argparse.Namespace) -> None:
    """One EM iteration versus a traffic-only kernel of the same bytes (see the docstring)."""
    from torchgmm import mixture as gm

    device, dtype = torch.device(args.device), getattr(torch, args.em_dtype)
    n, d, k, ct = args.em_n, args.em_d, args.em_k, "full"
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (1, n, 1), generator=g)
    x = (torch.randn(1, n, d, generator=g) + labels * 6.0).to(device=device, dtype=dtype)
    x = x - x.mean(1, keepdim=True)
    features = gm._quadratic_features(x, ct)
    weights = torch.full((1, k), 1.0 / k, device=device, dtype=dtype)
    means = x[:, :k].clone()
    prec = torch.eye(d, device=device, dtype=dtype).expand(1, k, d, d).contiguous()
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    fused = torch.compile(gm._unrolled_statistics, fullgraph=True, dynamic=False, options=options)
    traffic_kernel = torch.compile(lambda f: (f + 1.0).sum(-1), fullgraph=True, dynamic=False, options=options)

    def iteration(statistics):  # noqa: ANN001, ANN202
        coefficients, constant = gm._log_prob_coefficients(means, prec, ct)
        stats = statistics(features, None, coefficients, constant + weights.log())
        _, _, cov = gm._params_from_statistics(stats, ct, 1e-6, d)
        return gm.precisions_cholesky_from_covariances(cov, ct)[0], stats

    kernels = {
        "engine": lambda: iteration(gm._e_step_statistics),
        "compiled": lambda: iteration(fused),
        "traffic": lambda: traffic_kernel(features),
    }
    got, want = kernels["compiled"]()[1], kernels["engine"]()[1]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 * float(b.abs().max()))
    nbytes = features.numel() * features.element_size()
    rows = []
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    for threads in thread_counts:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        for fn in kernels.values():
            fn()
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(args.rounds):
            for name, fn in kernels.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(args.em_repeats):
                    fn()
                _sync(device)
                times[name].append((time.perf_counter() - start) / args.em_repeats * 1e3)
        median = {name: _median(v) for name, v in times.items()}
        rows.append(
            dict(
                threads=threads,
                **{f"{name}_ms": v for name, v in median.items()},
                engine_over_traffic=median["engine"] / median["traffic"],
                compiled_over_traffic=median["compiled"] / median["traffic"],
                traffic_gb_s=nbytes / (median["traffic"] * 1e-3) / 1e9,
                all_rounds_ms=times,
            )
        )
    print(
        f"EM iteration, N={n:,} D={d} K={k} {ct} {args.em_dtype} on {device.type}: reads {nbytes / 1e6:.1f} MB "
        f"of quadratic features; median of {args.rounds} interleaved rounds of {args.em_repeats}"
    )
    print("| threads | engine ms | compiled ms | traffic ms | engine / traffic | compiled / traffic | traffic GB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['engine_ms']:.2f} | {r['compiled_ms']:.2f} | {r['traffic_ms']:.2f} | "
            f"{r['engine_over_traffic']:.2f} | {r['compiled_over_traffic']:.2f} | {r['traffic_gb_s']:.1f} |"
        )
    meta = dict(
        mode="em",
        n=n,
        d=d,
        k=k,
        covariance_type=ct,
        dtype=args.em_dtype,
        bytes=nbytes,
        rounds=args.rounds,
        repeats=args.em_repeats,
        device=str(device),
        torch=torch.__version__,
        machine=platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    _write(args.json, dict(meta=meta, rows=rows))


def _rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux /proc: VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def em_memory_main(args: argparse.Namespace) -> None:
    """Peak RSS of a chunked fit of data generated chunk by chunk (never all in memory)."""
    from torchgmm.mixture import fit_gaussian_mixture

    torch.set_num_threads(args.threads[0])
    n, d, k, chunk = args.em_n, args.em_d, args.em_k, args.em_chunk

    def chunks():  # noqa: ANN202
        for start in range(0, n, chunk):
            g = torch.Generator().manual_seed(start)
            m = min(chunk, n - start)
            labels = torch.randint(0, k, (m, 1), generator=g)
            yield torch.randn(m, d, generator=g) + labels * 5.0

    # the peak (VmHWM) so far is the imports': reset it where the kernel allows (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _rss_bytes()
    start = time.perf_counter()
    fit = fit_gaussian_mixture(
        chunks,
        k,
        covariance_type="full",
        init_params="kmeans++",
        tol=0,
        max_iter=args.em_iters,
        generator=torch.Generator().manual_seed(0),
    )
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    chunk_bytes = chunk * d * 4
    row = dict(
        n=n,
        d=d,
        k=k,
        chunk=chunk,
        iters=int(fit.n_iter[0]),
        seconds=seconds,
        rss_before_mb=before / 2**20,
        peak_rss_mb=peak / 2**20,
        peak_above_before_mb=(peak - before) / 2**20,
        chunk_mb=chunk_bytes / 2**20,
        peak_above_before_minus_chunk_mb=(peak - before - chunk_bytes) / 2**20,
    )
    print(
        f"chunked fit of {n:,} x {d} float32 samples in chunks of {chunk:,} ({chunk_bytes / 2**20:.0f} MiB), "
        f"K={k} full, {row['iters']} iterations: {seconds:.1f} s"
    )
    print(
        f"RSS before {row['rss_before_mb']:.0f} MiB, peak {row['peak_rss_mb']:.0f} MiB: "
        f"{row['peak_above_before_mb']:.0f} MiB above, {row['peak_above_before_minus_chunk_mb']:.0f} MiB above "
        f"the chunk size"
    )
    _write(
        args.json, dict(meta=dict(mode="em-memory", torch=torch.__version__, machine=platform.machine()), rows=[row])
    )


def _write(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="background", choices=["background", "em", "em-memory"])
    parser.add_argument("--em-n", type=int, default=None, help="EM modes: samples (1e6 / 5e7 by default)")
    parser.add_argument("--em-d", type=int, default=None, help="EM modes: features (2 / 8 by default)")
    parser.add_argument("--em-k", type=int, default=5, help="EM modes: components")
    parser.add_argument("--em-dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--em-repeats", type=int, default=5, help="--mode em: iterations per round")
    parser.add_argument("--em-chunk", type=int, default=1_000_000, help="--mode em-memory: samples per chunk")
    parser.add_argument("--em-iters", type=int, default=3, help="--mode em-memory: EM iterations")
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
    if args.mode != "background":
        if args.json == "bench_out/bench_roofline.json":
            args.json = f"bench_out/bench_roofline_{args.mode.replace('-', '_')}.json"
        big = args.mode == "em-memory"
        args.em_n = args.em_n or (50_000_000 if big else 1_000_000)
        args.em_d = args.em_d or (8 if big else 2)
        (em_memory_main if big else em_main)(args)
        return
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
    settings = dict(
        background_ratio=scalar(0.7),
        match_sigma=scalar(2.5),
        init_var=scalar(100.0),
        min_var=scalar(36.0),
        init_weight=scalar(0.05),
        rho="inverse_weight",
    )
    seen = torch.zeros((), dtype=torch.int64, device=device)
    # learn the first frames eagerly (rate 1/t) so the timed state is a settled model
    for t in range(min(8, args.frames)):
        _, *state, seen = _step(frames[t], *state, seen, scalar(1.0 / (t + 1)), settings)
    rate = scalar(0.005)

    options = {"max_fusion_size": 4096}
    if device.type == "cpu":
        options["cpp_wrapper"] = True
    kernels = {
        name: torch.compile(fn, fullgraph=True, options=options)
        for name, fn in (("step", _step), ("traffic", _traffic), ("arithmetic", _chained))
    }

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
        row = dict(
            threads=threads,
            **{f"{n}_ms": median[n] for n in kernels},
            traffic_over_step=median["traffic"] / median["step"],
            arithmetic_over_step=median["arithmetic"] / median["step"],
            traffic_gb_s=bytes_per_pixel * pixels / (median["traffic"] * 1e-3) / 1e9,
            all_rounds_ms=times,
        )
        rows.append(row)

    print(
        f"{w}x{h} C={c} K={k} on {device.type}, {bytes_per_pixel} bytes/pixel, chain {args.chain}, "
        f"median of {args.rounds} interleaved rounds of {args.frames} frames"
    )
    print(
        "| threads | step ms | traffic ms | arithmetic ms/frame | traffic / step | arithmetic / step | traffic GB/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['step_ms']:.3f} | {r['traffic_ms']:.3f} | {r['arithmetic_ms']:.3f} | "
            f"{r['traffic_over_step']:.2f} | {r['arithmetic_over_step']:.2f} | {r['traffic_gb_s']:.1f} |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        size=[w, h],
        channels=c,
        components=k,
        chain=args.chain,
        frames=args.frames,
        rounds=args.rounds,
        device=str(device),
        bytes_per_pixel=bytes_per_pixel,
        torch=torch.__version__,
        machine=platform.machine(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

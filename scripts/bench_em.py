"""Benchmark batched EM against scikit-learn, side by side in one run.

Cases (issue 2):
  (a) one large problem, fixed iteration count, same data and init for both:
      N=1,000,000, D=2, K=5, full; N=100,000, D=32, K=16, full and diag.
      torchgmm in float32 and float64, scikit-learn in float64 (its usual precision).
  (b) 1,000 independent 1-D problems of 256 weighted bins (K=3): one batched call versus a
      Python loop of scikit-learn fits on the equivalent raw samples (scikit-learn has no
      sample weights), same init, same tol.
  (c) with --device cuda (or auto on a machine with a GPU): torchgmm on the GPU, same cases.
  (e) --compile: torchgmm also with compile=True (dtype "+c"), compiled in the warm-up fit.
  (d) pomegranate (1.x, the PyTorch mixture library) as an optional reference in case (a),
      on the CPU, in the same dtype as torchgmm's row, same init and iteration count; skipped
      when it is not installed. Its module-level import of ``apricot`` (used only by its
      submodular inits, not here) is stubbed when apricot is absent.

Prints a table and writes JSON. Example:
    python scripts/bench_em.py --threads 2 --json bench_out/bench_em.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from torchgmm.mixture import fit_gaussian_mixture


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (k, d))
    labels = rng.integers(0, k, n)
    scales = rng.uniform(0.5, 2.0, (k, d))
    return centres[labels] + rng.normal(size=(n, d)) * scales[labels]


def identity_precisions(covariance_type: str, k: int, d: int) -> np.ndarray:
    return np.stack([np.eye(d)] * k) if covariance_type == "full" else np.ones((k, d))


#: --compile: also time compile=True (set by main)
COMPILE = False


def _pomegranate():
    """pomegranate's GeneralMixtureModel and Normal, or None when it is not installed."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("pomegranate") is None:
        return None
    if "apricot" not in sys.modules and importlib.util.find_spec("apricot") is None:  # its inits only
        stub = types.ModuleType("apricot")
        stub.FacilityLocationSelection = stub.FeatureBasedSelection = None
        sys.modules["apricot"] = stub
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    return GeneralMixtureModel, Normal


def bench_pomegranate(x, weights, means, precisions, covariance_type, iters, dtype) -> tuple[float, float] | None:
    """Seconds and mean log-likelihood of pomegranate's fit from the same start, or None."""
    found = _pomegranate()
    if found is None or covariance_type not in ("full", "diag"):
        return None
    GeneralMixtureModel, Normal = found
    xt = torch.tensor(x, dtype=dtype)
    covs = np.linalg.inv(precisions) if covariance_type == "full" else 1.0 / precisions
    components = [
        Normal(
            means=torch.tensor(means[j], dtype=dtype),
            covs=torch.tensor(covs[j], dtype=dtype),
            covariance_type=covariance_type,
        )
        for j in range(len(means))
    ]
    model = GeneralMixtureModel(
        components, priors=torch.tensor(weights, dtype=dtype), max_iter=iters, tol=-float("inf")
    )  # never stops early: exactly `iters` iterations
    start = time.perf_counter()
    try:
        model.fit(xt)
    except ValueError as exc:  # e.g. "Variances must be positive." (its diag M-step has no floor)
        print(f"pomegranate failed on this case ({exc}); left out", file=sys.stderr)
        return None
    elapsed = time.perf_counter() - start
    return elapsed, float(torch.logsumexp(model._emission_matrix(xt), 1).mean())


def bench_large(n, d, k, covariance_type, iters, devices, run_sklearn, seed=0, run_pomegranate=True) -> list[dict]:
    x = make_blobs(n, d, k, seed)
    rng = np.random.default_rng(seed + 1)
    means = x[rng.choice(n, k, replace=False)]
    weights = np.full(k, 1.0 / k)
    precisions = identity_precisions(covariance_type, k, d)
    rows = []
    sk_time, sk_bound = None, None
    if run_sklearn:
        from sklearn.mixture import GaussianMixture

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            sk = GaussianMixture(
                k,
                covariance_type=covariance_type,
                tol=0,
                max_iter=iters,
                weights_init=weights,
                means_init=means,
                precisions_init=precisions,
            ).fit(x)
            sk_time = time.perf_counter() - start
        sk_bound = float(sk.lower_bound_)
    for device in devices:
        for dtype, compiled in [
            (t, c) for c in ((False, True) if COMPILE else (False,)) for t in (torch.float32, torch.float64)
        ]:
            xt = torch.tensor(x, dtype=dtype, device=device)
            kw = dict(
                compile=compiled,
                covariance_type=covariance_type,
                tol=0,
                max_iter=iters,
                weights_init=torch.tensor(weights, dtype=dtype, device=device),
                means_init=torch.tensor(means, dtype=dtype, device=device),
                precisions_init=torch.tensor(precisions, dtype=dtype, device=device),
            )
            fit_gaussian_mixture(xt, k, **{**kw, "max_iter": 2})  # warm-up (allocator, kernels)
            _sync(device)
            start = time.perf_counter()
            fit = fit_gaussian_mixture(xt, k, **kw)
            _sync(device)
            elapsed = time.perf_counter() - start
            bound = float(fit.lower_bound[0])
            pg = None
            if run_pomegranate and device.type == "cpu" and not compiled:
                pg = bench_pomegranate(x, weights, means, precisions, covariance_type, iters, dtype)
            rows.append(
                dict(
                    case=f"N={n:,} D={d} K={k} {covariance_type}",
                    iters=iters,
                    device=str(device),
                    dtype=str(dtype).replace("torch.", "") + ("+c" if compiled else ""),
                    torchgmm_s=elapsed,
                    sklearn_s=sk_time,
                    ratio=None if sk_time is None else elapsed / sk_time,
                    lower_bound=bound,
                    sklearn_lower_bound=sk_bound,
                    bound_rel_diff=None if sk_bound is None else abs(bound - sk_bound) / abs(sk_bound),
                    pomegranate_s=None if pg is None else pg[0],
                    over_pomegranate=None if pg is None else elapsed / pg[0],
                    pomegranate_mean_log_likelihood=None if pg is None else pg[1],
                )
            )
    return rows


def bench_histograms(n_problems, pixels, k, devices, run_sklearn, seed=0) -> list[dict]:
    """Many 1-D problems given as 256-bin histograms (weights = counts)."""
    rng = np.random.default_rng(seed)
    centres = np.sort(rng.uniform(20, 235, (n_problems, k)), axis=1)
    labels = rng.integers(0, k, (n_problems, pixels))
    values = np.take_along_axis(centres, labels, 1) + rng.normal(0, 12, (n_problems, pixels))
    values = np.clip(np.round(values), 0, 255).astype(np.int64)
    counts = np.stack([np.bincount(v, minlength=256) for v in values]).astype(np.float64)
    bins = np.arange(256, dtype=np.float64)
    # Shared init for both sides: the range split computed once by torchgmm (0 iterations).
    init = fit_gaussian_mixture(
        torch.tensor(bins)[None, :, None].expand(n_problems, 256, 1),
        k,
        sample_weight=torch.tensor(counts),
        init_params="range",
        max_iter=0,
    )
    tol, max_iter = 1e-3, 100
    rows = []
    sk_time, sk_means = None, None
    if run_sklearn:
        from sklearn.mixture import GaussianMixture

        sk_means = np.empty((n_problems, k))
        sk_weights = np.empty((n_problems, k))
        start = time.perf_counter()
        for i in range(n_problems):
            raw = np.repeat(bins, counts[i].astype(np.int64))[:, None]
            sk = GaussianMixture(
                k,
                tol=tol,
                max_iter=max_iter,
                weights_init=init.weights[i].numpy(),
                means_init=init.means[i].numpy(),
                precisions_init=torch.linalg.inv(init.covariances[i]).numpy(),
            ).fit(raw)
            sk_means[i] = sk.means_[:, 0]
            sk_weights[i] = sk.weights_
        sk_time = time.perf_counter() - start
    for device in devices:
        x = torch.tensor(bins, device=device)[None, :, None].expand(n_problems, 256, 1)
        w = torch.tensor(counts, device=device)
        kw = dict(
            sample_weight=w,
            tol=tol,
            max_iter=max_iter,
            weights_init=init.weights.to(device),
            means_init=init.means.to(device),
            precisions_init=torch.linalg.inv(init.covariances).to(device),
        )
        fit_gaussian_mixture(x, k, **kw)  # warm-up
        _sync(device)
        start = time.perf_counter()
        fit = fit_gaussian_mixture(x, k, **kw)
        _sync(device)
        elapsed = time.perf_counter() - start
        max_diff = None
        if sk_means is not None:
            # An empty component (an init interval with no counts) has weight ~1e-15 and an
            # arbitrary mean in both libraries: compare the components that hold mass.
            held = sk_weights > 1e-9
            max_diff = float(np.abs(fit.means[..., 0].cpu().numpy() - sk_means)[held].max())
        rows.append(
            dict(
                case=f"{n_problems:,} x 1-D, 256 bins, K={k}",
                iters=f"tol={tol}",
                device=str(device),
                dtype="float64",
                torchgmm_s=elapsed,
                sklearn_s=sk_time,
                ratio=None if sk_time is None else elapsed / sk_time,
                speedup=None if sk_time is None else sk_time / elapsed,
                max_abs_mean_diff=max_diff,
            )
        )
    return rows


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':34} {'device':6} {'dtype':8} {'iters':>9} {'torchgmm s':>11} {'sklearn s':>10} {'ratio':>8} "
        f"{'check':>10} {'pomegr. s':>10} {'/ pomegr.':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        sk = "-" if r["sklearn_s"] is None else f"{r['sklearn_s']:.3f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.4f}"
        check = r.get("bound_rel_diff", r.get("max_abs_mean_diff"))
        check = "-" if check is None else f"{check:.1e}"
        print(
            f"{r['case']:34} {r['device'][:6]:6} {r['dtype']:8} {str(r['iters']):>9} "
            f"{r['torchgmm_s']:11.3f} {sk:>10} {ratio:>8} {check:>10} "
            f"{'-' if r.get('pomegranate_s') is None else format(r['pomegranate_s'], '.3f'):>10} "
            f"{'-' if r.get('over_pomegranate') is None else format(r['over_pomegranate'], '.3f'):>9}"
        )
    print(
        "ratio = torchgmm time / scikit-learn time (lower is better); check = relative "
        "lower-bound difference (large cases) or max |mean difference| (histograms); "
        "/ pomegr. = torchgmm time / pomegranate time, same dtype, init and iterations."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both libraries")
    parser.add_argument("--iters", type=int, default=100, help="fixed EM iterations for case (a)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda; auto adds cuda when present")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-sklearn", action="store_true", help="time torchgmm only")
    parser.add_argument("--no-pomegranate", action="store_true", help="skip pomegranate even if installed")
    parser.add_argument("--first-case", action="store_true", help="only N=1,000,000 D=2 K=5 full")
    parser.add_argument("--compile", action="store_true", help="also torchgmm with compile=True (dtype +c)")
    parser.add_argument("--json", default="bench_out/bench_em.json")
    args = parser.parse_args()
    global COMPILE
    COMPILE = args.compile

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    devices = [torch.device("cpu")]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    if args.device == "cuda":
        devices = [torch.device("cuda")]
    scale = 10 if args.quick else 1
    run_sklearn = not args.no_sklearn
    rows: list[dict] = []
    with threadpool_limits(limits=args.threads):
        pg = not args.no_pomegranate
        rows += bench_large(1_000_000 // scale, 2, 5, "full", args.iters, devices, run_sklearn, run_pomegranate=pg)
        if not args.first_case:
            rows += bench_large(
                100_000 // scale, 32, 16, "full", args.iters // 5, devices, run_sklearn, run_pomegranate=pg
            )
            rows += bench_large(
                100_000 // scale, 32, 16, "diag", args.iters // 5, devices, run_sklearn, run_pomegranate=pg
            )
            rows += bench_histograms(1000 // scale, 4096, 3, devices, run_sklearn)
    print_table(rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        threads=args.threads,
        torch=torch.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

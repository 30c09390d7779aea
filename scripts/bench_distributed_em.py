"""Weak scaling of distributed EM: P ranks x 1,000,000 samples versus one rank x 1,000,000.

Each rank (one thread, gloo on CPU, or NCCL with --device cuda) generates its own shard of
``--n`` samples (D=2, K=5 well separated blobs, float32 by default), then fits it with
``fit_gaussian_mixture(..., process_group=WORLD)``: full covariances, ``--iters`` EM
iterations (tol=0), the same explicit starting parameters on every rank, so every run does
the same work per rank. The fit is timed on each rank after a barrier; the slowest rank's
time counts. Ideal weak scaling keeps the time constant as P grows (ratio 1.0).

Run without torchrun, it is the driver: it starts ``torchrun --nproc_per_node P`` for each P
of ``--procs``, ``--repeats`` times interleaved, prints a table and writes JSON:

    python scripts/bench_distributed_em.py --procs 1 2 --json bench_out/bench_distributed_em.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from torchgmm.mixture import fit_gaussian_mixture

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    k, d = 5, 2
    g = torch.Generator().manual_seed(1000 + rank)
    centres = torch.arange(k, dtype=torch.float64)[:, None] * torch.tensor([6.0, -4.0], dtype=torch.float64)
    labels = torch.randint(0, k, (args.samples_per_rank,), generator=g)
    x = (centres[labels] + torch.randn(args.samples_per_rank, d, generator=g, dtype=torch.float64)).to(dtype).to(device)
    init = dict(
        weights_init=torch.full((k,), 1.0 / k, dtype=dtype),
        means_init=(centres + 0.5).to(dtype),
        precisions_init=torch.eye(d, dtype=dtype).expand(k, d, d).clone(),
    )
    kw = dict(covariance_type="full", tol=0, **{name: v.to(device) for name, v in init.items()})
    fit_gaussian_mixture(x, k, max_iter=2, process_group=dist.group.WORLD, **kw)  # warm-up
    times = []
    for _ in range(args.rounds):
        dist.barrier()
        start = time.perf_counter()
        fit = fit_gaussian_mixture(x, k, max_iter=args.iters, process_group=dist.group.WORLD, **kw)
        float(fit.lower_bound[0])  # waits for the device
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank
        times.append(float(elapsed))
    if rank == 0:
        Path(args.result_file).write_text(json.dumps(dict(world=world, times=times, n_iter=int(fit.n_iter[0]))))
    dist.destroy_process_group()


def _run(procs: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={procs}",
            "--master_port",
            str(29500 + procs),
            __file__,
            "--worker",
            "--result-file",
            str(out),
            "--samples-per-rank",
            str(args.samples_per_rank),
            "--iters",
            str(args.iters),
            "--rounds",
            str(args.rounds),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--samples-per-rank", type=int, default=1_000_000, help="samples per rank")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="timed fits per launch; the median counts")
    parser.add_argument("--repeats", type=int, default=2, help="launches per P, interleaved")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", default="bench_out/bench_distributed_em.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    runs: dict[int, list[float]] = {p: [] for p in args.procs}
    for _ in range(args.repeats):
        for p in args.procs:
            runs[p].extend(_run(p, args)["times"])
    median = {p: sorted(v)[len(v) // 2] for p, v in runs.items()}
    base = median[min(args.procs)]
    rows = [
        dict(
            procs=p,
            samples=p * args.samples_per_rank,
            seconds=median[p],
            per_iter_ms=median[p] / args.iters * 1e3,
            weak_scaling_ratio=median[p] / base,
            all_seconds=runs[p],
        )
        for p in args.procs
    ]
    print(
        f"weak scaling: {args.samples_per_rank:,} samples per rank, D=2, K=5, full, {args.iters} iterations, "
        f"{args.dtype}, {args.device}, one thread per rank; median of {len(runs[args.procs[0]])} fits"
    )
    print("| ranks | samples | fit s | ms / iteration | time / time on 1 rank |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['procs']} | {r['samples']:,} | {r['seconds']:.3f} | {r['per_iter_ms']:.2f} | "
            f"{r['weak_scaling_ratio']:.3f} |"
        )
    import torch

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        n_per_rank=args.samples_per_rank,
        iters=args.iters,
        dtype=args.dtype,
        device=args.device,
        torch=torch.__version__,
        machine=platform.machine(),
        cpus=os.cpu_count(),
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

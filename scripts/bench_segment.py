"""Benchmark histogram-EM segmentation: end to end on files, and in memory against scikit-learn.

1. End to end: ``--n`` synthetic 1024 x 1024 grey PNGs written to a temporary folder, then
   :func:`torchgmm.jobs.segment.segment_files` (decode, segment, write two PNGs + JSONL).
   Reported: images/s and the share of the time in decoding, segmentation and writing,
   measured sequentially (``workers=0, write_threads=0``: the three add up to the wall
   time), then images/s of the overlapped pipeline (``--workers`` decoding processes, two
   PNG writer threads), where segmentation's share is of a shorter wall time and competes
   with the writers for the same cores.
2. In memory: a ``(64, 1, 1024, 1024)`` uint8 batch through
   :class:`~torchgmm.segmentation.HistogramSegmenter` versus scikit-learn's
   ``GaussianMixture`` fitted per image on the same pixels with the same init and tol (then
   ``predict``). scikit-learn runs on ``--sk-images`` images and is extrapolated to 64.

Targets: segmentation < 10 % of the end-to-end time; in memory >= 50x scikit-learn.
Usage: ``python scripts/bench_segment.py [--n 200] [--device auto] [--json bench_out/bench_segment.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from torchgmm.io.images import write_png  # noqa: E402
from torchgmm.segmentation import (  # noqa: E402
    HistogramSegmenter,
    image_histograms,
    range_init,
    to_grey_uint8,
)


def synthetic_images(n: int, size: int = 1024, seed: int = 0) -> torch.Tensor:
    """``(n, 1, size, size)`` uint8: three smooth regions (grey 50/130/210) plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 8, 8, generator=g)
    field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    cls = (field * 3).clamp(0, 2.999).floor()
    x = 50 + 80 * cls + 15 * torch.randn(n, 1, size, size, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_files(n: int, k: int, device: str, batch_size: int, workers: int) -> dict:
    from torchgmm.jobs.segment import segment_files

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        t0 = time.perf_counter()
        for i in range(0, n, 16):
            imgs = synthetic_images(min(16, n - i), seed=i)
            for j, img in enumerate(imgs):
                write_png(src / f"img_{i + j:05d}.png", img, compression_level=1)
        gen_s = time.perf_counter() - t0
        # sequential: decode, segment, write one after the other in this thread, so the
        # three times add up to the wall time; then the default overlapped pipeline
        s0 = segment_files(
            [src],
            Path(tmp) / "out0",
            k,
            device=device,
            batch_size=batch_size,
            workers=0,
            write_threads=0,
            progress=False,
        )
        s1 = segment_files(
            [src],
            Path(tmp) / "out1",
            k,
            device=device,
            batch_size=batch_size,
            workers=workers,
            write_threads=2,
            progress=False,
        )
    assert s0.n_done == n and s1.n_done == n and not s0.failed
    return {
        "n_images": n,
        "generate_s": gen_s,
        "sequential": {
            "wall_s": s0.wall_s,
            "images_per_s": n / s0.wall_s,
            "decode_s": s0.wait_s,
            "segment_s": s0.segment_s,
            "write_s": s0.write_s,
            "decode_share": s0.wait_s / s0.wall_s,
            "segment_share": s0.segment_s / s0.wall_s,
            "write_share": s0.write_s / s0.wall_s,
        },
        "overlapped": {
            "workers": workers,
            "write_threads": 2,
            "wall_s": s1.wall_s,
            "images_per_s": n / s1.wall_s,
            "segment_s": s1.segment_s,
            "segment_share": s1.segment_s / s1.wall_s,
            "waiting_for_writes_share": s1.write_s / s1.wall_s,
            "waiting_for_decode_share": s1.wait_s / s1.wall_s,
        },
    }


def bench_memory(b: int, k: int, device: torch.device, sk_images: int, repeats: int = 3) -> dict:
    from sklearn.mixture import GaussianMixture as SkGM

    images = synthetic_images(b, seed=1)
    seg = HistogramSegmenter(k)
    dev_images = images.to(device)
    seg(dev_images[:2])  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        labels = seg(dev_images)
        sync(device)
        times.append(time.perf_counter() - t0)
    ours = min(times)
    # scikit-learn on the same pixels, same equal-interval init and tol, then predict
    hist = image_histograms(images)
    w0, mu0, var0 = range_init(hist, k)
    sk_times, agree = [], []
    for i in range(sk_images):
        x = images[i].flatten().double().numpy()[:, None]
        gm = SkGM(
            k,
            tol=1e-3,
            max_iter=100,
            reg_covar=1e-6,
            weights_init=w0[i].numpy(),
            means_init=mu0[i].numpy()[:, None],
            precisions_init=(1 / var0[i].numpy()).reshape(k, 1, 1),
        )
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = gm.fit(x).predict(x)
        sk_times.append(time.perf_counter() - t0)
        order = gm.means_[:, 0].argsort().argsort()
        agree.append(float((order[pred] == labels[i].flatten().cpu().numpy()).mean()))
    sk_per_image = sum(sk_times) / len(sk_times)
    sk_total = sk_per_image * b
    return {
        "batch_shape": list(images.shape),
        "device": str(device),
        "torchgmm_s": ours,
        "torchgmm_images_per_s": b / ours,
        "sklearn_images_timed": sk_images,
        "sklearn_s_per_image": sk_per_image,
        "sklearn_s_extrapolated": sk_total,
        "speedup": sk_total / ours,
        "label_agreement_with_sklearn": min(agree),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images for the end-to-end run (default: 200)")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--batch", type=int, default=64, help="in-memory batch size (default: 64)")
    p.add_argument("--batch-size", type=int, default=16, help="end-to-end batch size (default: 16)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sk-images", type=int, default=4, help="images fitted by scikit-learn (default: 4)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default="bench_out/bench_segment.json")
    args = p.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    res = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "classes": args.classes,
    }
    res["memory"] = mem = bench_memory(args.batch, args.classes, device, args.sk_images)
    res["files"] = files = bench_files(args.n, args.classes, str(device), args.batch_size, args.workers)
    w0, w1 = files["sequential"], files["overlapped"]
    rows = [
        ("device", res["device"]),
        (f"end to end, {args.n} x 1024^2 PNG, sequential", f"{w0['images_per_s']:.1f} images/s"),
        (
            "  share decode / segment / write",
            f"{w0['decode_share']:.0%} / {w0['segment_share']:.1%} / {w0['write_share']:.0%}  (target segment < 10%)",
        ),
        (
            f"end to end, overlapped (workers={args.workers}, 2 write threads)",
            f"{w1['images_per_s']:.1f} images/s, segment {w1['segment_share']:.1%} of wall",
        ),
        (
            f"in memory {tuple(mem['batch_shape'])}",
            f"{mem['torchgmm_s']:.3f} s ({mem['torchgmm_images_per_s']:.0f} images/s)",
        ),
        (
            f"scikit-learn per image (timed {mem['sklearn_images_timed']}, extrapolated to {args.batch})",
            f"{mem['sklearn_s_per_image']:.3f} s/image -> {mem['sklearn_s_extrapolated']:.1f} s",
        ),
        ("speedup", f"{mem['speedup']:.0f}x  (target >= 50x)"),
        ("label agreement with scikit-learn (worst image)", f"{mem['label_agreement_with_sklearn']:.5f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

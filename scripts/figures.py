"""Save the notebooks' figures as PNGs (the same :mod:`torchgmm.demo` functions).

Usage: ``python scripts/figures.py [--out figures] [--classes 3]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from torchgmm import demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument("--classes", type=int, default=3, help="classes for the cameraman (default: 3)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = demo.load_cameraman()
    k = args.classes
    figures = {
        "cameraman_initial_split.png": lambda: demo.figure_initial_split(image, k),
        "cameraman_first_iteration.png": lambda: demo.figure_first_iteration(image, k),
        "cameraman_em_evolution.png": lambda: demo.figure_em_evolution(image, k),
        "cameraman_segmentation.png": lambda: demo.figure_segmentation(image, k),
        "synthetic_1d.png": demo.figure_clustering_1d,
        "synthetic_2d.png": demo.figure_clustering_2d,
    }
    for name, make in figures.items():
        make().savefig(out / name, dpi=100)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the example notebooks (without outputs) with nbformat.

Run from the repository root: ``python scripts/make_notebooks.py``. The figures come from
:mod:`torchgmm.demo`, the same functions ``scripts/figures.py`` saves as PNGs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def cameraman() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Histogram EM on the cameraman\n\n"
            "A grey image's 256-bin histogram is the data: EM runs on the grey levels 0..255 "
            "weighted by their pixel counts, which equals EM on every pixel at a cost "
            "independent of the image size. Each pixel then takes the most probable class of "
            "its grey level (a 256-entry lookup table)."
        ),
        new_code_cell(
            "%matplotlib inline\n"
            "import torch\n"
            "from torchgmm import demo\n"
            "from torchgmm.segmentation import image_histograms, fit_histogram_mixture, range_init\n\n"
            "image = demo.load_cameraman()  # (1, 1, 512, 512) uint8\n"
            "K = 3\n"
            "hist = image_histograms(image)\n"
            "hist.shape, int(hist.sum())"
        ),
        new_markdown_cell(
            "## Initial split\n\nCut the grey range into K equal intervals; each interval's "
            "pixel share, mean and variance start one Gaussian."
        ),
        new_code_cell("demo.figure_initial_split(image, K)"),
        new_markdown_cell("## After the first EM iteration"),
        new_code_cell("demo.figure_first_iteration(image, K)"),
        new_markdown_cell("## Evolution over the iterations"),
        new_code_cell("demo.figure_em_evolution(image, K, n_iter=30)"),
        new_markdown_cell("## Final segmentation (EM until the log-likelihood changes by < 1e-3)"),
        new_code_cell(
            "fit = fit_histogram_mixture(hist, K)\n"
            "print('means', fit.means[0, :, 0].tolist())\n"
            "print('weights', fit.weights[0].tolist())\n"
            "print('iterations', int(fit.n_iter[0]))\n"
            "demo.figure_segmentation(image, K)"
        ),
        new_markdown_cell("The same as a module, on a batch (here two copies):"),
        new_code_cell(
            "from torchgmm.segmentation import HistogramSegmenter\n"
            "seg = HistogramSegmenter(n_classes=K)\n"
            "labels = seg(image.expand(2, -1, -1, -1))\n"
            "labels.shape, seg.means_[:, :, 0]"
        ),
    ])


def synthetic() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Clustering synthetic mixtures with `GaussianMixture`\n\n"
            "Samples from known mixtures, fitted by EM; points coloured by their fitted label, "
            "fitted Gaussians (1-D) and one/two-sigma covariance ellipses (2-D)."
        ),
        new_code_cell(
            "%matplotlib inline\n"
            "import torch\n"
            "from torchgmm import demo\n"
            "from torchgmm.mixture import GaussianMixture"
        ),
        new_markdown_cell("## 1-D"),
        new_code_cell("demo.figure_clustering_1d(seed=0)"),
        new_markdown_cell("## 2-D, full covariances"),
        new_code_cell("demo.figure_clustering_2d(seed=0)"),
        new_markdown_cell("The fitted parameters directly:"),
        new_code_cell(
            "x, truth = demo.synthetic_mixture(1000, [[0.0, 0.0], [4.0, 4.0]], [1.0, 0.5], [0.5, 0.5])\n"
            "gm = GaussianMixture(2, random_state=0).fit(x)\n"
            "gm.weights_, gm.means_, bool(gm.converged_)"
        ),
    ])


def main() -> None:
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, build in (("01_cameraman_em.ipynb", cameraman), ("02_synthetic_clustering.ipynb", synthetic)):
        nb = build()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.validate(nb)
        nbformat.write(nb, NOTEBOOKS / name)
        print(NOTEBOOKS / name)


if __name__ == "__main__":
    main()

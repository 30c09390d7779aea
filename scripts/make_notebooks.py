"""Write the example notebooks (without outputs) with nbformat.

Run ``python scripts/make_notebooks.py`` to rewrite them, ``--check`` to only report notebooks
that differ from what this script writes (exit 1; the test suite runs it). Cell ids are
numbered, so rewriting unchanged notebooks changes nothing. The figures come from
:mod:`torchgmm.demo`, the same functions ``scripts/figures.py`` saves as PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def cameraman() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
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
        ]
    )


def synthetic() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
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
        ]
    )


def background() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Adaptive background model (Stauffer-Grimson) on a synthetic clip\n\n"
                "Every pixel keeps K Gaussians. A frame's value matches the first component (in "
                "`w / sigma` order) within 2.5 sigma per channel (`|x - mu|^2 < 2.5^2 C sigma^2`); "
                "the weights move by the learning rate alpha "
                "towards that match, the matched component's mean and variance follow the pixel, "
                "and an unmatched value replaces the least probable component. The background is "
                "the leading components whose weights add up to T; everything else is foreground. "
                "The clip has a known moving square, so the masks can be scored exactly."
            ),
            new_code_cell(
                "%matplotlib inline\n"
                "import matplotlib.pyplot as plt\n"
                "import torch\n"
                "from torchgmm import BackgroundSubtractorMOG\n"
                "from torchgmm.demo import synthetic_clip\n\n"
                "frames, truth, clean = synthetic_clip(120, 96, 128, enter=8, noise=4.0, seed=0)\n"
                "frames.shape, frames.dtype  # (T, C, H, W) uint8"
            ),
            new_markdown_cell(
                "## Learn the clip frame by frame\n\n"
                "`compile=False` runs the update eagerly (no compile time, fine for a small clip); "
                "leave the default on for long or large videos: `torch.compile` fuses the whole "
                "update into one pass over the state."
            ),
            new_code_cell(
                "model = BackgroundSubtractorMOG(n_components=3, learning_rate=0.01, compile=False)\n"
                "masks = model.process(frames)  # (T, 1, H, W) bool, True = foreground\n"
                "scored = slice(10, None)  # the first frames with the square are still being learned\n"
                "tp = (masks[scored] & truth[scored]).sum().item()\n"
                "recall = tp / truth[scored].sum().item()\n"
                "precision = tp / masks[scored].sum().item()\n"
                "print(f'recall {recall:.3f}, precision {precision:.3f}')"
            ),
            new_code_cell(
                "t = 60\n"
                "panels = [(frames[t].permute(1, 2, 0), f'frame {t}'), (masks[t, 0], 'foreground mask'),\n"
                "          (truth[t, 0], 'true foreground'), (model.background_image()[0].permute(1, 2, 0), 'learned background')]\n"
                "fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))\n"
                "for ax, (img, title) in zip(axes, panels):\n"
                "    ax.imshow(img, cmap='gray')\n"
                "    ax.set_title(title)\n"
                "    ax.axis('off')"
            ),
            new_markdown_cell(
                "## State in buffers, batches of streams\n\n"
                "The mixture lives in buffers shaped `(B, K, ...)`: `state_dict()` saves it and "
                "`.to('cuda')` moves it. Several streams of the same size run as one batch, with "
                "the same masks as separate runs."
            ),
            new_code_cell("{name: tuple(value.shape) for name, value in model.state_dict().items()}"),
            new_code_cell(
                "other, _, _ = synthetic_clip(120, 96, 128, enter=8, noise=4.0, seed=1)\n"
                "both = BackgroundSubtractorMOG(learning_rate=0.01, compile=False)\n"
                "batched = torch.stack([both(torch.stack([a, b])) for a, b in zip(frames, other)])  # (T, 2, 1, H, W)\n"
                "alone = BackgroundSubtractorMOG(learning_rate=0.01, compile=False).process(other)\n"
                "torch.equal(batched[:, 0], masks), torch.equal(batched[:, 1], alone)"
            ),
            new_markdown_cell(
                "## Cleaning the masks\n\n"
                "`torchgmm.postprocess` has the clean-ups practitioners use, as batched tensor ops "
                "on the masks' device: a median (majority) filter, a morphological opening, and "
                "small-blob removal by 8-connected components (`torchgmm background --median 5 "
                "--min-area 20` applies them to the masks it writes; the model learns as before)."
            ),
            new_code_cell(
                "from torchgmm.postprocess import connected_component_labels, median_filter_mask, remove_small_blobs\n\n"
                "noisy, noisy_truth, _ = synthetic_clip(120, 96, 128, enter=8, noise=8.0, seed=0)  # twice the noise\n"
                "raw = BackgroundSubtractorMOG(n_components=3, learning_rate=0.01, compile=False).process(noisy)\n\n\n"
                "def recall_precision(m):\n"
                "    tp = (m[scored] & noisy_truth[scored]).sum().item()\n"
                "    return round(tp / noisy_truth[scored].sum().item(), 3), round(tp / m[scored].sum().item(), 3)\n\n\n"
                "for name, m in [('raw', raw), ('small blobs removed', remove_small_blobs(raw, 20)),\n"
                "                ('3x3 median', median_filter_mask(raw, 3))]:\n"
                "    components = len(connected_component_labels(m[60:61]).unique()) - 1\n"
                "    print(f'{name:20s} recall, precision {recall_precision(m)}; components in frame 60: {components}')"
            ),
            new_markdown_cell(
                "Removing blobs under 20 pixels drops the noise specks and keeps the square whole; "
                "the median drops them too but also rounds the square's corners (lower recall)."
            ),
            new_markdown_cell(
                "For video files, `torchgmm background VIDEO --out DIR` decodes with PyAV, runs the "
                "model and writes the mask video, the background image and a summary; "
                "`torchgmm evaluate` scores CDnet sequences (see the README)."
            ),
        ]
    )


BUILDERS = {
    "01_cameraman_em.ipynb": cameraman,
    "02_synthetic_clustering.ipynb": synthetic,
    "03_background_model.ipynb": background,
}


def build_text(name: str) -> str:
    """The notebook ``name`` as this script writes it."""
    nb = BUILDERS[name]()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:02d}"  # nbformat's default ids are random: every rewrite would differ
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list the notebooks that differ from this script's, exit 1 if any",
    )
    args = p.parse_args(argv)
    stale = []
    for name in BUILDERS:
        path, text = NOTEBOOKS / name, build_text(name)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        NOTEBOOKS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    for path in stale:
        print(f"{path} differs from scripts/make_notebooks.py; run it to rewrite the notebook", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

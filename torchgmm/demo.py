"""The demo (cameraman segmentation, a generated video clip) and the shared figures.

The figures are shared by the notebooks and ``scripts/figures.py``.

Every ``figure_*`` function returns a :class:`matplotlib.figure.Figure` built without
pyplot (no global state, any backend); notebooks display it, scripts save it. Matplotlib is
imported lazily, so ``import torchgmm.demo`` stays cheap.

Example:
    >>> from torchgmm.demo import run_demo
    >>> run_demo("torchgmm-demo", n_classes=3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from torchgmm.segmentation import (
    N_LEVELS,
    fit_histogram_mixture,
    image_histograms,
    label_lut,
    apply_lut,
    palette,
    range_init,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CAMERAMAN",
    "load_cameraman",
    "em_trajectory",
    "synthetic_mixture",
    "plot_histogram_fit",
    "plot_covariance_ellipses",
    "figure_initial_split",
    "figure_first_iteration",
    "figure_em_evolution",
    "figure_segmentation",
    "figure_clustering_1d",
    "figure_clustering_2d",
    "synthetic_clip",
    "figure_background_summary",
    "run_background_demo",
    "run_demo",
]

#: the bundled 512 x 512 grey test image
CAMERAMAN = Path(__file__).resolve().parent / "data" / "cameraman.png"


def _colours(k: int) -> list[tuple[float, float, float]]:
    return [tuple(c / 255 for c in rgb) for rgb in palette(k).tolist()]


def load_cameraman() -> Tensor:
    """The bundled cameraman image as a ``(1, 1, 512, 512)`` uint8 tensor."""
    from torchgmm.io.images import decode_image_file

    return decode_image_file(CAMERAMAN).unsqueeze(0)


def em_trajectory(hist: Tensor, n_classes: int, n_iter: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The mixture after 0 (the equal-interval init), 1, ..., ``n_iter`` EM iterations.

    Args:
        hist: ``(256,)`` or ``(1, 256)`` grey-level counts of one image.
        n_classes: K.
        n_iter: last iteration to record.

    Returns:
        ``n_iter + 1`` tuples ``(weights, means, variances)``, each ``(K,)`` float64.
    """
    w, mu, var = range_init(hist, n_classes)
    out = [(w[0], mu[0], var[0])]
    for i in range(1, n_iter + 1):
        fit = fit_histogram_mixture(hist, n_classes, tol=0.0, max_iter=i)
        out.append((fit.weights[0], fit.means[0, :, 0], fit.covariances[0, :, 0, 0]))
    return out


def synthetic_mixture(n: int, means: list, scales: list, weights: list, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Samples of a Gaussian mixture with isotropic or full components, and their true labels.

    Args:
        n: number of samples N.
        means: K means, each a float (1-D) or a list of D floats.
        scales: K standard deviations (floats) or ``(D, D)`` covariance factors ``A``
            (samples are ``mean + A @ z``).
        weights: K mixing weights.
        seed: random seed.

    Returns:
        ``(x, labels)`` with shapes ``(N, D)`` and ``(N,)``.
    """
    g = torch.Generator().manual_seed(seed)
    mu = torch.as_tensor(means, dtype=torch.float64).reshape(len(means), -1)
    labels = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), n, True, generator=g)
    z = torch.randn(n, mu.shape[1], generator=g, dtype=torch.float64)
    a = torch.stack(
        [
            torch.as_tensor(s, dtype=torch.float64) * torch.eye(mu.shape[1], dtype=torch.float64)
            if torch.as_tensor(s).ndim == 0
            else torch.as_tensor(s, dtype=torch.float64)
            for s in scales
        ]
    )
    x = mu[labels] + torch.einsum("nde,ne->nd", a[labels], z)
    return x, labels


# --- plotting primitives -----------------------------------------------------------------
def plot_histogram_fit(
    ax: Axes,
    hist: Tensor,
    weights: Tensor | None = None,
    means: Tensor | None = None,
    variances: Tensor | None = None,
    *,
    title: str | None = None,
    bar_colours: Tensor | None = None,
) -> None:
    """Normalised grey-level histogram with the weighted Gaussians and their sum.

    Args:
        ax: matplotlib axes.
        hist: ``(L,)`` counts.
        weights, means, variances: ``(K,)`` mixture to overlay (optional).
        title: axes title.
        bar_colours: ``(L,)`` class index per bin to colour the bars (optional).
    """
    h = hist.double().flatten().cpu()
    density = (h / h.sum()).numpy()
    v = torch.arange(h.numel(), dtype=torch.float64)
    if bar_colours is None:
        ax.bar(v.numpy(), density, width=1.0, color="0.7", label="histogram")
    else:
        cols = _colours(int(bar_colours.max()) + 1)
        ax.bar(v.numpy(), density, width=1.0, color=[cols[int(c)] for c in bar_colours], alpha=0.6)
    if means is not None:
        k = means.numel()
        cols = _colours(k)
        grid = torch.linspace(0, h.numel() - 1, 512, dtype=torch.float64)
        total = torch.zeros_like(grid)
        for j in range(k):
            w, m, s2 = float(weights[j]), float(means[j]), float(variances[j])
            # w_k N(v | mu_k, sigma_k^2)
            pdf = w * torch.exp(-0.5 * (grid - m) ** 2 / s2) / math.sqrt(2 * math.pi * s2)
            total += pdf
            ax.plot(grid.numpy(), pdf.numpy(), color=cols[j], lw=1.5, label=f"class {j}: mu={m:.0f}")
        ax.plot(grid.numpy(), total.numpy(), color="k", lw=1, ls="--", label="mixture")
        ax.legend(fontsize=7)
    ax.set_xlim(0, h.numel() - 1)
    ax.set_xlabel("grey level")
    ax.set_ylabel("share of pixels")
    if title:
        ax.set_title(title)


def plot_covariance_ellipses(
    ax: Axes, means: Tensor, covariances: Tensor, *, n_std: tuple[float, ...] = (1.0, 2.0)
) -> None:
    """Draw the ``n_std``-sigma ellipses of 2-D full covariances.

    Args:
        ax: matplotlib axes.
        means: ``(K, 2)``.
        covariances: ``(K, 2, 2)``.
        n_std: radii in standard deviations.
    """
    from matplotlib.patches import Ellipse

    cols = _colours(means.shape[0])
    for j in range(means.shape[0]):
        evals, evecs = torch.linalg.eigh(covariances[j].double().cpu())
        angle = math.degrees(math.atan2(float(evecs[1, 1]), float(evecs[0, 1])))
        for s in n_std:
            w, h = (2 * s * evals.clamp_min(0).sqrt()).tolist()[::-1]
            ax.add_patch(Ellipse(means[j].tolist(), w, h, angle=angle, fill=False, color=cols[j], lw=1.5))
        ax.plot(*means[j].tolist(), "k+", ms=10)


def _new_figure(w: float, h: float, nrows: int = 1, ncols: int = 1):  # noqa: ANN202
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


# --- figures -----------------------------------------------------------------------------
def figure_initial_split(image: Tensor, n_classes: int = 3) -> Figure:
    """The equal-interval split of the grey range and the Gaussians it starts EM from."""
    hist = image_histograms(image)[0]
    w, mu, var = range_init(hist, n_classes)
    interval = torch.div(torch.arange(N_LEVELS) * n_classes, N_LEVELS, rounding_mode="floor")
    fig, ax = _new_figure(7, 3.5)
    plot_histogram_fit(
        ax[0, 0],
        hist,
        w[0],
        mu[0],
        var[0],
        bar_colours=interval,
        title=f"initial split into {n_classes} equal grey-level intervals",
    )
    return fig


def figure_first_iteration(image: Tensor, n_classes: int = 3) -> Figure:
    """The Gaussians of the init next to those after one EM iteration."""
    hist = image_histograms(image)[0]
    traj = em_trajectory(hist, n_classes, 1)
    fig, ax = _new_figure(11, 3.5, 1, 2)
    plot_histogram_fit(ax[0, 0], hist, *traj[0], title="initialisation")
    plot_histogram_fit(ax[0, 1], hist, *traj[1], title="after the first EM iteration")
    return fig


def figure_em_evolution(image: Tensor, n_classes: int = 3, n_iter: int = 30) -> Figure:
    """Means (with one-sigma bands) and log-likelihood over the EM iterations."""
    hist = image_histograms(image)[0]
    traj = em_trajectory(hist, n_classes, n_iter)
    it = list(range(n_iter + 1))
    means = torch.stack([t[1] for t in traj])  # (T, K)
    sd = torch.stack([t[2] for t in traj]).sqrt()
    lls = [float(fit_histogram_mixture(hist, n_classes, tol=0.0, max_iter=i).lower_bound[0]) for i in it[1:]]
    fig, ax = _new_figure(11, 3.5, 1, 2)
    for j, c in enumerate(_colours(n_classes)):
        ax[0, 0].plot(it, means[:, j].numpy(), color=c, label=f"class {j}")
        ax[0, 0].fill_between(
            it, (means[:, j] - sd[:, j]).numpy(), (means[:, j] + sd[:, j]).numpy(), color=c, alpha=0.2
        )
    ax[0, 0].set(xlabel="EM iteration", ylabel="grey level", title="means +- one standard deviation")
    ax[0, 0].legend(fontsize=7)
    ax[0, 1].plot(it[1:], lls, "k.-")
    ax[0, 1].set(xlabel="EM iteration", ylabel="mean log-likelihood per pixel", title="log-likelihood")
    return fig


def figure_segmentation(image: Tensor, n_classes: int = 3, *, tol: float = 1e-3) -> Figure:
    """The image, its segmentation, and the final fit over the histogram."""
    hist = image_histograms(image)
    fit = fit_histogram_mixture(hist, n_classes, tol=tol)
    lut = label_lut(fit)
    labels = apply_lut(lut, image)[0]
    fig, ax = _new_figure(13, 4, 1, 3)
    ax[0, 0].imshow(image[0, 0].numpy(), cmap="gray", vmin=0, vmax=255)
    ax[0, 0].set_title("image")
    ax[0, 1].imshow(palette(n_classes)[labels].numpy())
    ax[0, 1].set_title(f"{n_classes} classes ({int(fit.n_iter[0])} EM iterations)")
    for a in ax[0, :2]:
        a.axis("off")
    plot_histogram_fit(
        ax[0, 2],
        hist[0],
        fit.weights[0],
        fit.means[0, :, 0],
        fit.covariances[0, :, 0, 0],
        bar_colours=lut[0],
        title="final mixture",
    )
    return fig


def figure_clustering_1d(seed: int = 0) -> Figure:
    """1-D mixture of three Gaussians: samples coloured by fitted label, fitted densities."""
    from torchgmm.mixture import GaussianMixture

    x, _ = synthetic_mixture(1500, [-4.0, 0.5, 5.0], [1.0, 0.7, 1.5], [0.3, 0.3, 0.4], seed)
    gm = GaussianMixture(3, random_state=seed).fit(x)
    order = gm.means_[:, 0].argsort()
    labels = order.argsort()[gm.predict(x)]
    w, mu, var = gm.weights_[order], gm.means_[order, 0], gm.covariances_[order, 0, 0]
    fig, ax = _new_figure(8, 3.5)
    a = ax[0, 0]
    cols = _colours(3)
    a.hist([x[labels == j, 0].numpy() for j in range(3)], bins=80, stacked=True, density=True, color=cols, alpha=0.5)
    grid = torch.linspace(float(x.min()), float(x.max()), 400, dtype=torch.float64)
    for j in range(3):
        pdf = w[j] * torch.exp(-0.5 * (grid - mu[j]) ** 2 / var[j]) / torch.sqrt(2 * math.pi * var[j])
        a.plot(grid.numpy(), pdf.numpy(), color=cols[j], lw=2, label=f"mu={float(mu[j]):.2f}")
    a.set(title="1-D: samples coloured by label, fitted weighted Gaussians", xlabel="x")
    a.legend(fontsize=7)
    return fig


def figure_clustering_2d(seed: int = 0) -> Figure:
    """2-D mixture of three correlated Gaussians: points by fitted label, 1/2-sigma ellipses."""
    from torchgmm.mixture import GaussianMixture

    x, truth = synthetic_mixture(
        1500,
        [[0.0, 0.0], [5.0, 3.0], [-3.0, 5.0]],
        [[[1.5, 0.0], [0.9, 0.5]], 0.8, [[0.5, 0.0], [-0.6, 1.2]]],
        [0.4, 0.3, 0.3],
        seed,
    )
    gm = GaussianMixture(3, random_state=seed).fit(x)
    labels = gm.predict(x)
    fig, ax = _new_figure(11, 4.5, 1, 2)
    cols = _colours(3)
    for a, lab, title in ((ax[0, 0], truth, "true components"), (ax[0, 1], labels, "fitted labels")):
        a.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=4, c=[cols[int(i)] for i in lab])
        a.set(title=title, aspect="equal")
    plot_covariance_ellipses(ax[0, 1], gm.means_, gm.covariances_)
    return fig


# --- a generated video clip ----------------------------------------------------------
def synthetic_clip(
    n_frames: int = 80,
    height: int = 64,
    width: int = 80,
    *,
    square: int = 12,
    enter: int = 8,
    noise: float = 3.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """A static-camera test clip: textured background, sensor noise and a moving bright square.

    The background is a smooth RGB texture (values 40..170) plus independent Gaussian noise
    of standard deviation ``noise`` per pixel and frame. From frame ``enter`` on, a
    ``square`` x ``square`` near-white square (values about 245) bounces across the frame at
    a constant speed, so the true foreground of every frame is known exactly.

    Args:
        n_frames: T.
        height, width: H, W (each at least ``square + 2``).
        square: side of the moving square in pixels.
        enter: first frame showing the square (earlier frames are background only, so the
            model starts from a clean background).
        noise: standard deviation of the per-pixel noise (grey levels).
        seed: seed of the noise and of the square's starting point and direction.

    Returns:
        ``(frames, truth, background)``: ``(T, 3, H, W)`` uint8 frames, ``(T, 1, H, W)`` bool
        true foreground, ``(3, H, W)`` uint8 noise-free background.

    Example:
        >>> frames, truth, background = synthetic_clip(20, 32, 40, square=8)
        >>> frames.shape, truth.shape, background.shape
        (torch.Size([20, 3, 32, 40]), torch.Size([20, 1, 32, 40]), torch.Size([3, 32, 40]))
        >>> bool(truth[:8].any()), int(truth[8].sum())
        (False, 64)
    """
    if height < square + 2 or width < square + 2:
        raise ValueError(f"the frame ({height}x{width}) must be larger than the square ({square}) by 2 pixels.")
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(height, dtype=torch.float64).view(-1, 1)
    xx = torch.arange(width, dtype=torch.float64).view(1, -1)
    # smooth texture: a different mix of slow sinusoids per channel, in 40..170
    phase = torch.rand(3, generator=g, dtype=torch.float64) * 2 * math.pi
    planes = [
        105 + 40 * torch.sin(xx / 7 + phase[c] + c) * torch.cos(yy / 9 - phase[c]) + 25 * torch.sin((xx + yy) / 13 + c)
        for c in range(3)
    ]
    background = torch.stack(planes).round().clamp(0, 255)  # (3, H, W)
    frames = background.expand(n_frames, -1, -1, -1) + noise * torch.randn(
        n_frames, 3, height, width, generator=g, dtype=torch.float64
    )
    truth = torch.zeros(n_frames, 1, height, width, dtype=torch.bool)
    # bouncing square: position reflected at the borders, speed about 2 pixels per frame
    span_y, span_x = height - square, width - square
    y0, x0 = (torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([span_y, span_x])).tolist()
    vy, vx = 1.3, 2.1
    for t in range(enter, n_frames):
        s = t - enter
        y = _reflect(y0 + vy * s, span_y)
        x = _reflect(x0 + vx * s, span_x)
        frames[t, :, y : y + square, x : x + square] = 245 + noise * torch.randn(
            3, square, square, generator=g, dtype=torch.float64
        )
        truth[t, 0, y : y + square, x : x + square] = True
    return frames.round().clamp(0, 255).to(torch.uint8), truth, background.to(torch.uint8)


def _reflect(position: float, span: int) -> int:
    """``position`` folded into ``[0, span]`` (a bounce off both borders), rounded."""
    period = 2 * span
    p = position % period
    return int(round(p if p <= span else period - p))


#: size of the background demo's ``summary.png``: 11 x 4.4 inches at 100 dpi, 1100 x 440 pixels
SUMMARY_FIGSIZE = (11.0, 4.4)
SUMMARY_DPI = 100


def figure_background_summary(
    frames: Tensor,
    masks: Tensor,
    background: Tensor,
    *,
    truth: Tensor | None = None,
    true_background: Tensor | None = None,
    n_show: int = 4,
    first: int = 0,
) -> Figure:
    """A few frames above their foreground masks, and the learned background beside them.

    The ``n_show`` frames are spread evenly over ``first .. T-1``. Where ``truth`` is
    given, each mask's title gives its recall and precision and the true foreground is
    outlined in red; where ``true_background`` is given it is shown under the learned one,
    with their mean absolute difference.

    Args:
        frames: ``(T, C, H, W)`` uint8 frames (C = 1 or 3).
        masks: ``(T, 1, H, W)`` bool foreground masks.
        background: ``(C, H, W)`` uint8 learned background.
        truth: ``(T, 1, H, W)`` bool true foreground (optional).
        true_background: ``(C, H, W)`` uint8 noise-free background (optional).
        n_show: number of frames shown.
        first: first frame that may be shown (e.g. when the foreground enters).

    Returns:
        a figure of :data:`SUMMARY_FIGSIZE` inches, two rows of ``n_show + 1`` panels.
    """
    from matplotlib.patches import Rectangle

    def show(ax: Axes, image: Tensor, title: str) -> None:
        img = image.cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    n = frames.shape[0]
    picks = torch.linspace(first, n - 1, n_show).round().long().unique().tolist()
    fig, ax = _new_figure(*SUMMARY_FIGSIZE, 2, len(picks) + 1)
    for j, t in enumerate(picks):
        show(ax[0, j], frames[t], f"frame {t}")
        m = masks[t].cpu()
        title = f"mask {t}"
        if truth is not None:
            gt = truth[t].cpu()
            tp = int((m & gt).sum())
            if int(gt.sum()) and int(m.sum()):
                title += f"\nrecall {tp / int(gt.sum()):.2f}, precision {tp / int(m.sum()):.2f}"
            ys, xs = gt[0].nonzero(as_tuple=True)
            if ys.numel():
                y0, x0 = int(ys.min()), int(xs.min())
                ax[1, j].add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5),
                        int(xs.max()) - x0 + 1,
                        int(ys.max()) - y0 + 1,
                        fill=False,
                        color="red",
                        lw=1,
                    )
                )
        show(ax[1, j], m.to(torch.uint8) * 255, title)
    show(ax[0, -1], background, "learned background")
    if true_background is not None:
        error = float((background.float().cpu() - true_background.float().cpu()).abs().mean())
        show(ax[1, -1], true_background, f"true background\n(mean abs. difference {error:.2f})")
    else:
        ax[1, -1].axis("off")
    if truth is not None:
        fig.suptitle("foreground masks (white) with the true foreground outlined in red", fontsize=10)
    return fig


# --- the demo ----------------------------------------------------------------------------
def run_background_demo(out_dir: str | Path, *, n_frames: int = 150, height: int = 96, width: int = 128) -> dict:
    """Model a generated clip with the background subtractor, as ``torchgmm background`` does.

    Generates a static-camera clip with a moving square (:func:`synthetic_clip`), writes it
    as ``clip.mkv`` (lossless) into ``out_dir``, runs :func:`torchgmm.jobs.background.run_background`
    on it (eager model: on a clip this short, compiling would cost more than it saves) and
    scores the masks against the square's true position.

    Writes into ``out_dir``: ``clip.mkv``, ``clip/mask.mp4`` (foreground masks),
    ``clip/background.png`` (the learned background), ``clip/overlay.mp4``,
    ``clip/summary.json`` and ``clip/summary.png`` (a few frames, their masks and the
    learned background: :func:`figure_background_summary`).

    Args:
        out_dir: output folder (created).
        n_frames, height, width: size of the generated clip (T, H, W).

    Returns:
        the run's summary plus ``"recall"``, ``"precision"`` (frames after the square
        enters), ``"background_error"`` (mean absolute difference from the true
        background, grey levels) and ``"figure"`` (the path of ``summary.png``).
    """
    import io

    from torchgmm.io.video import VideoReader, VideoWriter
    from torchgmm.io.images import atomic_write_bytes, decode_image_file
    from torchgmm.jobs.background import MaskOutputs, run_background

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enter = 8
    frames, truth, background = synthetic_clip(n_frames, height, width, enter=enter)
    clip = out / "clip.mkv"
    with VideoWriter(clip, fps=25) as writer:
        writer.write(frames)
    (summary,) = run_background(
        [clip], out, outputs=MaskOutputs(overlay=True), progress=False, model_options=dict(compile=False), device="cpu"
    )
    with VideoReader(summary["mask"], batch_size=n_frames) as reader:
        masks = torch.cat(list(reader))[:, :1] > 127  # (T, 1, H, W)
    tp = int((masks & truth)[enter:].sum())
    recall = tp / max(int(truth[enter:].sum()), 1)
    precision = tp / max(int(masks[enter:].sum()), 1)
    learned = decode_image_file(summary["background"])
    error = float((learned.float() - background.float()).abs().mean())
    figure = Path(summary["output"]) / "summary.png"
    buf = io.BytesIO()
    figure_background_summary(frames, masks, learned, truth=truth, true_background=background, first=enter).savefig(
        buf, format="png", dpi=SUMMARY_DPI
    )
    atomic_write_bytes(figure, buf.getvalue())
    return dict(summary, recall=recall, precision=precision, background_error=error, figure=str(figure))


def run_demo(out_dir: str | Path, n_classes: int = 3, *, background: bool = True) -> int:
    """Segment the bundled cameraman image and model a generated video clip.

    Segmentation writes ``cameraman_labels.png`` (values 0..K-1, 0 darkest),
    ``cameraman_colour.png`` and ``cameraman_fit.png`` (image, segmentation, histogram with
    the fitted Gaussians) into ``out_dir``. Background modelling (:func:`run_background_demo`)
    writes the generated clip ``out_dir/clip.mkv`` and, in ``out_dir/clip/``, the mask
    video ``mask.mp4``, ``background.png``, ``overlay.mp4``, ``summary.json`` and
    ``summary.png`` (frames, masks and the learned background in one figure). The paths
    and scores are printed.

    Args:
        out_dir: output folder (created).
        n_classes: K of the segmentation.
        background: also run the background-modelling part.

    Returns:
        0 (the exit status).
    """
    import io

    from torchgmm.io.images import atomic_write_bytes, write_png
    from torchgmm.segmentation import colourise, segment_images

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = load_cameraman()
    labels, fit = segment_images(image, n_classes)
    paths = [out / "cameraman_labels.png", out / "cameraman_colour.png", out / "cameraman_fit.png"]
    write_png(paths[0], labels[0].to(torch.uint8))
    write_png(paths[1], colourise(labels, n_classes)[0])
    buf = io.BytesIO()
    figure_segmentation(image, n_classes).savefig(buf, format="png", dpi=100)
    atomic_write_bytes(paths[2], buf.getvalue())
    means = ", ".join(f"{m:.1f}" for m in fit.means[0, :, 0].tolist())
    print(f"cameraman: {n_classes} classes, means {means}, {int(fit.n_iter[0])} EM iterations")
    for p in paths:
        print(p)
    if background:
        bg = run_background_demo(out)
        h, w = bg["height"], bg["width"]
        print(
            f"background model: generated {bg['frames']}-frame {w}x{h} clip with a moving square, "
            f"{bg['fps']:.0f} frames/s; foreground recall {bg['recall']:.3f}, precision "
            f"{bg['precision']:.3f}; background within {bg['background_error']:.2f} grey levels (mean abs.)"
        )
        for key in ("mask", "background", "overlay", "figure"):
            print(bg[key])
        print(Path(bg["output"]) / "summary.json")
    return 0

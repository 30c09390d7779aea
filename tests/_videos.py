"""Video helpers shared by the pipeline and CLI tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

from torchgmm.demo import synthetic_clip
from torchgmm.io.video import VideoReader


def write_video(
    path: Path,
    frames: torch.Tensor,
    codec: str = "ffv1",
    fps: int = 25,
    *,
    pix_fmt: str | None = None,
    options: dict | None = None,
    rotation: int = 0,
) -> Path:
    """(T, 3, H, W) uint8 -> a lossless video (FFV1 .mkv or H.264 RGB qp 0 .mp4) via PyAV;
    ``pix_fmt`` (FFV1: default bgr0), extra encoder ``options`` and a display ``rotation``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[-1], frames.shape[-2]
        stream.pix_fmt = pix_fmt or ("bgr0" if codec == "ffv1" else "rgb24")
        if codec == "libx264rgb":
            stream.options = {"qp": "0", **(options or {})}
        if rotation:
            stream.set_display_rotation(rotation)
        for f in frames.permute(0, 2, 3, 1).numpy():
            for p in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)
    return path


def read_masks(path: str | Path) -> torch.Tensor:
    """A mask video or PNG folder -> (T, 1, H, W) bool."""
    with VideoReader(path, batch_size=1000) as reader:
        return torch.cat(list(reader))[:, :1] > 127


def make_sequence(seq: Path, n: int = 40, seed: int = 11, gt_scale: int = 1) -> Path:
    """A tiny CDnet sequence in ``seq``: 0/255 labels (divided by ``gt_scale``: 255 -> 0/1
    coding), 170 on the object's outline, 85 on the top row, temporalROI 10..n and a ROI
    without the left column."""
    from PIL import Image

    (seq / "input").mkdir(parents=True)
    (seq / "groundtruth").mkdir()
    frames, truth, _ = synthetic_clip(n, 48, 64, square=10, enter=5, noise=3.0, seed=seed)
    labels = torch.where(truth, 255 // gt_scale, 0).to(torch.uint8)[:, 0]
    outline = (torch.nn.functional.max_pool2d(truth.float(), 3, 1, 1)[:, 0] > 0) & ~truth[:, 0]
    labels[outline] = 170
    labels[:, 0, :] = 85
    for i in range(n):
        Image.fromarray(frames[i].permute(1, 2, 0).numpy()).save(seq / "input" / f"in{i + 1:06d}.jpg", quality=95)
        Image.fromarray(labels[i].numpy()).save(seq / "groundtruth" / f"gt{i + 1:06d}.png")
    (seq / "temporalROI.txt").write_text(f"10 {n}\n")
    roi = np.full((48, 64), 255, np.uint8)
    roi[:, 0] = 0
    Image.fromarray(roi).save(seq / "ROI.bmp")
    return seq

"""Video helpers shared by the pipeline and CLI tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

from torchgmm.io.video import VideoReader


def write_video(path: Path, frames: torch.Tensor, codec: str = "ffv1", fps: int = 25) -> Path:
    """(T, 3, H, W) uint8 -> a lossless video (FFV1 .mkv or H.264 RGB qp 0 .mp4) via PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[-1], frames.shape[-2]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "rgb24"
        if codec == "libx264rgb":
            stream.options = {"qp": "0"}
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

"""The background demo's summary figure: frames, their masks and the learned background."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_demo_writes_the_summary_figure(tmp_path):
    from PIL import Image

    from torchgmm.demo import SUMMARY_DPI, SUMMARY_FIGSIZE, run_background_demo

    result = run_background_demo(tmp_path, n_frames=40, height=48, width=64)  # CPU, eager
    path = tmp_path / "clip" / "summary.png"
    assert Path(result["figure"]) == path
    expected = (round(SUMMARY_FIGSIZE[0] * SUMMARY_DPI), round(SUMMARY_FIGSIZE[1] * SUMMARY_DPI))
    assert expected == (1100, 440)
    assert png_size(path) == expected
    with Image.open(path) as im:
        im.verify()  # the whole file decodes (CRCs and all)
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank canvas


def test_summary_figure_without_ground_truth():
    from torchgmm.demo import figure_background_summary, synthetic_clip

    frames, truth, background = synthetic_clip(12, 32, 40, square=8)
    fig = figure_background_summary(frames, truth, background, n_show=3)
    assert len(fig.axes) == 8  # 2 rows of 3 frames + the background column
    assert fig.axes[-1].axison is False  # no true background: its panel is empty

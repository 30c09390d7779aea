"""``torchgmm segment`` end to end on a temporary folder of mixed images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgmm.cli import main
from torchgmm.io.images import decode_image_file, find_images
from torchgmm.segmentation import segment_files


def _two_tone(h: int, w: int, lo: int = 40, hi: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w), lo, dtype=np.float64)
    img[:, w // 2 :] = hi
    return (img + rng.normal(0, 5, (h, w))).clip(0, 255)


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_two_tone(30, 40).astype(np.uint8), "L").save(d / "grey.png")
    rgb = np.stack([_two_tone(25, 36, seed=s) for s in range(3)], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(d / "sub" / "rgb.png")
    rgba = np.concatenate([rgb, np.full((25, 36, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(d / "sub" / "rgba.png")
    Image.fromarray(rgb, "RGB").save(d / "rgb.bmp")
    img16 = (_two_tone(20, 22) * 257).astype(np.uint16)
    Image.fromarray(img16).save(d / "deep16.png")  # mode I;16
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_decode_16_bit_and_rgba(image_dir):
    img16 = decode_image_file(image_dir / "deep16.png")
    assert img16.dtype == torch.uint16 and img16.shape == (1, 20, 22)
    assert decode_image_file(image_dir / "sub" / "rgba.png").shape == (3, 25, 36)
    assert decode_image_file(image_dir / "rgb.bmp").shape == (3, 25, 36)
    with pytest.raises(ValueError, match="corrupt.png"):
        decode_image_file(image_dir / "corrupt.png")


def test_find_images_ignores_non_images(image_dir):
    names = sorted(s.relative.as_posix() for s in find_images([image_dir]))
    assert names == ["corrupt.png", "deep16.png", "grey.png", "rgb.bmp", "sub/rgb.png", "sub/rgba.png"]


def test_find_images_single_path_and_exclude(image_dir):
    # a str is one input, not a sequence of one-letter names
    assert len(find_images(str(image_dir))) == 6
    assert [s.relative.as_posix() for s in find_images(image_dir / "grey.png")] == ["grey.png"]
    # folders in `exclude` are left out of the search (an output folder inside an input)
    kept = sorted(s.relative.as_posix() for s in find_images(image_dir, exclude=[image_dir / "sub"]))
    assert kept == ["corrupt.png", "deep16.png", "grey.png", "rgb.bmp"]
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) left out because they lie in .*sub"):
        find_images(image_dir / "sub", exclude=[image_dir / "sub"])


def test_cli_end_to_end(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(image_dir), "--classes", "2", "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(["segment", *argv, "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "failed 1" in err and "segmented 5" in err

    expected = {"grey": (30, 40), "sub/rgb": (25, 36), "sub/rgba": (25, 36), "rgb": (25, 36),
                "deep16": (20, 22)}
    for stem, shape in expected.items():
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == shape
        assert set(np.unique(labels)) == {0, 1}
        # two-tone images: left half dark (class 0), right half bright (class 1)
        assert (labels[:, : shape[1] // 2] == 0).mean() > 0.95
        assert (labels[:, shape[1] // 2 :] == 1).mean() > 0.95
        colour = np.asarray(Image.open(out / f"{stem}_colour.png"))
        assert colour.shape == (*shape, 3)
    assert not (out / "corrupt_labels.png").exists()
    records = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert len(records) == 5
    for rec in records:
        assert len(rec["weights"]) == 2 and rec["means"][0][0] < rec["means"][1][0]
    assert not list(out.rglob("*.tmp"))

    # re-run: finished outputs are skipped, the corrupt file still fails
    mtime = (out / "grey_labels.png").stat().st_mtime_ns
    assert main(["segment", *argv]) == 1
    err = capsys.readouterr().err
    assert "segmented 0, skipped 5" in err
    assert (out / "grey_labels.png").stat().st_mtime_ns == mtime
    # --overwrite redoes them
    assert main(["segment", *argv, "--overwrite"]) == 1
    assert "segmented 5" in capsys.readouterr().err


def test_cli_only_good_files_exit_0(image_dir, tmp_path):
    out = tmp_path / "ok"
    assert main(["segment", str(image_dir / "grey.png"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "grey_labels.png").exists()


def test_cli_empty_input_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(empty), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_segment_files_with_workers(image_dir, tmp_path, device):
    summary = segment_files(
        [image_dir / "sub", image_dir / "grey.png"], tmp_path / "w", 2, workers=2,
        device=device, progress=False,
    )
    sequential = segment_files([image_dir / "grey.png"], tmp_path / "s", 2, write_threads=0,
                               device=device, progress=False)
    assert sequential.n_done == 1 and (tmp_path / "s" / "segments.jsonl").exists()
    assert summary.n_done == 3 and not summary.failed
    assert (tmp_path / "w" / "rgb_labels.png").exists()


def test_cli_rgb_mode(image_dir, tmp_path):
    out = tmp_path / "rgb"
    argv = ["segment", str(image_dir / "sub"), str(image_dir / "grey.png"), "--out", str(out),
            "--classes", "2", "--mode", "rgb", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    records = {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").open())}
    assert records["rgb.png"]["mode"] == "rgb" and len(records["rgb.png"]["means"][0]) == 3
    assert records["grey.png"]["mode"] == "luminance"
    labels = np.asarray(Image.open(out / "rgb_labels.png"))
    assert (labels[:, :10] == 0).mean() > 0.95 and (labels[:, -10:] == 1).mean() > 0.95

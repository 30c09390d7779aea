"""Damaged input end to end: the jobs run in a subprocess, so a crash fails the test
instead of taking pytest down, and each asserts what was written, what was named and that
every good file was processed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _damaged import encode, pattern, with_ihdr_size

#: the CLI in a fresh interpreter; PATCH may replace a decoder first (a real native crash)
RUN = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    if os.environ.get("CRASH_ON"):
        import signal
        import torchgmm.io.images as images
        original = images.decode_image_file
        def crashing(path, *args, **kwargs):
            if Path(path).name.startswith(os.environ["CRASH_ON"]):
                os.kill(os.getpid(), signal.SIGSEGV)
            return original(path, *args, **kwargs)
        images.decode_image_file = crashing
    from torchgmm.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def torchgmm(*argv: str, crash_on: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONFAULTHANDLER": ""}
    env.pop("PYTHONFAULTHANDLER")
    if crash_on:
        env["CRASH_ON"] = crash_on
    return subprocess.run(
        [sys.executable, "-c", RUN, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env
    )


def _two_tone(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40.0)
    img[:, w // 2 :] = 200
    return (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Three good PNGs and a PNG whose IHDR height was doubled (it crashed torchvision)."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        (d / f"good{i}.png").write_bytes(encode(_two_tone(i), "PNG"))
    (d / "lying.png").write_bytes(with_ihdr_size(encode(_two_tone(9), "PNG"), h=48))
    return d


def _records(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_segment_names_a_lying_png_and_does_the_rest(mixed_folder, tmp_path, workers):
    out = tmp_path / "out"
    proc = torchgmm(
        "segment",
        mixed_folder,
        "--out",
        out,
        "--classes",
        "2",
        "--device",
        "cpu",
        "--workers",
        workers,
        "--no-progress",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: cannot decode '{mixed_folder / 'lying.png'}': its header promises 32x48 pixels" in proc.stderr
    assert sorted(_records(out)) == ["good0.png", "good1.png", "good2.png"]
    for i in range(3):
        assert (out / f"good{i}_labels.png").stat().st_size > 0
    # a re-run does not die on it either: the good ones are skipped, the bad one named again
    again = torchgmm(
        "segment",
        mixed_folder,
        "--out",
        out,
        "--classes",
        "2",
        "--device",
        "cpu",
        "--workers",
        workers,
        "--no-progress",
    )
    assert again.returncode == 1 and "lying.png" in again.stderr and "Traceback" not in again.stderr


def test_segment_survives_a_decoder_that_crashes(mixed_folder, tmp_path):
    (mixed_folder / "crash.png").write_bytes(encode(_two_tone(5), "PNG"))
    out = tmp_path / "out"
    proc = torchgmm(
        "segment",
        mixed_folder,
        "--out",
        out,
        "--classes",
        "2",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        crash_on="crash",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "crash.png': the decoding process was killed by SIGSEGV on this file" in proc.stderr
    assert sorted(_records(out)) == ["good0.png", "good1.png", "good2.png"]


def test_background_sequence_with_a_lying_frame_keeps_its_masks_and_goes_on(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(30):
        (seq / f"in{i + 1:06d}.png").write_bytes(encode(pattern(24, 32, seed=i), "PNG"))
    lying = seq / "in000016.png"
    lying.write_bytes(with_ihdr_size(lying.read_bytes(), h=48))
    other = tmp_path / "other"
    other.mkdir()
    for i in range(10):
        (other / f"f{i:03d}.png").write_bytes(encode(pattern(24, 32, seed=100 + i), "PNG"))
    out = tmp_path / "out"
    proc = torchgmm("background", seq, other, "--out", out, "--no-compile", "--no-progress", "--device", "cpu")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "in000016.png" in proc.stderr and "header promises 32x48 pixels" in proc.stderr
    summary = json.loads((out / "seq" / "summary.json").read_text())
    assert summary["frames"] == 15 and summary["error_frame"] == 15 and not summary["complete"]
    from _videos import read_masks

    assert read_masks(out / "seq" / "mask.mp4").shape[0] == 15
    assert json.loads((out / "other" / "summary.json").read_text())["complete"]


def test_evaluate_reports_a_sequence_with_nothing_scored_as_undefined(tmp_path, capsys):
    import csv
    import math

    from PIL import Image

    from _videos import make_sequence
    from torchgmm.cli import main

    root = tmp_path / "cdnet"
    make_sequence(root / "baseline" / "good", n=24)
    blank = make_sequence(root / "baseline" / "blank", n=24, seed=3)
    for gt in (blank / "groundtruth").iterdir():  # only "outside ROI" and "unknown": nothing scored
        labels = np.full((48, 64), 85, np.uint8)
        labels[10:20] = 170
        Image.fromarray(labels).save(gt)
    out = tmp_path / "res"
    assert main(["evaluate", str(root), "--out", str(out), "--no-compile", "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: baseline/blank")]
    assert len(warning) == 1 and "no pixel is scored" in warning[0] and "left out of the means" in warning[0]
    assert "UserWarning" not in captured.err
    blank_line = next(line for line in captured.out.splitlines() if "baseline/blank" in line)
    assert "n/a" in blank_line and "0.0000" not in blank_line
    rows = {r["sequence"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["baseline/blank"]["F-measure"] is None and rows["baseline/blank"]["PWC"] is None
    assert rows["baseline/blank"]["TP"] == 0 and rows["baseline/blank"]["TN"] == 0
    good = rows["baseline/good"]
    assert good["F-measure"] > 0.8
    for key in ("F-measure", "Recall", "Precision", "PWC"):  # the mean is the good sequence's alone
        assert rows["baseline/mean"][key] == pytest.approx(good[key])
        assert rows["overall/mean"][key] == pytest.approx(good[key])
    with open(out / "results.csv", newline="") as f:
        csv_rows = {r["sequence"]: r for r in csv.DictReader(f)}
    assert csv_rows["baseline/blank"]["F-measure"] == "" and math.isclose(
        float(csv_rows["baseline/good"]["F-measure"]), good["F-measure"]
    )


def test_background_warns_once_about_a_numbering_gap(tmp_path, capsys):
    from torchgmm.cli import main

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in [*range(1, 9), *range(12, 16)]:
        (seq / f"in{i:06d}.png").write_bytes(encode(pattern(16, 16, seed=i), "PNG"))
    assert (
        main(["background", str(seq), "--out", str(tmp_path / "o"), "--no-compile", "--no-progress", "--device", "cpu"])
        == 0
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "jumps from frame number 8 to 12" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the image sequence"), err
    assert "UserWarning" not in err and ".py:" not in err


def test_a_cpu_compile_does_not_print_the_cuda_home_notice():
    script = "import torch; {}import torch.utils.cpp_extension"
    quiet = "from torchgmm.background import _quiet_cuda_home_notice; _quiet_cuda_home_notice(); "
    control = subprocess.run([sys.executable, "-c", script.format("")], capture_output=True, text=True, timeout=120)
    if "No CUDA runtime is found" not in control.stderr:
        pytest.skip("this torch prints no CUDA_HOME notice here (a CUDA runtime is present, or CPU-only torch)")
    ours = subprocess.run([sys.executable, "-c", script.format(quiet)], capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0 and "No CUDA runtime" not in ours.stderr, ours.stderr


def test_a_second_run_on_a_busy_output_folder_is_refused_by_name(mixed_folder, tmp_path, capsys):
    from torchgmm.cli import main
    from torchgmm.io.images import lock_output_folder

    (mixed_folder / "lying.png").unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".segments.jsonl.abcd1234.tmp").write_bytes(b"in flight")  # the first run's temporary
    with lock_output_folder(out, "torchgmm segment"):  # the first run, still writing
        argv = [
            "segment",
            str(mixed_folder),
            "--out",
            str(out),
            "--classes",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: output folder '{out}' is in use by torchgmm segment (pid " in err
        assert (out / ".segments.jsonl.abcd1234.tmp").exists()  # its clean-up did not run
        assert not (out / "segments.jsonl").exists() and not list(out.glob("*.png"))
    assert main(argv) == 0  # once the first run is done, the folder is free again
    assert len(list(out.glob("*_labels.png"))) == 3


def test_background_refuses_a_busy_output_folder(tmp_path, capsys):
    from torchgmm.cli import main
    from torchgmm.io.images import lock_output_folder

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(4):
        (seq / f"{i:03d}.png").write_bytes(encode(pattern(16, 16, seed=i), "PNG"))
    (tmp_path / "out" / "seq").mkdir(parents=True)
    with lock_output_folder(tmp_path / "out" / "seq", "torchgmm background"):
        argv = [
            "background",
            str(seq),
            "--out",
            str(tmp_path / "out"),
            "--no-compile",
            "--no-progress",
            "--device",
            "cpu",
        ]
        assert main(argv) == 2
        assert "is in use by torchgmm background" in capsys.readouterr().err
        assert not (tmp_path / "out" / "seq" / "summary.json").exists()
    assert main(argv) == 0


def _lossless_clip(path: Path, frames: np.ndarray, rotation: int = 0, fps: int = 25) -> Path:
    """(T, H, W, 3) uint8 -> FFV1 .mkv or H.264 RGB qp 0 .mp4, with a display rotation."""
    import av

    with av.open(str(path), "w") as container:
        codec = "ffv1" if path.suffix == ".mkv" else "libx264rgb"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "rgb24"
        if codec == "libx264rgb":
            stream.options = {"qp": "0", "g": "5"}
        if rotation:
            stream.set_display_rotation(rotation)
        for f in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)
    return path


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_videos_are_read_as_players_show_them(tmp_path, rotation):
    import torch

    from torchgmm.io.video import VideoReader

    frames = np.stack([pattern(24, 40, seed=i) for i in range(6)])  # not square: a turn swaps H and W
    path = _lossless_clip(tmp_path / "phone.mp4", frames, rotation)
    k = rotation // 90  # the display matrix turns the frame counter-clockwise (PyAV's frame.rotation)
    expected = torch.from_numpy(np.rot90(frames, k, axes=(1, 2)).copy()).permute(0, 3, 1, 2)
    with VideoReader(path, batch_size=10) as reader:
        assert reader.rotation == rotation and reader.shape == (3, *expected.shape[-2:])
        (got,) = list(reader)
    assert torch.equal(got, expected)
    with VideoReader(path, batch_size=10, size=(20, 16), gray=True) as reader:  # size is of the turned frames
        (small,) = list(reader)
    assert small.shape == (6, 1, 20, 16)


def test_background_of_a_rotated_video_is_upright_and_says_so(tmp_path):
    from torchgmm.cli import main
    from torchgmm.io.images import decode_image_file

    frames = np.stack([pattern(24, 40, seed=0)] * 8)
    path = _lossless_clip(tmp_path / "phone.mp4", frames, 90)
    out = tmp_path / "out"
    assert main(["background", str(path), "--out", str(out), "--no-compile", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out / "phone" / "summary.json").read_text())
    assert summary["rotation"] == 90 and (summary["height"], summary["width"]) == (40, 24)
    assert decode_image_file(out / "phone" / "background.png").shape == (3, 40, 24)


def _damaged_in_the_middle(tmp_path: Path) -> tuple[Path, int]:
    """A 40-frame H.264 clip (key frame every 10) whose packet 17 is garbage: the decoder
    refuses it (InvalidDataError) instead of concealing it."""
    import av

    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "10"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for _ in range(40):
            frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[17]
    data[pos + 20 : pos + size - 20] = rng.integers(0, 256, size - 40, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    return damaged, 40


def test_damage_in_the_middle_stops_or_is_skipped(tmp_path, capsys):
    import warnings

    from torchgmm.cli import main
    from torchgmm.io.video import VideoDecodeError, VideoReader
    from _videos import read_masks

    damaged, n = _damaged_in_the_middle(tmp_path)
    with VideoReader(damaged) as reader, pytest.raises(VideoDecodeError, match="at frame"):
        list(reader)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VideoReader(damaged, on_damage="skip", batch_size=100) as reader:
            (frames,) = list(reader)
            skipped = reader.skipped
    assert skipped and all(0 < a <= b < n for a, b, _ in skipped)
    lost = sum(b - a + 1 for a, b, _ in skipped)
    assert frames.shape[0] == n - lost and lost < n // 2
    assert any("could not be decoded and were skipped" in str(w.message) for w in caught)

    out = tmp_path / "out"
    argv = ["background", str(damaged), "--out", str(out), "--no-compile", "--no-progress", "--device", "cpu"]
    assert main(argv) == 1  # stop (default): the input ends at the damage
    stopped = json.loads((out / "damaged" / "summary.json").read_text())
    # (the decoder's threads hold a few frames back: a stop loses those before the damage too)
    assert 0 < stopped["frames"] <= skipped[0][0] and stopped["error_frame"] == stopped["frames"]
    assert main([*argv, "--on-damage", "skip"]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "damaged" / "summary.json").read_text())
    assert summary["complete"] and summary["on_damage"] == "skip"
    assert summary["skipped_frames"] == [[a, b] for a, b, _ in skipped]
    assert summary["frames"] == n - lost and summary["source_frames"] == {"first": 0, "last": n - 1}
    assert read_masks(out / "damaged" / "mask.mp4").shape[0] == n - lost  # masks of the decoded frames
    assert "warning: " in err and "were skipped" in err
    assert main([*argv, "--on-damage", "skip", "--checkpoint", "5"]) == 2
    assert "cannot be combined with checkpoints" in capsys.readouterr().err


def test_a_damaged_image_of_a_sequence_is_skipped_on_request(tmp_path, capsys):
    from torchgmm.cli import main

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(12):
        (seq / f"in{i + 1:06d}.png").write_bytes(encode(pattern(16, 24, seed=i), "PNG"))
    (seq / "in000006.png").write_bytes(b"")  # frame index 5
    out = tmp_path / "out"
    assert (
        main(
            [
                "background",
                str(seq),
                "--out",
                str(out),
                "--no-compile",
                "--no-progress",
                "--device",
                "cpu",
                "--on-damage",
                "skip",
                "--step",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((out / "seq" / "summary.json").read_text())
    assert summary["complete"] and summary["frames"] == 11 and summary["skipped_frames"] == [[5, 5]]
    assert "warning: " in capsys.readouterr().err


def test_a_fifo_given_as_input_is_named_as_one_and_never_opened(tmp_path, capsys):
    import os

    from torchgmm.cli import main

    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)  # opening it would block until a writer came: the test would hang
    assert main(["background", str(fifo), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert f"error: '{fifo}' is a FIFO (named pipe), not a video file" in capsys.readouterr().err
    assert main(["segment", str(fifo), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert f"error: input '{fifo}' is a FIFO (named pipe), not an image file or a folder" in capsys.readouterr().err

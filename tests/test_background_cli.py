"""``torchgmm background`` and ``torchgmm evaluate`` end to end on generated data.

A 64x80 clip with a textured static background, sensor noise and a bright square moving on
a known path is written losslessly with PyAV; the command must find the square (recall and
precision after the first frames above the thresholds below) and write every output. The
model runs eagerly (``--no-compile``) to keep the tests fast.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from torchgmm.cli import main  # noqa: E402
from torchgmm.defaults import PRESETS  # noqa: E402
from torchgmm.demo import synthetic_clip  # noqa: E402
from torchgmm.io.images import decode_image_file  # noqa: E402
from torchgmm.io.video import VideoReader  # noqa: E402
from torchgmm.metrics import ChangeDetectionCounter, read_cdnet_sequence_info  # noqa: E402

from _interrupts import ctrl_c_at_call  # noqa: E402
from _videos import make_sequence, read_masks, write_video  # noqa: E402

T, H, W, ENTER = 70, 64, 80, 8
SCORED = ENTER + 2  # the first frames with the square are scored as well; only 2 are skipped
MIN_RECALL, MIN_PRECISION = 0.9, 0.8
FAST = ["--no-compile", "--no-progress", "--device", "cpu"]  # eager on the CPU: quick and deterministic


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny frames: see conftest


def recall_precision(masks: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    m, t = masks[SCORED:], truth[SCORED:]
    tp = (m & t).sum().item()
    return tp / t.sum().item(), tp / max(m.sum().item(), 1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    frames, truth, background = synthetic_clip(T, H, W, enter=ENTER, noise=4.0, seed=7)
    d = tmp_path_factory.mktemp("clip")
    return dict(
        path=write_video(d / "street.mp4", frames, "libx264rgb"), frames=frames, truth=truth, background=background
    )


@pytest.fixture(scope="module")
def cli_run(clip, tmp_path_factory) -> dict:
    """``torchgmm background street.mp4 --out OUT --overlay --no-compile`` in-process."""
    out = tmp_path_factory.mktemp("out")
    code = main(["background", str(clip["path"]), "--out", str(out), "--overlay", *FAST])
    return dict(code=code, out=out / "street")


def test_end_to_end_finds_the_square(clip, cli_run):
    assert cli_run["code"] == 0
    masks = read_masks(cli_run["out"] / "mask.mp4")
    assert masks.shape == (T, 1, H, W)
    recall, precision = recall_precision(masks, clip["truth"])
    assert recall > MIN_RECALL and precision > MIN_PRECISION, (recall, precision)


def test_end_to_end_outputs(clip, cli_run, capsys):
    out = cli_run["out"]
    with VideoReader(out / "overlay.mp4") as reader:
        assert reader.shape == (3, H, W) and len(list(reader)) == T
    learned = decode_image_file(out / "background.png")
    assert learned.shape == (3, H, W)
    assert (learned.float() - clip["background"].float()).abs().mean() < 2.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == T and summary["complete"] and summary["error"] is None
    assert summary["fps"] > 0 and summary["source_fps"] == pytest.approx(25)
    assert summary["settings"] == {**PRESETS["default"], "compile": False}
    assert summary["mask"] == str(out / "mask.mp4") and (summary["width"], summary["height"]) == (W, H)
    # without --start/--end/--step/--size: every frame, at the source's size and rate
    assert (summary["start"], summary["end"], summary["step"], summary["size"]) == (None, None, 1, None)
    assert summary["source_frames"] == {"first": 0, "last": T - 1} and summary["output_fps"] == pytest.approx(25)
    assert (summary["source_width"], summary["source_height"]) == (W, H)


def test_summary_paths_are_absolute_when_given_relative(clip, tmp_path, monkeypatch):
    """summary.json must mean the same read from another folder than the command's."""
    import shutil

    shutil.copy(clip["path"], tmp_path / "street.mp4")
    monkeypatch.chdir(tmp_path)
    assert main(["background", "street.mp4", "--out", "rel-out", *FAST, "--end", "5"]) == 0
    out = tmp_path / "rel-out" / "street"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"] == str(tmp_path / "street.mp4") and summary["output"] == str(out)
    assert summary["mask"] == str(out / "mask.mp4") and summary["background"] == str(out / "background.png")


def test_image_sequence_folder_png(clip, cli_run, tmp_path, capsys):
    from PIL import Image

    seq = tmp_path / "street" / "input"  # CDnet layout: named after the sequence
    seq.mkdir(parents=True)
    for i, f in enumerate(clip["frames"]):
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(seq / f"in{i + 1:06d}.png")
    out = tmp_path / "out"
    argv = [
        "background",
        str(seq),
        "--out",
        str(out),
        "--mask-format",
        "png",
        "--components",
        "4",
        "--learning-rate",
        "0.01",
        *FAST,
    ]
    assert main(argv) == 0
    assert "70 frames" in capsys.readouterr().out
    masks = read_masks(out / "street" / "mask")
    assert masks.shape == (T, 1, H, W)
    recall, precision = recall_precision(masks, clip["truth"])
    assert recall > MIN_RECALL and precision > MIN_PRECISION, (recall, precision)
    settings = json.loads((out / "street" / "summary.json").read_text())["settings"]
    assert settings["n_components"] == 4 and settings["learning_rate"] == 0.01


def test_preset_with_override_reaches_the_model(clip, tmp_path):
    from torchgmm.background import BackgroundSubtractorMOG
    from torchgmm.defaults import PRESETS

    out = tmp_path / "out"
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(out),
        "--preset",
        "cdnet-baseline",
        "--background-ratio",
        "0.6",
        "--mask-format",
        "png",
        *FAST,
    ]
    assert main(argv) == 0
    expected = {**PRESETS["cdnet-baseline"], "background_ratio": 0.6, "compile": False}
    assert expected["rho"] == "constant" and expected["min_var"] == 100.0  # the preset is not the default
    assert json.loads((out / "street" / "summary.json").read_text())["settings"] == expected
    with VideoReader(clip["path"], batch_size=T) as reader:
        (frames,) = list(reader)
    reference = BackgroundSubtractorMOG(**expected).process(frames)
    assert torch.equal(read_masks(out / "street" / "mask"), reference)


def test_postprocess_options_reach_the_masks(clip, tmp_path):
    from torchgmm.background import BackgroundSubtractorMOG
    from torchgmm.postprocess import apply_postprocess

    out = tmp_path / "out"
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(out),
        "--mask-format",
        "png",
        "--median",
        "5",
        "--min-area",
        "30",
        *FAST,
    ]
    assert main(argv) == 0
    summary = json.loads((out / "street" / "summary.json").read_text())
    assert summary["postprocess"] == {"median": 5, "min_area": 30}  # the steps that are on
    with VideoReader(clip["path"], batch_size=T) as reader:
        (frames,) = list(reader)
    raw = BackgroundSubtractorMOG(compile=False).process(frames)
    cleaned = apply_postprocess(raw, median=5, min_area=30)
    assert not torch.equal(cleaned, raw)
    assert torch.equal(read_masks(out / "street" / "mask"), cleaned)


def test_two_inputs_batched_equal_alone(clip, cli_run, tmp_path):
    other = write_video(tmp_path / "other.mkv", synthetic_clip(T, H, W, enter=ENTER, noise=4.0, seed=8)[0])
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), str(other), "--out", str(out), "--batch-streams", "2", *FAST]) == 0
    assert json.loads((out / "street" / "summary.json").read_text())["batch_streams"] == 2
    assert torch.equal(read_masks(out / "street" / "mask.mp4"), read_masks(cli_run["out"] / "mask.mp4"))
    alone = tmp_path / "alone"
    assert main(["background", str(other), "--out", str(alone), *FAST]) == 0
    assert torch.equal(read_masks(out / "other" / "mask.mp4"), read_masks(alone / "other" / "mask.mp4"))


def test_checkpoint_interrupt_resume(clip, cli_run, tmp_path, monkeypatch, capsys):
    from torchgmm.background import BackgroundSubtractorMOG

    forward = BackgroundSubtractorMOG.forward
    argv = ["background", str(clip["path"]), "--out", str(tmp_path), "--checkpoint", "15", *FAST]
    monkeypatch.setattr(
        BackgroundSubtractorMOG, "forward", ctrl_c_at_call(forward, 42)
    )  # at frame 40 (call 1: the compile warm-up)
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert read_masks(tmp_path / "street" / "mask.mp4").shape[0] == 40  # playable
    monkeypatch.setattr(BackgroundSubtractorMOG, "forward", forward)
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((tmp_path / "street" / "summary.json").read_text())
    assert summary["resumed_from"] == 40 and summary["frames"] == T
    assert torch.equal(read_masks(tmp_path / "street" / "mask.mp4"), read_masks(cli_run["out"] / "mask.mp4"))


def _killed_cli_run(argv: list[str], target: str, method: str, call: int) -> None:
    """``torchgmm`` with ``argv`` in a subprocess that SIGKILLs itself at the ``call``-th call of
    ``target.method`` (a class path), as the OOM killer or a preemption would."""
    module, cls = target.rsplit(".", 1)
    script = textwrap.dedent(f"""
        import os, signal, sys
        from {module} import {cls} as target
        from torchgmm.cli import main
        original, calls = target.{method}, [0]
        def killed(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == {call}:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)
        target.{method} = killed
        sys.exit(main({argv!r}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


MODEL, WRITER = "torchgmm.background.BackgroundSubtractorMOG", "torchgmm.io.video.VideoWriter"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize("mask_format", ["mp4", "mkv"])
@pytest.mark.parametrize("second_kill", [None, "during-copy", "after-copy"])
def test_checkpoint_sigkill_resume(clip, cli_run, tmp_path, mask_format, second_kill):
    # A run killed outright never closes its files: the checkpoint must not be ahead of the
    # frames that reached the mask video. A resume killed while it copies the earlier masks
    # into a new file (or just after, before the copy is flushed) must not lose them either.
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(tmp_path),
        "--checkpoint",
        "15",
        "--mask-format",
        mask_format,
        *FAST,
    ]
    _killed_cli_run(
        argv, MODEL, "forward", 42
    )  # before frame 41 (call 1: the compile warm-up): checkpoint at frame 30, one behind
    mask = tmp_path / "street" / f"mask.{mask_format}"
    assert read_masks(mask).shape[0] >= 39  # playable; at most the last frame written is lost
    if second_kill == "during-copy":
        _killed_cli_run([*argv, "--resume"], WRITER, "write", 10)
    elif second_kill == "after-copy":
        _killed_cli_run([*argv, "--resume"], MODEL, "forward", 1)  # the first resumed frame (no warm-up)
    if second_kill:
        assert (tmp_path / "street" / f"mask.previous.{mask_format}").exists()
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((tmp_path / "street" / "summary.json").read_text())
    assert summary["resumed_from"] == 29 and summary["frames"] == T
    assert torch.equal(read_masks(mask), read_masks(cli_run["out"] / "mask.mp4"))
    assert not (tmp_path / "street" / f"mask.previous.{mask_format}").exists()


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "no-stream"])
def test_bad_input_exit_2_before_any_work(clip, tmp_path, capsys, kind):
    if kind == "missing":
        bad, pattern = tmp_path / "nothere.mp4", "nothere.mp4' does not exist"
    elif kind == "text":
        bad, pattern = tmp_path / "notes.mp4", "cannot open .*notes.mp4' as a video"
        bad.write_text("this is text, not a video\n" * 40)
    elif kind == "empty":
        bad, pattern = tmp_path / "frames", "no image files in .*frames"
        bad.mkdir()
    else:
        bad, pattern = tmp_path / "tone.wav", r"tone.wav' has no video stream \(it has 1 other stream"
        with av.open(str(bad), "w") as c:
            s = c.add_stream("pcm_s16le", rate=8000)
            f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            f.sample_rate = 8000
            for p in [*s.encode(f), *s.encode()]:
                c.mux(p)
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), str(bad), "--out", str(out), "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(pattern, err), err
    assert not out.exists()  # the good input was not processed either


def test_bad_arguments_exit_2(clip, tmp_path, capsys):
    argv = ["background", str(clip["path"]), "--out", str(tmp_path / "o")]
    assert main([*argv, "--learning-rate", "1.5"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main([*argv, "--device", "tpu"]) == 2
    assert main([*argv, "--median", "4"]) == 2
    assert "`median` must be 0 (off) or an odd window size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*argv, "--mask-format", "gif"])
    assert info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_truncated_video_writes_frames_then_exit_1(clip, tmp_path, capsys):
    good = write_video(tmp_path / "good.mkv", clip["frames"][:30])
    full = write_video(tmp_path / "full.mkv", clip["frames"])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.5)])
    out = tmp_path / "out"
    assert main(["background", str(cut), str(good), "--out", str(out), "--batch-streams", "2", *FAST]) == 1
    err = capsys.readouterr().err
    summary = json.loads((out / "cut" / "summary.json").read_text())
    n = summary["frames"]
    assert 0 < n < T and summary["error_frame"] == n
    assert f"error: '{cut}' ended at frame {n}" in err and "1 of 2 input(s) failed" in err
    masks = read_masks(out / "cut" / "mask.mp4")  # the frames before the damage, playable
    assert masks.shape[0] == n
    assert (out / "cut" / "background.png").exists()
    assert json.loads((out / "good" / "summary.json").read_text())["complete"]


def test_console_script_subprocess(clip, tmp_path):
    script = Path(sys.executable).with_name("torchgmm")
    if not script.exists():
        pytest.skip("console script not installed")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(script), "background", str(clip["path"]), "--out", str(out), "--gray", "--mask-format", "mkv", *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "street.mp4: 70 frames" in proc.stdout
    masks = read_masks(out / "street" / "mask.mkv")
    recall, precision = recall_precision(masks, clip["truth"])
    assert recall > MIN_RECALL and precision > MIN_PRECISION, (recall, precision)
    assert decode_image_file(out / "street" / "background.png").shape == (1, H, W)


# ----------------------------------------------------------------------------------------
# torchgmm background --start / --end / --step / --size
# ----------------------------------------------------------------------------------------
def model_masks(path: Path, **selection) -> torch.Tensor:
    """The reference: VideoReader with ``selection`` (start/end/step/size), then the model over
    exactly those frames through the Python API."""
    from torchgmm.background import BackgroundSubtractorMOG

    with VideoReader(path, batch_size=1000, **selection) as reader:
        (frames,) = list(reader)
    return BackgroundSubtractorMOG(compile=False).process(frames)


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "options,selection,first,last",
    [
        (["--start", "5", "--end", "2s", "--step", "3"], dict(start=5, end=2.0, step=3), 5, 47),  # 2 s: frame 50
        (["--start", "0.5s", "--step", "4"], dict(start=0.5, step=4), 13, 69),  # 0.5 s: 12.5 -> frame 13
        (["--end", "31"], dict(end=31), 0, 30),
    ],
)
def test_selection_masks_equal_the_model_over_those_frames(clip, tmp_path, options, selection, first, last):
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), "--overlay", *options, *FAST]) == 0
    step = selection.get("step", 1)
    n = (last - first) // step + 1
    masks = read_masks(out / "street" / "mask.mp4")
    assert masks.shape == (n, 1, H, W)  # one mask per processed frame
    assert torch.equal(masks, model_masks(clip["path"], **selection))
    with VideoReader(out / "street" / "mask.mp4") as reader:
        assert reader.fps == pytest.approx(25 / step)  # as long as the part of the video it covers
    with VideoReader(out / "street" / "overlay.mp4") as reader:
        assert reader.fps == pytest.approx(25 / step) and len(list(reader)) == n
    summary = summary_of(out / "street")
    assert summary["frames"] == n and summary["source_frames"] == {"first": first, "last": last}
    given = (summary["start"], summary["end"], summary["step"], summary["size"])
    assert given == (selection.get("start"), selection.get("end"), step, None)
    assert summary["output_fps"] == pytest.approx(25 / step) and summary["source_fps"] == pytest.approx(25)


def test_size_masks_have_that_size_and_find_the_square(clip, tmp_path):
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), "--size", "40x32", "--overlay", *FAST]) == 0
    masks = read_masks(out / "street" / "mask.mp4")
    assert masks.shape == (T, 1, 32, 40)  # W x H = 40 x 32
    assert torch.equal(masks, model_masks(clip["path"], size=(32, 40)))
    # the square at the new scale: pixels it covers at least half must be found; a pixel it
    # reaches at all, or its neighbour (the bilinear filter mixes one pixel further), may be
    covered = torch.nn.functional.interpolate(clip["truth"].float(), size=(32, 40), mode="area")
    half = (covered >= 0.5)[SCORED:]
    near = (torch.nn.functional.max_pool2d(covered, 3, 1, 1) > 0)[SCORED:]
    found = masks[SCORED:]
    recall = (found & half).sum().item() / half.sum().item()
    precision = (found & near).sum().item() / max(found.sum().item(), 1)
    assert recall > MIN_RECALL and precision > MIN_PRECISION, (recall, precision)
    with VideoReader(out / "street" / "overlay.mp4") as reader:
        assert reader.shape == (3, 32, 40) and len(list(reader)) == T  # of the resized frames
    learned = decode_image_file(out / "street" / "background.png")
    assert learned.shape == (3, 32, 40)
    small = torch.nn.functional.interpolate(clip["background"][None].float(), size=(32, 40), mode="area")[0]
    assert (learned.float() - small).abs().mean() < 2.0
    summary = summary_of(out / "street")
    assert (summary["width"], summary["height"], summary["source_width"], summary["source_height"]) == (40, 32, W, H)
    assert summary["size"] == [32, 40] and summary["frames"] == T


def test_image_folder_selection_and_size(clip, tmp_path):
    # image folders are resized by torch (VideoReader._decode_image), video files by swscale
    from PIL import Image

    seq = tmp_path / "cam"
    seq.mkdir()
    for i, f in enumerate(clip["frames"][:30]):
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(seq / f"in{i + 1:06d}.png")
    out = tmp_path / "out"
    argv = [
        "background",
        str(seq),
        "--out",
        str(out),
        "--start",
        "4",
        "--step",
        "2",
        "--size",
        "40x32",
        "--mask-format",
        "png",
        *FAST,
    ]
    assert main(argv) == 0
    masks = read_masks(out / "cam" / "mask")
    assert masks.shape == (13, 1, 32, 40)  # frames 4, 6, ..., 28
    assert torch.equal(masks, model_masks(seq, start=4, step=2, size=(32, 40)))
    assert summary_of(out / "cam")["source_frames"] == {"first": 4, "last": 28}


def test_size_batches_inputs_of_different_sizes(clip, tmp_path):
    short = write_video(tmp_path / "short.mkv", clip["frames"][:20])  # 80x64
    small = write_video(tmp_path / "small.mkv", synthetic_clip(20, 48, 64, enter=4, seed=3)[0])  # 64x48
    out = tmp_path / "out"
    argv = ["background", str(short), str(small), "--out", str(out), "--batch-streams", "2", *FAST]
    assert main([*argv, "--size", "45x27", "--mask-format", "mkv"]) == 0  # odd, not proportional
    for name, path, source in (("short", short, (W, H)), ("small", small, (64, 48))):
        summary = summary_of(out / name)
        assert summary["batch_streams"] == 2 and (summary["width"], summary["height"]) == (45, 27)
        assert (summary["source_width"], summary["source_height"]) == source
        assert torch.equal(read_masks(out / name / "mask.mkv"), model_masks(path, size=(27, 45)))
    assert main([*argv, "--out", str(tmp_path / "unresized")]) == 0  # without --size: one batch per size
    assert [summary_of(tmp_path / "unresized" / name)["batch_streams"] for name in ("short", "small")] == [1, 1]


#: source frames 3, 5, ..., 61 (2.5 s is frame 62.5 -> 63, exclusive): 30 frames at 32x40
SELECTION = {"--start": "3", "--end": "2.5s", "--step": "2", "--size": "40x32"}
SELECTED = dict(start=3, end=2.5, step=2, size=(32, 40))


def selection_argv(**changed) -> list[str]:
    """SELECTION as options, with ``changed`` ones replaced (``start_="4"``) or left out (None)."""
    options = {**SELECTION, **{f"--{k.rstrip('_')}": v for k, v in changed.items()}}
    return [item for key, value in options.items() if value is not None for item in (key, value)]


@pytest.fixture(scope="module")
def selection_run(clip, tmp_path_factory) -> Path:
    """An uninterrupted run with SELECTION, an overlay and checkpoints (the last one: complete)."""
    out = tmp_path_factory.mktemp("selection")
    argv = ["background", str(clip["path"]), "--out", str(out), "--overlay", "--checkpoint", "5", *selection_argv()]
    assert main([*argv, *FAST]) == 0
    return out / "street"


def test_selection_run_processes_the_selected_frames(clip, selection_run):
    masks = read_masks(selection_run / "mask.mp4")
    assert masks.shape == (30, 1, 32, 40)
    assert torch.equal(masks, model_masks(clip["path"], **SELECTED))
    summary = summary_of(selection_run)
    assert summary["source_frames"] == {"first": 3, "last": 61} and summary["output_fps"] == pytest.approx(12.5)
    ckpt = torch.load(selection_run / "checkpoint.pt", weights_only=True)
    assert ckpt["selection"] == dict(start=3, end=63, step=2, size=[32, 40]) and ckpt["frames_done"] == 30
    assert ckpt["size"] == [32, 40] and ckpt["source_size"] == [H, W]


def test_checkpoint_interrupt_resume_with_selection(clip, selection_run, tmp_path, monkeypatch, capsys):
    from torchgmm.background import BackgroundSubtractorMOG

    forward = BackgroundSubtractorMOG.forward
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(tmp_path),
        "--overlay",
        "--checkpoint",
        "5",
        *selection_argv(),
        *FAST,
    ]
    monkeypatch.setattr(
        BackgroundSubtractorMOG, "forward", ctrl_c_at_call(forward, 19)
    )  # 17 frames done (call 1: the compile warm-up)
    assert main(argv) == 130
    assert read_masks(tmp_path / "street" / "mask.mp4").shape == (17, 1, 32, 40)
    monkeypatch.setattr(BackgroundSubtractorMOG, "forward", forward)
    assert main([*argv, "--resume"]) == 0
    summary = summary_of(tmp_path / "street")
    assert summary["resumed_from"] == 17 and summary["frames"] == 30
    assert summary["source_frames"] == {"first": 3, "last": 61}
    assert torch.equal(read_masks(tmp_path / "street" / "mask.mp4"), read_masks(selection_run / "mask.mp4"))
    # the overlay's first frames are rebuilt from the selected, resized frames
    for name in ("overlay.mp4", "background.png"):
        assert (tmp_path / "street" / name).read_bytes() == (selection_run / name).read_bytes(), name


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_checkpoint_sigkill_resume_with_selection(clip, selection_run, tmp_path):
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(tmp_path),
        "--checkpoint",
        "5",
        "--mask-format",
        "mkv",
        *selection_argv(),
        *FAST,
    ]
    _killed_cli_run(
        argv, MODEL, "forward", 19
    )  # 17 frames done (call 1: the warm-up): the checkpoint is at 14, one behind 15
    assert read_masks(tmp_path / "street" / "mask.mkv").shape[0] >= 15
    assert main([*argv, "--resume"]) == 0
    summary = summary_of(tmp_path / "street")
    assert summary["resumed_from"] == 14 and summary["frames"] == 30
    assert torch.equal(read_masks(tmp_path / "street" / "mask.mkv"), read_masks(selection_run / "mask.mp4"))


@pytest.mark.parametrize(
    "changed,reason",
    [
        (dict(step="3"), "the step differs"),
        (dict(start="4"), "the start differs"),
        (dict(end="62"), "the end differs"),
        (dict(size="40x30"), "the size differs"),
        (dict(size=None), "the size differs"),
        (dict(start=None, end=None, step=None, size=None), "the start and end and step and size differ"),
    ],
)
def test_resume_with_another_selection_refused_before_any_work(clip, selection_run, tmp_path, capsys, changed, reason):
    out = tmp_path / "out"
    shutil.copytree(selection_run, out / "street")
    before = {p.name: p.read_bytes() for p in (out / "street").iterdir()}
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(out),
        "--overlay",
        "--checkpoint",
        "5",
        "--resume",
        *selection_argv(**changed),
        *FAST,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was made with start=3, end=63, step=2 (source frame indices), size=40x32" in err, err
    assert reason in err and "Resume with the same --start/--end/--step/--size" in err
    assert {p.name: p.read_bytes() for p in (out / "street").iterdir()} == before  # nothing was done


def test_resume_compares_the_selection_as_frame_indices(clip, selection_run, tmp_path):
    # 0.12 s is frame 3 and frame 63 is 2.5 s at 25 frames/s: the same frames, so the resume goes on
    out = tmp_path / "out"
    shutil.copytree(selection_run, out / "street")
    argv = [
        "background",
        str(clip["path"]),
        "--out",
        str(out),
        "--overlay",
        "--checkpoint",
        "5",
        "--resume",
        *selection_argv(start="0.12s", end="63"),
        *FAST,
    ]
    assert main(argv) == 0
    assert summary_of(out / "street")["resumed_from"] == 30
    assert torch.equal(read_masks(out / "street" / "mask.mp4"), read_masks(selection_run / "mask.mp4"))


def test_resume_accepts_the_same_frames_spelled_otherwise(clip, tmp_path):
    # an --end past the last frame and a --size equal to the input's select what no option does
    argv = ["background", str(clip["path"]), "--out", str(tmp_path), "--checkpoint", "5", *FAST]
    assert main([*argv, "--end", "30"]) == 0  # a first run of 30 frames, checkpointed
    assert main([*argv, "--resume"]) == 2  # another end: refused
    assert main([*argv, "--end", "30", "--size", f"{W}x{H}", "--resume"]) == 0
    assert summary_of(tmp_path / "street")["resumed_from"] == 30
    assert main([*argv, "--end", "1000", "--resume"]) == 2  # 1000 is not 30
    full = tmp_path / "full"
    assert main(["background", str(clip["path"]), "--out", str(full), "--checkpoint", "5", *FAST]) == 0
    assert (
        main(
            [
                "background",
                str(clip["path"]),
                "--out",
                str(full),
                "--checkpoint",
                "5",
                "--end",
                "1000",
                "--size",
                f"{W}x{H}",
                "--resume",
                *FAST,
            ]
        )
        == 0
    )
    assert summary_of(full / "street")["resumed_from"] == T


@pytest.mark.parametrize(
    "options,message",
    [
        (["--step", "0"], r"`step` must be >= 1, got 0"),
        (["--step", "-2"], r"`step` must be >= 1, got -2"),
        (["--start", "-3"], r"`start` must be >= 0, got -3"),
        (["--end=-1s"], r"`end` \(seconds\) must be finite and >= 0, got -1.0"),
        (["--start", "20", "--end", "20"], r"`end` \(frame 20\) must come after `start` \(frame 20\) for .*street"),
        (["--start", "1s", "--end", "20"], r"`end` \(frame 20\) must come after `start` \(1 s = frame 25\)"),
        (["--start", "70"], r"`start` \(frame 70\) is at or after the end of .*street.mp4' \(70 frames"),
        (["--start", "3s"], r"`start` \(3 s = frame 75\) is at or after the end"),
        (["--start", "1.5"], r"`--start` must be a frame index \(e.g. 300\) or a time in seconds"),
        (["--end", "ten"], r"`--end` must be a frame index"),
        (["--size", "40"], r"`--size` must be WIDTHxHEIGHT in pixels, both >= 1 \(e.g. 640x360\), got '40'"),
        (["--size", "0x32"], r"`--size` must be WIDTHxHEIGHT"),
        (["--size", "40x-32"], r"`--size` must be WIDTHxHEIGHT"),
    ],
)
def test_bad_selection_exit_2_before_any_work(clip, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), *options, *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not out.exists()


def test_step_must_be_an_integer(clip, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["background", str(clip["path"]), "--out", str(tmp_path / "out"), "--step", "1.5", *FAST])
    assert info.value.code == 2 and "--step: invalid int value: '1.5'" in capsys.readouterr().err


def test_start_past_an_estimated_end_fails_when_read(clip, tmp_path, capsys):
    # Matroska announces no frame count: it is estimated from the duration, with some slack, so
    # a start just past the end is found out when the input is read; well past it, before any work
    short = write_video(tmp_path / "short.mkv", clip["frames"][:20])
    out = tmp_path / "out"
    assert main(["background", str(short), "--out", str(out), "--start", "21", *FAST]) == 1
    assert "short.mkv' ended before frame 21 (`start`): no frame was processed" in capsys.readouterr().err
    summary = summary_of(out / "short")
    assert summary["frames"] == 0 and not summary["complete"] and summary["source_frames"] is None
    assert main(["background", str(short), "--out", str(tmp_path / "o2"), "--start", "25", *FAST]) == 2
    assert "is at or after the end of" in capsys.readouterr().err and not (tmp_path / "o2").exists()


# ----------------------------------------------------------------------------------------
# torchgmm evaluate
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny CDnet-layout dataset with one sequence, baseline/easy (see make_sequence)."""
    root = tmp_path_factory.mktemp("cdnet")
    make_sequence(root / "baseline" / "easy")
    return root


def test_evaluate_cli(dataset, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["evaluate", str(dataset), "--out", str(out), *FAST, "--median", "3"]) == 0
    printed = capsys.readouterr().out
    assert "baseline/easy" in printed and "baseline/mean" in printed and "overall/mean" in printed
    assert "with post-processing" in printed
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    row = rows[0]
    # what was run is recorded beside the scores: the preset as given, the post-processing
    from torchgmm.defaults import PRESETS

    settings = result["settings"]
    assert settings["preset"] == "default" and settings["methods"] == ["torchgmm"]
    assert settings["model"] == json.loads(json.dumps({**PRESETS["default"], "compile": False}, default=str))
    assert settings["postprocess"] == {"median": 3, "opening": 0, "min_area": 0}
    assert settings["root"] == str(dataset.resolve()) and settings["device"] == "cpu"
    assert (row["method"], row["sequence"], row["frames"]) == ("torchgmm", "baseline/easy", 40)
    # the F-measure is the metrics module's on the model's masks
    from torchgmm.background import BackgroundSubtractorMOG

    seq = dataset / "baseline" / "easy"
    with VideoReader(seq / "input") as r:
        frames = torch.stack(list(r))
    with VideoReader(seq / "groundtruth", gray=True) as r:
        labels = torch.stack(list(r))
    info = read_cdnet_sequence_info(seq)
    counter = ChangeDetectionCounter(roi=info.roi, temporal_roi=info.temporal_roi)
    counter.update(BackgroundSubtractorMOG(compile=False).process(frames), labels)
    expected = counter.compute()
    assert row["F-measure"] == expected["F-measure"] and row["TP"] == expected["TP"]
    assert row["F-measure"] > 0.9
    assert f"{row['F-measure']:7.4f}" in printed
    with open(out / "results.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["sequence"] for line in lines] == ["baseline/easy", "baseline/mean", "overall/mean"]
    assert float(lines[0]["F-measure"]) == pytest.approx(row["F-measure"])
    assert float(lines[0]["post_F-measure"]) == pytest.approx(row["postprocessed"]["F-measure"])


def test_evaluate_cli_errors(dataset, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no CDnet sequences" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(dataset), "--method", "nope"])
    assert main(["evaluate", str(dataset), "--median", "4", "--out", str(tmp_path / "r")]) == 2
    assert "`median` must be 0 (off) or an odd window size >= 1, got 4" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any work
    assert main(["evaluate", str(dataset), "--min-area", "-5"]) == 2
    assert "`min_area` must be an int >= 0" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--classes", "0"]) == 2
    assert "n_classes" in capsys.readouterr().err


def test_evaluate_cli_without_postprocessing(dataset, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["evaluate", str(dataset), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "baseline/easy" in printed and "with post-processing" not in printed
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert "postprocessed" not in row and row["F-measure"] > 0.9


def test_evaluate_out_is_a_file_exit_2_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    import torchgmm.jobs.evaluate as evaluate_job

    ran = []
    monkeypatch.setattr(evaluate_job, "evaluate_sequence", lambda *a, **k: ran.append(a))
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    assert main(["evaluate", str(dataset), "--out", str(blocker), *FAST]) == 2
    assert "results" in capsys.readouterr().err and not ran


def test_evaluate_keeps_finished_sequences_when_one_fails(tmp_path, capsys):
    root = tmp_path / "cdnet"
    make_sequence(root / "a" / "good", n=24)
    bad = make_sequence(root / "b" / "corrupt", n=24, seed=12)
    (bad / "input" / "in000015.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "res"
    assert main(["evaluate", str(root), "--out", str(out), *FAST]) == 1
    captured = capsys.readouterr()
    assert "a/good" in captured.out and "b/corrupt" in captured.out and "failed" in captured.out
    assert "in000015.jpg" in captured.err and "1 sequence run(s) failed" in captured.err
    rows = {r["sequence"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["a/good"]["F-measure"] > 0.8 and rows["b/corrupt"]["error_type"] == "VideoDecodeError"
    assert rows["overall/mean"]["F-measure"] == rows["a/good"]["F-measure"]  # the failed one is left out


def test_evaluate_refuses_a_numbering_gap_before_any_work(tmp_path, capsys):
    seq = make_sequence(tmp_path / "cdnet" / "baseline" / "gap", n=24)
    (seq / "input" / "in000012.jpg").unlink()
    (seq / "input" / "in000025.jpg").write_bytes((seq / "input" / "in000024.jpg").read_bytes())  # same count
    assert main(["evaluate", str(tmp_path / "cdnet"), "--out", str(tmp_path / "r"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "jump from 11 to 13 (in000013.jpg)" in err and not (tmp_path / "r").exists()


def test_evaluate_refuses_ground_truth_that_is_not_cdnet_coded(tmp_path, capsys):
    make_sequence(tmp_path / "cdnet" / "baseline" / "binary", n=24, gt_scale=255)  # motion stored as 1
    assert main(["evaluate", str(tmp_path / "cdnet"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "hold values other than CDnet's labels" in err and "groundtruth" in err


def test_evaluate_refuses_an_empty_roi(tmp_path, capsys):
    from PIL import Image

    seq = make_sequence(tmp_path / "cdnet" / "baseline" / "noroi", n=12)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(seq / "ROI.bmp")
    assert main(["evaluate", str(tmp_path / "cdnet"), *FAST]) == 2
    assert "selects no pixel" in capsys.readouterr().err


def test_output_folder_that_is_a_file_exit_2_before_any_work(clip, tmp_path, capsys):
    other = write_video(tmp_path / "other.mkv", clip["frames"][:5])
    out = tmp_path / "out"
    out.mkdir()
    (out / "street").write_text("in the way")
    assert main(["background", str(other), str(clip["path"]), "--out", str(out), *FAST]) == 2
    assert "street' is a file" in capsys.readouterr().err
    assert not (out / "other").exists()  # nothing was run
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["background", str(other), "--out", str(blocker), *FAST]) == 2
    assert "afile" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_another_input(clip, tmp_path, capsys):
    # MP4 headers hold the frame count (a Matroska count is only estimated and is not bound)
    (tmp_path / "long").mkdir()
    long_clip = write_video(tmp_path / "long" / "cam.mp4", clip["frames"][:30], "libx264rgb")
    (tmp_path / "short").mkdir()
    short_clip = write_video(tmp_path / "short" / "cam.mp4", clip["frames"][:5], "libx264rgb")
    out = tmp_path / "out"
    assert main(["background", str(long_clip), "--out", str(out), "--checkpoint", "12", *FAST]) == 0
    assert main(["background", str(short_clip), "--out", str(out), "--checkpoint", "12", "--resume", *FAST]) == 2
    err = capsys.readouterr().err
    assert "made for an input of 30 frames is at frame 30" in err and "has 5 frames" in err
    assert "belongs to another input" in err


def test_resume_refuses_a_checkpoint_of_another_matroska_input(clip, tmp_path, capsys):
    # Matroska has no frame count in its header; the checkpoint is tied to the file's size
    (tmp_path / "day1").mkdir()
    (tmp_path / "day2").mkdir()
    first = write_video(tmp_path / "day1" / "cam.mkv", clip["frames"][:30])
    other = write_video(tmp_path / "day2" / "cam.mkv", clip["frames"][30:50])
    out = tmp_path / "out"
    assert main(["background", str(first), "--out", str(out), "--checkpoint", "12", *FAST]) == 0
    assert main(["background", str(other), "--out", str(out), "--checkpoint", "12", "--resume", *FAST]) == 2
    assert "was made for an input file of" in capsys.readouterr().err
    moved = tmp_path / "moved.mkv"  # the same file elsewhere still resumes
    moved.write_bytes(first.read_bytes())
    (out / "moved").mkdir()
    for name in ("checkpoint.pt", "mask.mp4"):
        (out / "moved" / name).write_bytes((out / "cam" / name).read_bytes())
    assert main(["background", str(moved), "--out", str(out), "--checkpoint", "12", "--resume", *FAST]) == 0


def test_png_resume_refuses_missing_frames(clip, tmp_path, capsys):
    short = write_video(tmp_path / "cam.mkv", clip["frames"][:20])
    argv = [
        "background",
        str(short),
        "--out",
        str(tmp_path / "out"),
        "--checkpoint",
        "6",
        "--mask-format",
        "png",
        *FAST,
    ]
    assert main([*argv, "--gray"]) == 0  # checkpoint at frame 20: a complete run
    (tmp_path / "out" / "cam" / "mask" / "000005.png").unlink()
    assert main([*argv, "--gray", "--resume"]) == 2
    assert "first: 000005.png" in capsys.readouterr().err


def test_ctrl_c_while_finishing_still_writes_summary_and_checkpoint(clip, cli_run, tmp_path, monkeypatch, capsys):
    # Ctrl-C while the last frame's outputs are finalised (writing background.png): the
    # stream is finished again as interrupted, so summary and checkpoint are written
    import torchgmm.jobs.background as background_job

    write_png = background_job.write_png
    argv = ["background", str(clip["path"]), "--out", str(tmp_path), "--checkpoint", "25", *FAST]
    monkeypatch.setattr(background_job, "write_png", ctrl_c_at_call(write_png, 1))
    assert main(argv) == 130
    summary = json.loads((tmp_path / "street" / "summary.json").read_text())
    assert summary["frames"] == T and summary["error"] == "interrupted" and not summary["complete"]
    assert (tmp_path / "street" / "background.png").exists()
    monkeypatch.setattr(background_job, "write_png", write_png)
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((tmp_path / "street" / "summary.json").read_text())
    assert summary["complete"] and summary["resumed_from"] == T  # the checkpoint has every frame
    assert summary["fps"] is None  # nothing was left to do: no rate (it said 0.0 frames/s)
    assert torch.equal(read_masks(tmp_path / "street" / "mask.mp4"), read_masks(cli_run["out"] / "mask.mp4"))


def test_stale_temporaries_of_a_killed_run_are_removed(clip, tmp_path):
    out = tmp_path / "out" / "cam"
    out.mkdir(parents=True)
    (out / ".summary.json.k3j_x9q2.tmp").write_text("half")
    (out / "notes.tmp").write_text("not ours")
    short = write_video(tmp_path / "cam.mkv", clip["frames"][:3])
    assert main(["background", str(short), "--out", str(tmp_path / "out"), *FAST]) == 0
    assert not (out / ".summary.json.k3j_x9q2.tmp").exists() and (out / "notes.tmp").exists()


def test_interrupted_evaluate_keeps_complete_results(dataset, tmp_path, monkeypatch, capsys):
    import torchgmm.jobs.evaluate as evaluate_job

    out = tmp_path / "res"
    assert main(["evaluate", str(dataset), "--out", str(out), *FAST]) == 0
    complete = (out / "results.json").read_text()
    assert json.loads(complete)["complete"] is True

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_job, "evaluate_sequence", ctrl_c)
    assert main(["evaluate", str(dataset), "--out", str(out), *FAST]) == 130
    assert "results-interrupted.json" in capsys.readouterr().err
    assert (out / "results.json").read_text() == complete  # not replaced by a partial table
    partial = json.loads((out / "results-interrupted.json").read_text())
    assert partial["complete"] is False and partial["rows"] == []
    monkeypatch.undo()
    assert main(["evaluate", str(dataset), "--out", str(out), *FAST]) == 0
    assert not (out / "results-interrupted.json").exists() and not (out / "results-interrupted.csv").exists()


def test_demo_background_part(tmp_path):
    from torchgmm.demo import run_background_demo

    result = run_background_demo(tmp_path, n_frames=50, height=48, width=64)  # CPU, eager
    assert (tmp_path / "clip.mkv").exists()
    assert read_masks(tmp_path / "clip" / "mask.mp4").shape == (50, 1, 48, 64)
    assert Path(result["background"]) == tmp_path / "clip" / "background.png"
    assert result["recall"] > MIN_RECALL and result["precision"] > MIN_PRECISION
    assert result["background_error"] < 2.0


def _raw_masks(path: Path) -> torch.Tensor:
    """A mask video -> (T, 1, H, W) uint8, the values as written (0, 127, 255)."""
    with VideoReader(path, batch_size=1000) as reader:
        return torch.cat(list(reader))[:, :1]


def test_model_mog2_with_shadows_writes_opencvs_three_values(clip, tmp_path):
    # the written masks are BackgroundSubtractorMOG2.apply's, frame for frame, on the decoded frames
    from torchgmm.mog2 import BackgroundSubtractorMOG2

    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), "--model", "mog2", "--shadows", *FAST]) == 0
    written = _raw_masks(out / "street" / "mask.mp4")
    model = BackgroundSubtractorMOG2(detect_shadows=True, compile=False)
    with VideoReader(clip["path"]) as reader:
        expected = torch.stack([model.apply(frame[None])[0] for frame in reader])[:, None]
    assert torch.equal(written, expected)
    assert set(written.unique().tolist()) == {0, 127, 255}  # the first frame reads as shadow (as OpenCV's)
    # OpenCV's defaults (history 500, varThreshold 16) find less of the square than the
    # Stauffer-Grimson defaults do on this clip (0.83 measured), and no false foreground
    recall, precision = recall_precision(written == 255, clip["truth"])
    assert recall > 0.75 and precision > MIN_PRECISION, (recall, precision)
    summary = json.loads((out / "street" / "summary.json").read_text())
    assert summary["model"] == "mog2" and summary["shadows"] is True
    assert summary["settings"]["detect_shadows"] is True


def test_model_mog2_without_shadows_writes_two_values(clip, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "background",
                str(clip["path"]),
                "--out",
                str(out),
                "--model",
                "mog2",
                "--components",
                "3",
                "--learning-rate",
                "0.01",
                *FAST,
            ]
        )
        == 0
    )
    written = _raw_masks(out / "street" / "mask.mp4")
    assert set(written.unique().tolist()) == {0, 255}
    summary = json.loads((out / "street" / "summary.json").read_text())
    # --components is MOG2's n_mixtures, --learning-rate ALPHA its history round(1 / ALPHA)
    assert summary["shadows"] is False
    assert summary["settings"] == dict(detect_shadows=False, n_mixtures=3, history=100, compile=False)


def test_model_mog2_refuses_a_preset_and_a_zero_rate(clip, tmp_path, capsys):
    argv = ["background", str(clip["path"]), "--out", str(tmp_path / "o"), "--model", "mog2", *FAST]
    assert main([*argv, "--preset", "cdnet-baseline"]) == 2
    assert "does not apply to --model mog2" in capsys.readouterr().err
    assert main([*argv, "--learning-rate", "0"]) == 2
    assert "--learning-rate must be > 0 with --model mog2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_checkpoint_of_the_other_model(clip, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["background", str(clip["path"]), "--out", str(out), "--checkpoint", "20", *FAST]
    assert main(argv) == 0
    masks = (out / "street" / "mask.mp4").read_bytes()
    assert main([*argv, "--model", "mog2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was made with model 'mog'; this run has 'mog2'" in err
    assert (out / "street" / "mask.mp4").read_bytes() == masks  # nothing already produced is lost


def test_shadows_with_the_default_model_write_its_apply_masks(clip, tmp_path):
    # Stauffer-Grimson with --shadows: the masks are BackgroundSubtractorMOG.apply's (0 / 127 / 255)
    from torchgmm import BackgroundSubtractorMOG

    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), "--shadows", *FAST]) == 0
    written = _raw_masks(out / "street" / "mask.mp4")
    model = BackgroundSubtractorMOG(detect_shadows=True, compile=False)
    with VideoReader(clip["path"]) as reader:
        expected = torch.stack([model.apply(frame[None])[0] for frame in reader])
    assert torch.equal(written, expected)
    assert set(written.unique().tolist()) <= {0, 127, 255} and (written == 255).any()
    summary = json.loads((out / "street" / "summary.json").read_text())
    assert summary["model"] == "mog" and summary["shadows"] is True


def test_decoder_torchcodec_gives_the_same_masks(clip, cli_run, tmp_path):
    from torchgmm.io.video import video_backends

    if "torchcodec" not in video_backends():  # not installed, or FFmpeg's libraries missing
        pytest.skip('needs TorchCodec (pip install "torchmog[torchcodec]") and FFmpeg\'s libraries')
    out = tmp_path / "out"
    assert main(["background", str(clip["path"]), "--out", str(out), "--decoder", "torchcodec", *FAST]) == 0
    assert torch.equal(read_masks(out / "street" / "mask.mp4"), read_masks(cli_run["out"] / "mask.mp4"))
    assert json.loads((out / "street" / "summary.json").read_text())["decoder"] == "torchcodec"


def test_decoder_that_cannot_serve_exit_2_before_any_work(clip, tmp_path, capsys, monkeypatch):
    import torchgmm.jobs.background as background_job

    argv = ["background", str(clip["path"]), "--out", str(tmp_path / "o"), "--decoder", "torchcodec", *FAST]
    monkeypatch.setattr(background_job, "video_backends", lambda names: tuple(n for n in names if n == "pyav"))
    assert main(argv) == 2
    assert "decoder 'torchcodec' cannot be imported here" in capsys.readouterr().err
    monkeypatch.setattr(background_job, "video_backends", lambda names: tuple(names))
    assert main([*argv, "--on-damage", "skip"]) == 2
    assert "needs decoder 'pyav'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

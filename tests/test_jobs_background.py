"""``torchgmm.jobs``: run_background on generated videos, and the CDnet evaluation helpers.

The videos are written here with PyAV directly (FFV1, lossless), so the frames the pipeline
decodes are exactly the generated ones and the true foreground is known per pixel. The model
runs eagerly (``compile=False``) to keep the tests fast; compiled equals eager is tested in
``test_background.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

import torchgmm.jobs.background as background_job  # noqa: E402
from torchgmm.background import BackgroundSubtractorMOG  # noqa: E402
from torchgmm.defaults import PRESETS  # noqa: E402
from torchgmm.demo import synthetic_clip  # noqa: E402
from torchgmm.io.images import decode_image_file  # noqa: E402
from torchgmm.io.video import VideoDecodeError, VideoReader, VideoWriter  # noqa: E402
from torchgmm.metrics import ChangeDetectionCounter, read_cdnet_sequence_info  # noqa: E402
from _interrupts import ctrl_c_at_call  # noqa: E402
from _videos import read_masks, write_video  # noqa: E402
from torchgmm.jobs import (  # noqa: E402
    FrameSelection,
    MaskOutputs,
    evaluate_dataset,
    evaluate_sequence,
    find_cdnet_sequences,
    format_table,
    method_factories,
    run_background,
)
from torchgmm.jobs._threads import SMALL_STEP_PIXELS, step_threads  # noqa: E402
from torchgmm.jobs.baselines import _opencv_subtractor  # noqa: E402
from torchgmm.postprocess import apply_postprocess  # noqa: E402

T, H, W, ENTER = 50, 64, 80, 8
EAGER = dict(compile=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny frames: see conftest


#: summary entries that differ between two runs of the same frames (into other folders)
_RUN_DEPENDENT = ("fps", "seconds", "resumed_from", "output", "mask", "overlay", "background")


_FRAME_KEYS = {field.name for field in dataclasses.fields(FrameSelection)}
_OUTPUT_KEYS = {"mask_format": "format", "overlay": "overlay", "postprocess": "postprocess"}
_RUN_KEYS = set(inspect.signature(run_background).parameters)


def run(inputs, out, *, stop_after: int | None = None, model_options=EAGER, **kwargs) -> list[dict]:
    """run_background on the CPU, eagerly, quietly (unless told otherwise). Flat keywords are
    sorted into FrameSelection, MaskOutputs and model options; ``stop_after`` stops each batch
    after that many processed frames (an interrupted run)."""
    frames = FrameSelection(**{k: kwargs.pop(k) for k in list(kwargs) if k in _FRAME_KEYS})
    outputs = MaskOutputs(**{_OUTPUT_KEYS[k]: kwargs.pop(k) for k in list(kwargs) if k in _OUTPUT_KEYS})
    settings = {**(model_options or {}), **{k: kwargs.pop(k) for k in list(kwargs) if k not in _RUN_KEYS}}
    kwargs = {"device": "cpu", "progress": False, **kwargs}
    if stop_after is None:
        return run_background(inputs, out, model_options=settings, frames=frames, outputs=outputs, **kwargs)
    options = background_job._Options.create(model_options=settings, frames=frames, outputs=outputs, **kwargs)
    return background_job._run_background(inputs, out, options, stop_after=stop_after)


def eager_masks(frames: torch.Tensor, **settings) -> torch.Tensor:
    """The reference: the model itself, fed frame by frame."""
    return BackgroundSubtractorMOG(**settings, compile=False).process(frames)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """Two generated clips of the same size (different lengths) and their true foreground."""
    d = tmp_path_factory.mktemp("clips")
    a, truth_a, bg_a = synthetic_clip(T, H, W, enter=ENTER, noise=4.0, seed=1)
    b, truth_b, _ = synthetic_clip(40, H, W, enter=ENTER, noise=4.0, seed=2)
    return dict(
        a=write_video(d / "a.mkv", a),
        b=write_video(d / "b.mkv", b),
        frames_a=a,
        frames_b=b,
        truth_a=truth_a,
        truth_b=truth_b,
        background_a=bg_a,
    )


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory) -> dict:
    """One uninterrupted run on clip a (PNG masks)."""
    out = tmp_path_factory.mktemp("ref")
    (summary,) = run([clips["a"]], out, mask_format="png")
    return dict(summary=summary, masks=read_masks(summary["mask"]))


class TestRunBackground:
    def test_masks_match_truth_and_model(self, clips, reference):
        masks = reference["masks"]
        assert masks.shape == (T, 1, H, W)
        # what the pipeline writes is exactly what the model computes on the decoded frames
        assert torch.equal(masks, eager_masks(clips["frames_a"]))
        truth = clips["truth_a"]
        tp = (masks & truth)[ENTER + 2 :].sum().item()
        assert tp / truth[ENTER + 2 :].sum().item() > 0.9  # recall
        assert tp / masks[ENTER + 2 :].sum().item() > 0.8  # precision

    def test_outputs_and_summary(self, clips, reference):
        s = reference["summary"]
        out = Path(s["output"])
        assert out.name == "a" and s["input"] == str(clips["a"])
        assert sorted(p.name for p in (out / "mask").iterdir()) == [f"{i:06d}.png" for i in range(T)]
        assert s["frames"] == T and s["complete"] and s["error"] is None and s["fps"] > 0
        assert (
            s["settings"]["learning_rate"] == PRESETS["default"]["learning_rate"] and s["settings"]["compile"] is False
        )
        assert json.loads((out / "summary.json").read_text()) == s
        learned = decode_image_file(out / "background.png")
        assert learned.shape == (3, H, W)
        assert (learned.float() - clips["background_a"].float()).abs().mean() < 2
        assert not (out / "checkpoint.pt").exists()

    def test_batched_equals_separate(self, clips, reference, tmp_path):
        # b is shorter: it leaves the batch after 40 frames while a goes on
        summaries = run([clips["a"], clips["b"]], tmp_path, batch_streams=2, mask_format="mkv")
        assert [s["batch_streams"] for s in summaries] == [2, 2]
        assert [s["frames"] for s in summaries] == [T, 40]
        assert torch.equal(read_masks(summaries[0]["mask"]), reference["masks"])
        assert torch.equal(read_masks(summaries[1]["mask"]), eager_masks(clips["frames_b"]))
        learned = decode_image_file(tmp_path / "b" / "background.png")
        alone = BackgroundSubtractorMOG(compile=False)
        alone.process(clips["frames_b"])
        assert torch.equal(learned, alone.background_image()[0])

    def test_resume_after_stop_equals_uninterrupted(self, clips, reference, tmp_path, monkeypatch):
        saved = {}
        original = background_job.save_checkpoint

        def keep_copies(path, state, frames_done, *args, **kwargs):
            original(path, state, frames_done, *args, **kwargs)
            saved[frames_done] = path.read_bytes()

        monkeypatch.setattr(background_job, "save_checkpoint", keep_copies)
        kwargs = dict(mask_format="mp4", checkpoint_every=20)
        (s,) = run([clips["a"]], tmp_path, stop_after=37, **kwargs)
        assert s["frames"] == 37 and not s["complete"]
        # at frame 20 the state after 19 (one frame behind what is written), and where it stopped
        assert sorted(saved) == [19, 37]
        early = torch.load(io.BytesIO(saved[19]), weights_only=True)
        assert early["frames_done"] == 19 and int(early["state"]["frames_seen"]) == 19
        # a single-stream checkpoint holds that stream's state only
        state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state"]
        assert state["weight"].shape == (1, 3, H, W) and int(state["frames_seen"]) == 37

        # a crash (no final checkpoint): the mask video holds 37 frames, the checkpoint says 19
        (tmp_path / "a" / "checkpoint.pt").write_bytes(saved[19])
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert s["resumed_from"] == 19 and s["frames"] == T and s["complete"]
        assert torch.equal(read_masks(tmp_path / "a" / "mask.mp4"), reference["masks"])

    def test_resumed_overlay_equals_uninterrupted(self, clips, tmp_path):
        # The lossy overlay's first frames are rebuilt from the input and the lossless masks on
        # resume, not decoded and re-encoded (which lost about one grey level per resume).
        kwargs = dict(overlay=True, checkpoint_every=10)
        run([clips["a"]], tmp_path / "full", **kwargs)
        run([clips["a"]], tmp_path / "cut", stop_after=25, **kwargs)
        for _ in range(3):  # later resumes start from the final checkpoint: everything is copied
            (summary,) = run([clips["a"]], tmp_path / "cut", resume=True, **kwargs)
        assert summary["complete"] and summary["resumed_from"] == T

        def overlay(root):
            with VideoReader(root / "a" / "overlay.mp4", batch_size=1000) as reader:
                return next(iter(reader))

        assert torch.equal(overlay(tmp_path / "cut"), overlay(tmp_path / "full"))

    def test_resume_png_from_final_checkpoint(self, clips, reference, tmp_path):
        kwargs = dict(mask_format="png", checkpoint_every=25)
        run([clips["a"]], tmp_path, stop_after=33, **kwargs)
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert s["resumed_from"] == 33
        assert torch.equal(read_masks(tmp_path / "a" / "mask"), reference["masks"])

    def test_warm_up_step_only_on_a_fresh_start(self, clips, reference, tmp_path, monkeypatch):
        # a fresh batch compiles on one throwaway frame first; a resumed one, whose model
        # already holds its state, does not (a second state would double the memory)
        calls = []
        forward = BackgroundSubtractorMOG.forward

        def counted(self, frames, *args, **kwargs):
            calls.append(int(self.frames_seen) if self.is_initialized else None)
            return forward(self, frames, *args, **kwargs)

        monkeypatch.setattr(BackgroundSubtractorMOG, "forward", counted)
        kwargs = dict(mask_format="png", checkpoint_every=10)
        run([clips["a"]], tmp_path, stop_after=20, **kwargs)
        assert calls[:2] == [None, None] and len(calls) == 21  # the warm-up, then frames 0..19
        calls.clear()
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert calls[0] == 20 and len(calls) == s["frames"] - 20
        assert torch.equal(read_masks(tmp_path / "a" / "mask"), reference["masks"])

    def test_resume_batched(self, clips, reference, tmp_path):
        kwargs = dict(batch_streams=2, mask_format="png", checkpoint_every=10)
        run([clips["b"], clips["a"]], tmp_path, stop_after=30, **kwargs)
        for name, n in (("a", 30), ("b", 30)):
            ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
            assert ckpt["frames_done"] == n and ckpt["state"]["mean"].shape[0] == 1
        summaries = run([clips["b"], clips["a"]], tmp_path, resume=True, **kwargs)
        assert [s["resumed_from"] for s in summaries] == [30, 30]
        assert torch.equal(read_masks(tmp_path / "a" / "mask"), reference["masks"])
        assert torch.equal(read_masks(tmp_path / "b" / "mask"), eager_masks(clips["frames_b"]))

    def test_postprocessed_masks_resume_alike(self, clips, reference, tmp_path):
        post = dict(median=3, opening=3, min_area=12)
        kwargs = dict(mask_format="png", checkpoint_every=10, postprocess=post)
        run([clips["a"]], tmp_path, stop_after=23, **kwargs)
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert s["resumed_from"] == 23 and s["complete"] and s["postprocess"] == post
        masks = read_masks(tmp_path / "a" / "mask")
        # the model learns as without post-processing; only what is written is cleaned
        expected = apply_postprocess(reference["masks"], **post)
        assert torch.equal(masks, expected)
        assert not torch.equal(expected, reference["masks"])  # the clean-up did something
        learned = decode_image_file(tmp_path / "a" / "background.png")
        assert torch.equal(learned, decode_image_file(Path(reference["summary"]["output"]) / "background.png"))
        with pytest.raises(ValueError, match=r"post-processing \{'median': 3"):
            run([clips["a"]], tmp_path, resume=True, **{**kwargs, "postprocess": dict(median=5)})
        # steps that change nothing (0 or 1) do not count: the same clean-up resumes
        run([clips["b"]], tmp_path / "m", stop_after=5, checkpoint_every=5, postprocess=dict(median=3))
        (s,) = run(
            [clips["b"]],
            tmp_path / "m",
            resume=True,
            checkpoint_every=5,
            postprocess=dict(min_area=1, opening=0, median=3),
        )
        assert s["resumed_from"] == 5 and s["postprocess"] == {"median": 3}
        run([clips["b"]], tmp_path / "off", stop_after=5, checkpoint_every=5, postprocess=dict(median=1, opening=0))
        (s,) = run([clips["b"]], tmp_path / "off", resume=True, checkpoint_every=5)
        assert s["resumed_from"] == 5 and s["postprocess"] is None
        for bad, error, match in [
            (dict(median=4), ValueError, "median"),
            (dict(medain=3), ValueError, r"takes the keys \('median', 'opening', 'min_area'\); unknown: \['medain'\]"),
            ("median", TypeError, "must be a dict"),
        ]:
            with pytest.raises(error, match=match):
                run([clips["a"]], tmp_path / "bad", postprocess=bad)
        assert not (tmp_path / "bad").exists()

    def test_resume_with_other_settings_refused(self, clips, tmp_path):
        run([clips["b"]], tmp_path, stop_after=5, checkpoint_every=5)
        with pytest.raises(ValueError, match=r"checkpoint.*settings"):
            run([clips["b"]], tmp_path, learning_rate=0.01, resume=True)
        with pytest.raises(FileNotFoundError, match=r"overlay\.mp4' of the interrupted run is missing"):
            run([clips["b"]], tmp_path, overlay=True, resume=True)
        (tmp_path / "b" / "mask.mp4").unlink()
        with pytest.raises(FileNotFoundError, match=r"mask\.mp4' of the interrupted run is missing"):
            run([clips["b"]], tmp_path, resume=True)

    def test_keyboard_interrupt_leaves_playable_outputs(self, clips, reference, tmp_path, monkeypatch):
        forward = BackgroundSubtractorMOG.forward
        monkeypatch.setattr(
            BackgroundSubtractorMOG, "forward", ctrl_c_at_call(forward, 27)
        )  # call 1: the compile warm-up
        kwargs = dict(mask_format="mkv", overlay=True, checkpoint_every=100)
        with pytest.raises(KeyboardInterrupt):
            run([clips["a"]], tmp_path, **kwargs)
        out = tmp_path / "a"
        assert torch.equal(read_masks(out / "mask.mkv"), reference["masks"][:25])  # finalised, playable
        with VideoReader(out / "overlay.mkv") as reader:
            assert len(list(reader)) == 25
        summary = json.loads((out / "summary.json").read_text())
        assert summary["error"] == "interrupted" and summary["frames"] == 25 and not summary["complete"]
        monkeypatch.setattr(BackgroundSubtractorMOG, "forward", forward)
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert s["resumed_from"] == 25 and s["complete"]
        assert torch.equal(read_masks(out / "mask.mkv"), reference["masks"])

    def test_close_failure_fails_that_input_only(self, clips, tmp_path, monkeypatch):
        # e.g. a full disk while b's mask video is finalised: b fails, a (same batch) completes
        original = VideoWriter.close

        def close(self):
            first = not self._closed
            original(self)
            if first and self.path.parent.name == "b" and self.path.name.startswith("mask"):
                raise OSError("No space left on device")

        monkeypatch.setattr(VideoWriter, "close", close)
        a, b = run([clips["a"], clips["b"]], tmp_path, batch_streams=2, checkpoint_every=10, raise_errors=False)
        assert a["complete"] and a["error"] is None and a["frames"] == T
        assert not b["complete"] and b["error"] == "No space left on device" and b["error_type"] == "OSError"
        assert json.loads((tmp_path / "b" / "summary.json").read_text())["error_type"] == "OSError"

    def test_truncated_video(self, clips, reference, tmp_path):
        data = clips["a"].read_bytes()
        cut = tmp_path / "cut.mkv"
        cut.write_bytes(data[: int(len(data) * 0.6)])
        with pytest.raises(VideoDecodeError, match=r"cut\.mkv.*frame \d+") as info:
            run([cut, clips["b"]], tmp_path / "out")
        n = info.value.frame_index
        assert 0 < n < T
        masks = read_masks(tmp_path / "out" / "cut" / "mask.mp4")  # written and playable
        assert torch.equal(masks, reference["masks"][:n])
        summary = json.loads((tmp_path / "out" / "cut" / "summary.json").read_text())
        assert summary["frames"] == n and summary["error_frame"] == n and "cut.mkv" in summary["error"]
        assert summary["error_type"] == "VideoDecodeError"
        # the other input is processed all the same
        assert json.loads((tmp_path / "out" / "b" / "summary.json").read_text())["complete"]
        # without raise_errors, the error is in the summary
        summaries = run([cut], tmp_path / "out2", raise_errors=False)
        assert summaries[0]["error_frame"] == n and not summaries[0]["complete"]

    def test_errors_before_any_work(self, clips, tmp_path):
        out = tmp_path / "out"
        text = tmp_path / "notes.mp4"
        text.write_text("not a video\n" * 100)
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(FileNotFoundError, match=r"missing\.mkv"):
            run([clips["a"], tmp_path / "missing.mkv"], out)
        with pytest.raises(VideoDecodeError, match=r"notes\.mp4"):
            run([clips["a"], text], out)
        with pytest.raises(FileNotFoundError, match=r"no image files in .*empty"):
            run([empty], out)
        with pytest.raises(ValueError, match="learning_rate"):
            run([clips["a"]], out, learning_rate=2.0)
        with pytest.raises(ValueError, match="mask_format"):
            run([clips["a"]], out, mask_format="gif")
        with pytest.raises(ValueError, match="batch_streams"):
            run([clips["a"]], out, batch_streams=0)
        assert not out.exists()  # nothing was done

    def test_selection_and_size_resume_exactly(self, clips, tmp_path):
        # source frames 2, 5, ..., 44 at an odd size; stopped after 6 and resumed (checkpoint at 6)
        selection = dict(start=2, end=45, step=3, size=(33, 41))
        kwargs = dict(overlay=True, checkpoint_every=4, **selection)
        (full,) = run([clips["a"]], tmp_path / "full", **kwargs)
        with VideoReader(clips["a"], batch_size=100, **selection) as reader:
            (frames,) = list(reader)
        assert frames.shape == (15, 3, 33, 41)
        assert torch.equal(read_masks(full["mask"]), eager_masks(frames))
        assert full["frames"] == 15 and full["source_frames"] == {"first": 2, "last": 44}
        (s,) = run([clips["a"]], tmp_path / "cut", stop_after=6, **kwargs)
        assert s["frames"] == 6 and s["source_frames"] == {"first": 2, "last": 17} and not s["complete"]
        (s,) = run([clips["a"]], tmp_path / "cut", resume=True, **kwargs)
        assert s["resumed_from"] == 6 and s["complete"] and s == {**full, **{k: s[k] for k in _RUN_DEPENDENT}}
        for name in ("mask.mp4", "overlay.mp4", "background.png"):
            assert (tmp_path / "cut" / "a" / name).read_bytes() == (tmp_path / "full" / "a" / name).read_bytes(), name

    def test_selection_on_device(self, clips, tmp_path, device):
        # the selected, resized source frames reach the model on the device: the masks are
        # the model's on those frames (fed on the same device), for two streams at once
        selection = dict(start=2, end=45, step=3, size=(33, 41))
        summaries = run(
            [clips["a"], clips["b"]], tmp_path, device=str(device), batch_streams=2, mask_format="png", **selection
        )
        for name, summary in zip("ab", summaries):
            with VideoReader(clips[name], batch_size=100, **selection) as reader:
                (frames,) = list(reader)
            model = BackgroundSubtractorMOG(compile=False).to(device)
            assert torch.equal(read_masks(summary["mask"]), model.process(frames.to(device)).cpu())
            assert summary["device"].startswith(device.type) and summary["source_frames"]["first"] == 2
        assert summaries[0]["source_frames"] == {"first": 2, "last": 44} and summaries[0]["frames"] == 15
        assert summaries[1]["source_frames"] == {"first": 2, "last": 38} and summaries[1]["frames"] == 13

    def test_format_1_checkpoint_reads_as_the_whole_input(self, clips, reference, tmp_path):
        # checkpoints written before the selection existed hold neither it nor the source size
        kwargs = dict(checkpoint_every=10, mask_format="png")
        run([clips["a"]], tmp_path, stop_after=20, **kwargs)
        path = tmp_path / "a" / "checkpoint.pt"
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["format"] == 2 and ckpt["selection"] == dict(start=0, end=None, step=1, size=None)
        torch.save({**{k: v for k, v in ckpt.items() if k not in ("selection", "source_size")}, "format": 1}, path)
        with pytest.raises(ValueError, match=r"start=0, end=None, step=1 .* size=as the input; .*the step differs"):
            run([clips["a"]], tmp_path, resume=True, step=2, **kwargs)
        (s,) = run([clips["a"]], tmp_path, resume=True, **kwargs)
        assert s["resumed_from"] == 20 and torch.equal(read_masks(tmp_path / "a" / "mask"), reference["masks"])

    def test_selection_errors_before_any_work(self, clips, tmp_path):
        out = tmp_path / "out"
        for kwargs, error, match in [
            (dict(step=0), ValueError, r"`step` must be >= 1, got 0"),
            (dict(step=1.5), TypeError, r"`step` must be an int"),
            (dict(start="3"), TypeError, r"`start` must be an int \(frame index\) or a float \(seconds\)"),
            (dict(end=-1), ValueError, r"`end` must be >= 0"),
            (dict(start=10, end=0.2), ValueError, r"`end` \(0.2 s = frame 5\) must come after `start` \(frame 10\)"),
            (dict(start=45), ValueError, r"`start` \(frame 45\) is at or after the end of .*b\.mkv' \(about 40"),
            (dict(size=(0, 8)), ValueError, r"`size\[0\]` must be >= 1"),
            (dict(size=(8,)), ValueError, r"`size` must be \(H, W\)"),
        ]:
            with pytest.raises(error, match=match):
                run([clips["a"], clips["b"]], out, **kwargs)  # b: 40 frames, a: 50
        assert not out.exists()  # nothing was done

    def test_mixed_sizes_are_batched_by_size(self, clips, reference, tmp_path):
        small = write_video(tmp_path / "small.mkv", synthetic_clip(12, 32, 48, enter=4, seed=3)[0])
        summaries = run([clips["a"], small, clips["b"]], tmp_path / "out", batch_streams=3, stop_after=12)
        assert [s["batch_streams"] for s in summaries] == [2, 1, 2]
        assert [(s["width"], s["height"]) for s in summaries] == [(W, H), (48, 32), (W, H)]
        assert torch.equal(read_masks(summaries[0]["mask"]), reference["masks"][:12])

    @pytest.mark.cuda
    def test_cuda_compiled(self, clips, tmp_path):
        # device "auto" picks the GPU; compiled model; same-device batched == alone
        both = run([clips["a"], clips["b"]], tmp_path / "both", device="auto", model_options=None, batch_streams=2)
        (alone,) = run([clips["b"]], tmp_path / "alone", device="auto", model_options=None)
        assert both[0]["device"].startswith("cuda")
        assert torch.equal(read_masks(both[1]["mask"]), read_masks(alone["mask"]))
        masks, truth = read_masks(both[0]["mask"]), clips["truth_a"]
        tp = (masks & truth)[ENTER + 2 :].sum().item()
        assert tp / truth[ENTER + 2 :].sum().item() > 0.9 and tp / masks[ENTER + 2 :].sum().item() > 0.8

    def test_output_names_do_not_collide(self, clips, tmp_path):
        (tmp_path / "x").mkdir()
        other = shutil.copy(clips["b"], tmp_path / "x" / "b.mkv")
        summaries = run([clips["b"], other], tmp_path / "out", stop_after=3)
        assert [Path(s["output"]).name for s in summaries] == ["b", "b-2"]


# ----------------------------------------------------------------------------------------
# CDnet evaluation
# ----------------------------------------------------------------------------------------
def write_cdnet_sequence(root: Path, category: str, name: str, n: int = 40, first: int = 12, seed: int = 3) -> None:
    """A CDnet-layout sequence of a generated clip: input/in%06d.png, groundtruth/gt%06d.png
    (0 static, 255 motion, 170 on the object's outline, 85 on the top row), temporalROI.txt,
    ROI.bmp (left column outside)."""
    from PIL import Image

    frames, truth, _ = synthetic_clip(n, 48, 64, square=10, enter=6, noise=3.0, seed=seed)
    labels = torch.where(truth, 255, 0).to(torch.uint8)[:, 0]
    grown = torch.nn.functional.max_pool2d(truth.float(), 3, 1, 1)[:, 0] > 0
    labels[grown & ~truth[:, 0]] = 170  # unknown: the motion boundary
    labels[:, 0, :] = 85  # outside the ROI
    seq = root / category / name
    (seq / "input").mkdir(parents=True)
    (seq / "groundtruth").mkdir()
    for i in range(n):
        Image.fromarray(frames[i].permute(1, 2, 0).numpy()).save(seq / "input" / f"in{i + 1:06d}.png")
        Image.fromarray(labels[i].numpy()).save(seq / "groundtruth" / f"gt{i + 1:06d}.png")
    (seq / "temporalROI.txt").write_text(f"{first} {n}\n")
    roi = np.full((48, 64), 255, np.uint8)
    roi[:, 0] = 0
    Image.fromarray(roi).save(seq / "ROI.bmp")


@pytest.fixture(scope="module")
def cdnet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cdnet")
    write_cdnet_sequence(root, "baseline", "easy", seed=3)
    write_cdnet_sequence(root, "baseline", "other", seed=4)
    write_cdnet_sequence(root, "shadow", "third", seed=5)
    return root


class TestEvaluation:
    def test_find_sequences(self, cdnet, tmp_path):
        assert [p.relative_to(cdnet).as_posix() for p in find_cdnet_sequences(cdnet)] == [
            "baseline/easy",
            "baseline/other",
            "shadow/third",
        ]
        with pytest.raises(FileNotFoundError, match="nope"):
            find_cdnet_sequences(tmp_path / "nope")
        with pytest.raises(ValueError, match="no CDnet sequences"):
            find_cdnet_sequences(tmp_path)

    def test_sequence_scores_match_metrics(self, cdnet):
        seq = cdnet / "baseline" / "easy"
        factory = method_factories(["torchgmm"], device="cpu")["torchgmm"]
        row = evaluate_sequence(seq, factory, postprocess=dict(median=3))
        # independent: the model over the decoded frames, counted with the metrics module
        frames = torch.stack(list(VideoReader(seq / "input")))
        labels = torch.stack(list(VideoReader(seq / "groundtruth", gray=True)))
        info = read_cdnet_sequence_info(seq)
        counter = ChangeDetectionCounter(roi=info.roi, temporal_roi=info.temporal_roi)
        counter.update(eager_masks(frames), labels, frame_index=0)
        expected = counter.compute()
        assert row["sequence"] == "baseline/easy" and row["frames"] == 40
        for key in ("TP", "FP", "FN", "TN", "F-measure", "Recall", "Precision", "PWC"):
            assert row[key] == expected[key], key
        assert row["F-measure"] > 0.95  # an easy sequence
        assert row["postprocessed"]["F-measure"] > 0.9

    def test_metadata_is_recorded_and_may_restate_a_recorded_key(self, cdnet, tmp_path):
        methods = method_factories(["torchgmm"], learning_rate=0.01, device="cpu", model_options=EAGER)
        evaluate_dataset(
            cdnet / "baseline" / "easy",
            methods=methods,
            device="cpu",
            out_dir=tmp_path,
            progress=False,
            metadata={"device": "cpu (2 threads)", "note": "x"},
        )
        settings = json.loads((tmp_path / "results.json").read_text())["settings"]
        assert settings["device"] == "cpu (2 threads)" and settings["note"] == "x"
        assert settings["methods"] == ["torchgmm"] and settings["postprocess"] is None

    def test_torchgmm_mog2_scores_as_opencv_mog2_with_shadows(self, cdnet):
        # the same counts as OpenCV's own MOG2 at its defaults with shadows detected, a shadow
        # (127) scored as not foreground: the models agree bit for bit
        cv2 = pytest.importorskip("cv2")
        seq = cdnet / "baseline" / "easy"
        (ours,) = method_factories(["torchgmm-mog2"], device="cpu", model_options=EAGER).values()
        row = evaluate_sequence(seq, ours, device="cpu")
        reference = evaluate_sequence(
            seq, lambda: _opencv_subtractor(cv2.createBackgroundSubtractorMOG2(detectShadows=True)), device="cpu"
        )
        assert [row[k] for k in ("TP", "FP", "FN", "TN")] == [reference[k] for k in ("TP", "FP", "FN", "TN")]
        assert row["TP"] > 0

    def test_several_roots_are_one_dataset(self, cdnet, tmp_path):
        """Roots split across folders score as the one dataset they hold together."""
        split = tmp_path / "split"
        for part in ("baseline/easy", "baseline/other"):
            shutil.copytree(cdnet / part, split / "a" / part)
        shutil.copytree(cdnet / "shadow" / "third", split / "b" / "shadow" / "third")
        methods = method_factories(["torchgmm"], device="cpu", model_options=EAGER)
        whole = evaluate_dataset(cdnet, methods=methods, device="cpu", progress=False)
        rows = evaluate_dataset([split / "a", split / "b"], methods=methods, device="cpu", progress=False)
        keys = ("method", "sequence", "TP", "FP", "FN", "TN", "F-measure")
        assert [[r.get(k) for k in keys] for r in rows] == [[r.get(k) for k in keys] for r in whole]
        assert [r["sequence"] for r in rows][-3:] == ["baseline/mean", "shadow/mean", "overall/mean"]
        with pytest.raises(ValueError, match="baseline/easy"):  # the same sequence twice: refused before any work
            evaluate_dataset([cdnet, split / "a"], methods=methods, device="cpu", progress=False)

    def test_dataset_methods_side_by_side(self, cdnet, tmp_path):
        pytest.importorskip("cv2")
        all_methods = ("torchgmm", "torchgmm-mog2", "mog2", "mog2-defaults", "mog2-shadows", "bgsegm-mog")
        methods = method_factories(all_methods, learning_rate=0.01, device="cpu", model_options=EAGER)
        rows = evaluate_dataset(
            cdnet, methods=methods, device="cpu", out_dir=tmp_path, progress=False, postprocess=dict(opening=3)
        )
        names = [(r["method"], r["sequence"]) for r in rows]
        for m in all_methods:
            assert (m, "baseline/easy") in names and (m, "baseline/mean") in names
            assert (m, "shadow/mean") in names and (m, "overall/mean") in names
        by = {(r["method"], r["sequence"]): r for r in rows}
        for m in all_methods:
            mean = (by[(m, "baseline/easy")]["F-measure"] + by[(m, "baseline/other")]["F-measure"]) / 2
            assert by[(m, "baseline/mean")]["F-measure"] == pytest.approx(mean)
            # CDnet's overall score is the mean of the category means (2 baseline videos, 1 shadow)
            for key in ("F-measure", "Recall", "PWC"):
                overall = (by[(m, "baseline/mean")][key] + by[(m, "shadow/mean")][key]) / 2
                assert by[(m, "overall/mean")][key] == pytest.approx(overall, rel=1e-12), (m, key)
            assert by[(m, "overall/mean")]["frames"] == sum(
                by[(m, s)]["frames"] for s in ("baseline/easy", "baseline/other", "shadow/third")
            )
            assert by[(m, "baseline/easy")]["F-measure"] > 0.8, m
            assert "postprocessed" in by[(m, "overall/mean")]
        saved = json.loads((tmp_path / "results.json").read_text())["rows"]
        assert len(saved) == len(rows) == len(all_methods) * (3 + 3)
        with open(tmp_path / "results.csv", newline="") as f:
            lines = list(csv.DictReader(f))
        assert len(lines) == len(rows) and "post_F-measure" in lines[0]
        assert float(lines[0]["F-measure"]) == pytest.approx(rows[0]["F-measure"])
        table = format_table(rows)
        assert "overall/mean" in table and "bgsegm-mog" in table
        assert len(format_table(rows, postprocessed=True).splitlines()) == len(rows) + 1

    def test_bad_sequence_fails_before_work(self, cdnet, tmp_path):
        bad = tmp_path / "data"
        shutil.copytree(cdnet / "baseline" / "easy", bad / "cat" / "seq")
        (bad / "cat" / "seq" / "temporalROI.txt").write_text("1 400\n")
        with pytest.raises(ValueError, match=r"holds 40 images but temporalROI.txt scores frames up to 400"):
            evaluate_dataset(bad, methods={"x": lambda: pytest.fail("ran")}, device="cpu", progress=False)
        # a second sequence whose ROI.bmp does not fit its frames fails before the first one runs
        (bad / "cat" / "seq" / "temporalROI.txt").write_text("10 40\n")
        shutil.copytree(cdnet / "baseline" / "easy", bad / "cat" / "seq2")
        from PIL import Image

        Image.new("L", (5, 4), 255).save(bad / "cat" / "seq2" / "ROI.bmp")
        with pytest.raises(ValueError, match=r"seq2.ROI\.bmp' is \(4, 5\)"):
            evaluate_dataset(bad, methods={"x": lambda: pytest.fail("ran")}, device="cpu", progress=False)
        with pytest.raises(ValueError, match="`median` must be 0 .off. or an odd window"):
            evaluate_dataset(
                cdnet,
                methods={"x": lambda: pytest.fail("ran")},
                device="cpu",
                progress=False,
                postprocess=dict(median=4),
            )

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="unknown method 'nope'"):
            method_factories(["nope"], device="cpu")


@pytest.mark.parametrize(
    ("pixels", "env", "threads_before", "expected"),
    [
        (64 * 80, None, 4, 3),  # small steps leave a core to the decoding thread
        (768 * 576, None, 4, 4),  # large ones use them all
        (SMALL_STEP_PIXELS, None, 4, 4),
        (64 * 80, "2", 4, 4),  # OMP_NUM_THREADS chose: untouched
        (64 * 80, None, 2, 2),  # the user chose another count: untouched
    ],
)
def test_step_threads_follow_the_frame_size(monkeypatch, pixels, env, threads_before, expected):
    monkeypatch.setattr("torchgmm.jobs._threads.os.cpu_count", lambda: 4)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads_before)
        with step_threads(torch.device("cpu"), pixels):
            assert torch.get_num_threads() == expected
        assert torch.get_num_threads() == threads_before  # restored
        with step_threads("auto", pixels):  # not resolved yet (a Ray run): untouched
            assert torch.get_num_threads() == threads_before
    finally:
        torch.set_num_threads(saved)

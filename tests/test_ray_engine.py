"""The file jobs on a local Ray cluster (``engine="ray"``) against the local engine: the same
outputs byte for byte, the same records, summaries, failures and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgmm.cli import main
from torchgmm.jobs import ray_engine
from torchgmm.jobs.background import FrameSelection, MaskOutputs, run_background
from torchgmm.jobs.segment import segment_files
from torchgmm.demo import synthetic_clip
from _damaged import damaged_files
from _videos import read_masks, write_video


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU cluster for the module: the jobs use a session already started as it is."""
    ray = pytest.importorskip("ray", reason='the Ray engine needs Ray: pip install "torchmog[ray]"')
    pytest.importorskip("ray.data", reason='the Ray engine needs Ray Data: pip install "ray[data]"')
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes, by relative path (the lock and the records aside)."""
    skip = {".torchgmm.lock", "segments.jsonl", "summary.json"}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in skip
    }


def _records(out: Path) -> list[dict]:
    """The records, with the output folder's own paths made relative (they differ by folder)."""
    text = (out / "segments.jsonl").read_text().replace(str(out.resolve()), "OUT")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture()
def mixed_images(tmp_path: Path) -> Path:
    """Grey, RGB and 16-bit images of two sizes, a constant image (a negligible class), and
    every damaged file of the bad-input tests."""
    d = tmp_path / "in"
    rng = np.random.default_rng(3)
    for i in range(14):
        h, w = (30, 40) if i % 3 else (24, 24)
        img = rng.integers(0, 256, (h, w) if i % 2 else (h, w, 3)).astype(np.uint8)
        img[:, : w // 2] //= 4  # two populations, so that EM has work to do
        (d / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"sub{i % 2}" / f"im{i:02d}.png")
    Image.fromarray((rng.integers(0, 65535, (20, 22))).astype(np.uint16)).save(d / "deep16.png")
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(d / "flat.png")
    damaged_files(d / "damaged")
    return d


def test_segment_on_ray_equals_local(ray_cluster, mixed_images, tmp_path):
    local = segment_files([mixed_images], tmp_path / "local", 3, device="cpu", batch_size=4, progress=False)
    on_ray = segment_files(
        [mixed_images], tmp_path / "ray", 3, device="cpu", batch_size=4, progress=False, engine="ray"
    )
    assert on_ray.n_found == local.n_found > 16 + 10
    assert (on_ray.n_done, on_ray.n_skipped) == (local.n_done, 0) == (16, 0)
    assert on_ray.failed == local.failed and len(local.failed) == on_ray.n_found - 16
    assert on_ray.negligible == local.negligible == [str(mixed_images / "flat.png")]
    assert _snapshot(tmp_path / "ray") == _snapshot(tmp_path / "local")
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert len(_records(tmp_path / "ray")) == 16


def test_segment_on_ray_skips_what_is_done_and_refuses_other_settings(ray_cluster, mixed_images, tmp_path):
    out = tmp_path / "out"
    segment_files([mixed_images], out, 3, device="cpu", progress=False)  # local
    reference = _snapshot(out), _records(out)
    for gone in sorted(out.glob("sub1/*_labels.png"))[:3]:  # three images to redo
        gone.unlink()
    again = segment_files([mixed_images], out, 3, device="cpu", progress=False, engine="ray")
    assert (again.n_skipped, again.n_done) == (16 - 3, 3)
    assert (_snapshot(out), _records(out)) == reference
    with pytest.raises(ValueError, match="other settings"):  # before any work, as the local engine
        segment_files([mixed_images], out, 4, device="cpu", progress=False, engine="ray")


def test_segment_cli_on_ray_exit_codes(ray_cluster, mixed_images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(mixed_images / "sub1"), str(mixed_images / "damaged" / "cut.png"), "--out", str(out)]
    assert main([*argv, "--engine", "ray", "--device", "cpu", "--no-progress"]) == 1  # one input failed
    err = capsys.readouterr().err
    assert "failed: " + str(mixed_images / "damaged" / "cut.png") in err and "truncated" in err
    assert len(_records(out)) == 7
    assert main([*argv, "--engine", "ray", "--device", "cuda" if not torch.cuda.is_available() else "tpu"]) == 2


def _clips(folder: Path) -> list[Path]:
    """Three small videos of two lengths, and one cut short part-way (a decode error)."""
    folder.mkdir()
    paths = []
    for i, n in enumerate((30, 36, 30)):
        frames, _, _ = synthetic_clip(n, 32, 40, seed=i)
        paths.append(write_video(folder / f"cam{i}.mkv", frames))
    full = paths[1].read_bytes()
    (folder / "cut.mkv").write_bytes(full[: len(full) // 2])
    return [*paths, folder / "cut.mkv"]


def _summaries(out: Path) -> dict[str, dict]:
    timing = {"fps", "seconds"}
    return {
        p.parent.name: {
            k: v for k, v in json.loads(p.read_text().replace(str(out.resolve()), "OUT")).items() if k not in timing
        }
        for p in sorted(out.glob("*/summary.json"))
    }


def test_background_on_ray_equals_local(ray_cluster, tmp_path):
    inputs = _clips(tmp_path / "in")
    settings = dict(
        model_options=dict(compile=False),
        frames=FrameSelection(step=2),
        outputs=MaskOutputs(format="png", overlay=True),
        device="cpu",
        batch_streams=2,
        progress=False,
        raise_errors=False,
    )
    local = run_background(inputs, tmp_path / "local", **settings)
    on_ray = run_background(inputs, tmp_path / "ray", engine="ray", **settings)
    assert [s["frames"] for s in on_ray] == [s["frames"] for s in local] and local[0]["frames"] == 15
    assert [s["error_type"] for s in on_ray] == [None, None, None, "VideoDecodeError"]
    assert _snapshot(tmp_path / "ray") == _snapshot(tmp_path / "local")
    assert _summaries(tmp_path / "ray") == _summaries(tmp_path / "local")
    assert read_masks(tmp_path / "ray" / "cam1" / "mask").shape == (18, 1, 32, 40)
    # raise_errors: the damaged input's error is raised once every input is done, as locally
    shutil.rmtree(tmp_path / "ray")
    with pytest.raises(Exception, match="cut.mkv") as info:
        run_background(inputs, tmp_path / "ray", engine="ray", **{**settings, "raise_errors": True})
    assert type(info.value).__name__ == "VideoDecodeError"
    assert _summaries(tmp_path / "ray") == _summaries(tmp_path / "local")


def test_background_cli_on_ray_resumes_from_checkpoints(ray_cluster, tmp_path, capsys):
    # a checkpointed run, resumed on Ray: the masks equal one uninterrupted run's
    inputs = [str(p) for p in _clips(tmp_path / "in")[:2]]
    common = ["--no-compile", "--device", "cpu", "--mask-format", "png", "--no-progress", "--checkpoint", "10"]
    assert main(["background", *inputs, "--out", str(tmp_path / "whole"), *common]) == 0
    assert main(["background", *inputs, "--out", str(tmp_path / "ray"), *common, "--engine", "ray"]) == 0
    assert "cam1.mkv: 36 frames" in capsys.readouterr().out
    assert _snapshot(tmp_path / "ray") == _snapshot(tmp_path / "whole")
    # resuming a finished run from its checkpoints redoes nothing and keeps the masks
    assert main(["background", *inputs, "--out", str(tmp_path / "ray"), *common, "--engine", "ray", "--resume"]) == 0
    assert _snapshot(tmp_path / "ray") == _snapshot(tmp_path / "whole")


def test_background_cli_on_ray_ctrl_c_then_resume(ray_cluster, tmp_path, monkeypatch, capsys):
    # Ctrl-C in the driver once the task has stepped some frames: the task is cancelled,
    # finishes its outputs as an interrupted local run does (playable masks, summary,
    # checkpoint), the command exits 130, and a resume on Ray ends with one whole run's masks
    frames, _, _ = synthetic_clip(2000, 48, 64, seed=3)  # long enough to be still running
    clip = str(write_video(tmp_path / "long.mkv", frames))
    common = ["--no-compile", "--device", "cpu", "--mask-format", "mkv", "--no-progress", "--checkpoint", "50"]
    assert main(["background", clip, "--out", str(tmp_path / "whole"), *common]) == 0
    seen: list[int] = []
    run_batches = ray_engine.run_batches

    def interrupted(ray, batches, options, stop_after, on_progress):  # noqa: ANN001, ANN202
        def progress(n: int) -> None:
            on_progress(n)
            seen.append(n)
            if n > 0:
                raise KeyboardInterrupt

        return run_batches(ray, batches, options, stop_after, progress)

    monkeypatch.setattr(ray_engine, "run_batches", interrupted)
    argv = ["background", clip, "--out", str(tmp_path / "ray"), *common, "--engine", "ray"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    summary = json.loads((tmp_path / "ray" / "long" / "summary.json").read_text())
    assert summary["error"] == "interrupted" and not summary["complete"]
    assert seen[-1] <= summary["frames"] < 2000
    assert read_masks(tmp_path / "ray" / "long" / "mask.mkv").shape[0] == summary["frames"]  # playable
    interrupted_at = summary["frames"]
    monkeypatch.setattr(ray_engine, "run_batches", run_batches)
    assert main([*argv, "--resume"]) == 0
    summary = json.loads((tmp_path / "ray" / "long" / "summary.json").read_text())
    assert summary["complete"] and summary["frames"] == 2000
    # the task checkpoints where it stopped, or, when the interrupt came between a frame's
    # update and its write, the last periodic checkpoint (every 50, trailing by one) stands
    periodic = {k * 50 - 1 for k in range(1, 40)}
    assert summary["resumed_from"] == interrupted_at or summary["resumed_from"] in periodic
    assert 0 < summary["resumed_from"] <= interrupted_at
    assert torch.equal(
        read_masks(tmp_path / "ray" / "long" / "mask.mkv"), read_masks(tmp_path / "whole" / "long" / "mask.mkv")
    )


# --- without a cluster -----------------------------------------------------------------------
def test_engine_arguments_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match=r"`engine` must be one of \('local', 'ray'\)"):
        segment_files([tmp_path], tmp_path / "o", engine="spark")
    with pytest.raises(ValueError, match="only used with engine='ray'"):
        run_background([tmp_path], tmp_path / "o", ray_address="ray://head:10001")
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--ray-address", "auto"]) == 2
    assert "only used with engine='ray'" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ValueError, match=r'pip install "torchmog\[ray\]"'):
        segment_files([tmp_path], tmp_path / "o", engine="ray")
    assert not (tmp_path / "o").exists()


class _FakeCluster:
    def __init__(self, gpus: int) -> None:
        self.gpus = gpus

    def cluster_resources(self) -> dict:
        return {"CPU": 8.0, **({"GPU": float(self.gpus)} if self.gpus else {})}


def test_device_is_resolved_against_the_cluster():
    assert ray_engine.cluster_device(_FakeCluster(0), "auto") == torch.device("cpu")
    assert ray_engine.cluster_device(_FakeCluster(2), "auto") == torch.device("cuda")
    assert ray_engine.cluster_device(_FakeCluster(2), "cuda:1") == torch.device("cuda")  # each task's own GPU
    assert ray_engine.cluster_device(_FakeCluster(0), "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):
        ray_engine.cluster_device(_FakeCluster(0), "cuda")

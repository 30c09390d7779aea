"""The benchmark and tooling scripts in ``scripts/`` run, at toy sizes, and their JSON holds.

The README quotes these scripts' figures, so a script that no longer runs (an API it calls
changed) or whose numbers no longer mean what the table says would go unnoticed until the
next benchmark session. Each runs here in a subprocess, as a user runs it (the scripts set
thread counts and other process-wide state), on sizes that take seconds; the checks are on
the parts of the output that do not depend on timing: agreement with the reference library,
frame counts, ratios that must be the quotient of the figures beside them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    """Run ``scripts/<name>`` with ``args``; its stdout, or a failure that shows its output."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize("model", ["mog", "opencv-mog2", "opencv-mog"])
def test_bench_video(model, tmp_path):
    if model.startswith("opencv"):
        pytest.importorskip("cv2")
    pytest.importorskip("av")
    out = tmp_path / "video.json"
    run_script(
        "bench_video.py",
        "--video",
        "none",
        "--model",
        model,
        "--sizes",
        "64x48",
        "--gen-frames",
        "12",
        "--frames",
        "12",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    result = json.loads(out.read_text())
    assert result["model_unavailable"] is None
    (row,) = result["rows"]
    assert (row["width"], row["height"], row["frames"]) == (64, 48, 12)
    assert row["keep"] == pytest.approx(row["end_to_end_fps"] / row["decode_fps"])
    assert row["overlap"] == pytest.approx(row["end_to_end_fps"] / min(row["decode_fps"], row["model_fps"]))
    # the clip's moving square is 8x8 = 64 pixels; every model must see some foreground
    assert row["mean_foreground_px"] > 20


def test_bench_em_agrees_with_scikit_learn(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "em.json"
    run_script("bench_em.py", "--quick", "--threads", "1", "--device", "cpu", "--json", str(out), cwd=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert rows
    for row in rows:
        assert row["ratio"] == pytest.approx(row["torchgmm_s"] / row["sklearn_s"])
        if "max_abs_mean_diff" in row:  # histogram EM against scikit-learn on the raw pixels
            assert row["max_abs_mean_diff"] < 1e-6, row
        else:  # 20-100 fixed iterations: float32 drifts from scikit-learn's float64 a little
            assert row["bound_rel_diff"] < (1e-3 if row["dtype"] == "float32" else 1e-9), row


def test_bench_postprocess_agrees_with_opencv(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "pp.json"
    run_script(
        "bench_postprocess.py",
        "--size",
        "64x48",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    rows = json.loads(out.read_text())["rows"]
    assert {r["op"].split("(")[0] for r in rows} == {"remove_small_blobs", "median_filter_mask", "binary_opening"}
    assert all(r["agree"] for r in rows), [r for r in rows if not r["agree"]]


def test_bench_roofline(tmp_path):
    out = tmp_path / "roofline.json"
    # the script checks that its chained arithmetic kernel ends in the state of single steps
    run_script(
        "bench_roofline.py",
        "--size",
        "64x48",
        "--chain",
        "2",
        "--frames",
        "2",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    result = json.loads(out.read_text())
    assert result["meta"]["bytes_per_pixel"] == 124  # RGB K=3: what the README's GB/s figures assume
    (row,) = result["rows"]
    assert row["traffic_over_step"] == pytest.approx(row["traffic_ms"] / row["step_ms"])


def test_bench_background(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "background.json"
    run_script(
        "bench_background.py",
        "--sizes",
        "64x48",
        "--channels",
        "3",
        "--components",
        "3",
        "--frames",
        "8",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--shadows",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    rows = json.loads(out.read_text())["cpu"]
    methods = {r["method"]: r for r in rows}
    assert "mog2" in methods and len(methods) >= 3, sorted(methods)
    assert methods["torchgmm_shadow"]["detect_shadows"] is True
    for row in rows:
        assert row["frames"] == 8 and "error" not in row, row
        assert row["ratio"] == pytest.approx(row["ms_per_frame"] / methods["mog2"]["ms_per_frame"])


def test_bench_segment_agrees_with_scikit_learn(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "segment.json"
    run_script("bench_segment.py", "--n", "4", "--sk-images", "1", "--device", "cpu", "--json", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["memory"]["label_agreement_with_sklearn"] >= 0.9999
    assert result["files"]["n_images"] == 4


def test_eval_cdnet_on_a_generated_sequence(tmp_path):
    pytest.importorskip("cv2")
    from _videos import make_sequence

    make_sequence(tmp_path / "cdnet" / "baseline" / "easy", n=24)
    stdout = run_script(
        "eval_cdnet.py",
        "--root",
        str(tmp_path / "cdnet"),
        "--methods",
        "torchgmm,mog2",
        "--no-compile",
        "--threads",
        "1",
        "--median",
        "3",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert "published Stauffer-Grimson" in stdout
    result = json.loads((tmp_path / "out" / "eval_cdnet_default.json").read_text())
    rows = [r for r in result["rows"] if r.get("sequence") == "baseline/easy"]
    assert sorted(r["method"] for r in rows) == ["mog2", "torchgmm"]
    for row in rows:  # the generated square is easy: both find it
        assert row["F-measure"] > 0.7, row


def test_eval_shadows_on_a_generated_sequence(tmp_path):
    from _videos import make_sequence

    seq = make_sequence(tmp_path / "cdnet" / "baseline" / "easy", n=24)
    out = tmp_path / "shadows.json"
    stdout = run_script(
        "eval_shadows.py",
        "--root",
        str(seq),
        "--no-compile",
        "--threads",
        "1",
        "--verify-off",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert "sg-cdnet-baseline" in stdout
    result = json.loads(out.read_text())
    assert result["meta"]["verified_off"] and result["meta"]["temporal_roi"] == [10, 24]
    rows = {r["method"]: r for r in result["rows"]}
    assert sorted(rows) == ["mog2", "sg-cdnet-baseline", "sg-default"]
    for row in rows.values():  # the generated square is easy, and brighter than nothing: no shadow in it
        assert row["frames"] == 24 and row["f_off"] > 0.7, row
        assert row["shadow_tp"] + row["shadow_fn"] == 0  # this ground truth has no 50


def test_bench_jobs_times_whole_processes(tmp_path):
    pytest.importorskip("cv2")
    from PIL import Image

    from _videos import write_video
    from torchgmm.demo import synthetic_clip

    frames, _, _ = synthetic_clip(20, 48, 64, seed=1)
    data = tmp_path / "data"
    (data / "video").mkdir(parents=True)
    write_video(data / "video" / "vtest.avi".replace(".avi", ".mkv"), frames)
    (data / "video" / "vtest.mkv").rename(data / "video" / "vtest.avi")  # FFV1 in Matroska, named as the real one
    office = data / "cdnet" / "baseline" / "office" / "input"
    office.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(frames[i].permute(1, 2, 0).numpy()).save(office / f"in{i + 1:06d}.jpg")
    out = tmp_path / "jobs.json"
    run_script(
        "bench_jobs.py",
        "--data",
        str(data),
        "--inputs",
        "vtest.avi",
        "--segment-images",
        "4",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    rows = {r["job"]: r for r in json.loads(out.read_text())["rows"]}
    bg, seg = rows["background"], rows["segment"]
    assert bg["frames"] == 20 and seg["input"] == "4 CDnet office JPEGs"
    for kind in ("cold", "warm"):
        assert bg[f"ratio_{kind}"] == pytest.approx(bg[f"torchgmm_{kind}_s"] / bg["opencv_s"], rel=1e-2)
    assert seg["ratio"] == pytest.approx(seg["torchgmm_s"] / seg["loop_s"], rel=1e-2)


def test_bench_ray_finds_the_engines_equal(tmp_path):
    pytest.importorskip("ray", reason='needs Ray: pip install "torchmog[ray]"')
    from PIL import Image

    from torchgmm.demo import synthetic_clip

    frames, _, _ = synthetic_clip(6, 48, 64, seed=2)
    highway = tmp_path / "data" / "cdnet" / "baseline" / "highway" / "input"
    highway.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(frames[i].permute(1, 2, 0).numpy()).save(highway / f"in{i + 1:06d}.jpg")
    out = tmp_path / "ray.json"
    args = ("--data", str(tmp_path / "data"), "--only", "segment", "--segment-images", "5", "--json", str(out))
    run_script("bench_ray.py", *args, cwd=tmp_path)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["input"] == "5 CDnet highway JPEGs" and row["identical_outputs"] and row["equal_records"]
    assert row["ratio"] == pytest.approx(row["ray_s"] / row["local_s"], rel=1e-2)

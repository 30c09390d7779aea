"""``torchgmm segment`` end to end on a temporary folder of mixed images."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgmm.cli import main
from torchgmm.io.images import LOCK_NAME, decode_image_file, find_images
from torchgmm.exceptions import NegligibleClassWarning
from torchgmm.jobs.segment import segment_files
from _interrupts import ctrl_c_at_call


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

    expected = {"grey": (30, 40), "sub/rgb": (25, 36), "sub/rgba": (25, 36), "rgb": (25, 36), "deep16": (20, 22)}
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
        [image_dir / "sub", image_dir / "grey.png"],
        tmp_path / "w",
        2,
        workers=2,
        device=device,
        progress=False,
    )
    sequential = segment_files(
        [image_dir / "grey.png"], tmp_path / "s", 2, write_threads=0, device=device, progress=False
    )
    assert sequential.n_done == 1 and (tmp_path / "s" / "segments.jsonl").exists()
    assert summary.n_done == 3 and not summary.failed
    assert (tmp_path / "w" / "rgb_labels.png").exists()


def test_cli_rgb_mode(image_dir, tmp_path):
    out = tmp_path / "rgb"
    argv = [
        "segment",
        str(image_dir / "sub"),
        str(image_dir / "grey.png"),
        "--out",
        str(out),
        "--classes",
        "2",
        "--mode",
        "rgb",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    records = {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").open())}
    assert records["rgb.png"]["mode"] == "rgb" and len(records["rgb.png"]["means"][0]) == 3
    assert records["grey.png"]["mode"] == "luminance"
    labels = np.asarray(Image.open(out / "rgb_labels.png"))
    assert (labels[:, :10] == 0).mean() > 0.95 and (labels[:, -10:] == 1).mean() > 0.95


@pytest.mark.parametrize(
    "argv", [["--init", "kmeans++"], ["--init", "random"], ["--mode", "rgb"]], ids=["kmeans++", "random", "rgb"]
)
def test_random_inits_do_not_depend_on_the_batch(tmp_path, argv):
    """An image's result must not depend on which images share its batch: with seeded
    random draws for the whole batch, --batch-size (or a resume, or the folder's other
    files) changed an image's classes."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "imgs"
    for i in range(5):  # three overlapping grey populations, and colour for --mode rgb
        grey = rng.choice([60, 110, 170], size=(24, 20)) + rng.normal(0, 25, (24, 20))
        rgb = np.stack([grey, np.roll(grey, 3, 1), 255 - grey], -1)
        _save(folder / f"im{i}.png", np.clip(rgb, 0, 255))
    outputs = {}
    for batch in ("1", "5"):
        out = tmp_path / f"out{batch}"
        assert (
            main(
                [
                    "segment",
                    str(folder),
                    "--out",
                    str(out),
                    "-k",
                    "3",
                    "--batch-size",
                    batch,
                    "--workers",
                    "0",
                    "--no-progress",
                    *argv,
                ]
            )
            == 0
        )
        outputs[batch] = {Path(r["input"]).name: r["means"] for r in map(json.loads, (out / "segments.jsonl").open())}
        outputs[batch]["labels"] = _snapshot(out)
    alone, batched = outputs["1"].pop("labels"), outputs["5"].pop("labels")
    assert {k: v for k, v in alone.items() if k.endswith(".png")} == {
        k: v for k, v in batched.items() if k.endswith(".png")
    }
    for name, means in outputs["1"].items():
        np.testing.assert_allclose(outputs["5"][name], means, rtol=1e-9)


# --- re-runs, damaged records, awkward output folders ------------------------------------
def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L" if arr.ndim == 2 else "RGB").save(path)
    return path


@pytest.fixture()
def small_dir(tmp_path: Path) -> Path:
    """Two tiny grey images and one tiny RGB image."""
    d = tmp_path / "small"
    _save(d / "a.png", _two_tone(6, 8))
    _save(d / "b.png", _two_tone(6, 8, seed=1))
    _save(d / "c.png", np.stack([_two_tone(6, 8, seed=s) for s in range(3)], -1))
    return d


def _run(inputs, out, k=2, **kw):
    kw = {"device": "cpu", "progress": False, "write_threads": 0, **kw}
    return segment_files(inputs, out, k, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The outputs in ``folder`` (the lock file, which names its last holder, is no output)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def test_rerun_with_other_settings_is_refused(small_dir, tmp_path):
    out = tmp_path / "out"
    assert _run(small_dir, out, 2).n_done == 3
    before = _snapshot(out)
    for kw, match in (
        ({"k": 3}, r"n_classes 2 there, 3 in this run \(3 image"),
        ({"max_iter": 7}, r"max_iter 100 there, 7 in this run"),
        ({"tol": 0.5}, r"tol 0.001 there, 0.5 in this run"),
        ({"init": "kmeans++"}, r"init 'range' there, 'kmeans\+\+' in this run \(3 image"),
        # only the RGB image c.png would change: grey images are segmented on luminance anyway
        ({"mode": "rgb"}, r"mode 'luminance' there, 'rgb' in this run \(1 image\(s\), e\.g\. '.*c\.png'"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            _run(small_dir, out, **kw)
        assert "segments.jsonl" in str(err.value) and "another output folder" in str(err.value)
        assert _snapshot(out) == before  # nothing overwritten
    # same settings resume; grey images alone accept mode="rgb"; --overwrite redoes
    assert _run(small_dir, out, 2).n_skipped == 3
    assert _run([small_dir / "a.png", small_dir / "b.png"], out, 2, mode="rgb").n_skipped == 2
    assert _run(small_dir, out, 3, overwrite=True).n_done == 3
    recs = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert {r["n_classes"] for r in recs} == {3} and {r["channels"] for r in recs} == {1, 3}


def test_records_without_settings_are_not_trusted(small_dir, tmp_path):
    out = tmp_path / "out"
    _run(small_dir / "a.png", out)
    rec = json.loads((out / "segments.jsonl").read_text())
    del rec["tol"], rec["max_iter"]  # as written before these were recorded
    (out / "segments.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="tol not recorded there"):
        _run(small_dir / "a.png", out)


def test_records_without_init_were_made_with_range(small_dir, tmp_path):
    # records of the version before the init choice: "range" was the only init then
    out = tmp_path / "out"
    _run(small_dir / "a.png", out)
    rec = json.loads((out / "segments.jsonl").read_text())
    assert rec["init"] == "range"
    del rec["init"]
    (out / "segments.jsonl").write_text(json.dumps(rec) + "\n")
    assert _run(small_dir / "a.png", out).n_skipped == 1
    with pytest.raises(ValueError, match=r"init 'range' there, 'data-range' in this run"):
        _run(small_dir / "a.png", out, init="data-range")


def test_rgb_mode_records_ignore_init(small_dir, tmp_path):
    # mode="rgb" always starts from k-means++: recorded so, and another init redoes nothing
    out = tmp_path / "out"
    _run(small_dir, out, mode="rgb")
    recs = {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").open())}
    assert {n: (r["mode"], r["init"]) for n, r in recs.items()} == {
        "a.png": ("luminance", "range"),
        "b.png": ("luminance", "range"),
        "c.png": ("rgb", "kmeans++"),
    }
    assert _run(small_dir / "c.png", out, mode="rgb", init="data-range").n_skipped == 1
    # the grey images were segmented on luminance with init="range": another init is refused
    with pytest.raises(ValueError, match=r"init 'range' there, 'data-range' in this run \(2 image"):
        _run(small_dir, out, mode="rgb", init="data-range")


def _three_levels(levels, size: int = 16, seed: int = 0) -> np.ndarray:
    """(size, 3 * size) grey image: flat thirds at ``levels`` plus noise sigma 5."""
    rng = np.random.default_rng(seed)
    img = np.repeat(np.asarray(levels, dtype=np.float64), size)[None].repeat(size, 0)
    return (img + rng.normal(0, 5, img.shape)).round().clip(0, 255)


def test_cli_warns_per_image_with_fewer_classes_and_init_fixes_it(tmp_path, capsys):
    d = tmp_path / "in"
    _save(d / "good.png", _three_levels((40, 120, 210)))  # one level in each third of 0..255
    _save(d / "shared.png", _three_levels((40, 95, 140)))  # 95 and 140 share 85..170
    out = tmp_path / "out"
    argv = ["segment", str(d), "-k", "3", "--workers", "0", "--no-progress", "--device", "cpu"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--out", str(out)]) == 0  # a warning is no failure
    # reported as a line per image, not as a Python warning (per batch) as well
    assert not [w for w in caught if issubclass(w.category, NegligibleClassWarning)]
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert (
        len(warned) == 1 and f"{d / 'shared.png'}: segmented into 2 of n_classes=3 classes (class 1 holds" in warned[0]
    )
    assert 'try init="kmeans++" or init="data-range"' in warned[0]
    assert "1 image(s) ended with fewer classes than 3" in err
    recs = {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").open())}
    assert recs["shared.png"]["negligible_classes"] == [1] and recs["good.png"]["negligible_classes"] == []
    assert recs["shared.png"]["weights"][1] * 16 * 48 < 0.5
    assert np.unique(np.asarray(Image.open(out / "shared_labels.png"))).tolist() == [0, 2]

    for init in ("kmeans++", "data-range"):
        out2 = tmp_path / init
        assert main([*argv, "--out", str(out2), "--init", init]) == 0
        assert "warning:" not in capsys.readouterr().err
        labels = np.asarray(Image.open(out2 / "shared_labels.png"))
        assert [np.unique(labels[:, 16 * k : 16 * (k + 1)]).tolist() for k in range(3)] == [[0], [1], [2]]
        recs = {Path(r["input"]).name: r for r in map(json.loads, (out2 / "segments.jsonl").open())}
        assert {r["init"] for r in recs.values()} == {init}
        assert recs["shared.png"]["negligible_classes"] == []
    log = io.StringIO()
    summary = _run(d, tmp_path / "api", 3, log=log)
    assert [Path(p).name for p in summary.negligible] == ["shared.png"] and "shared.png" in log.getvalue()
    with pytest.raises(SystemExit):  # argparse: exit status 2
        main([*argv, "--out", str(tmp_path / "x"), "--init", "kmeans"])
    assert "argument --init: invalid choice" in capsys.readouterr().err


def test_cli_rerun_with_other_k_exits_2(small_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(small_dir), "--out", str(out), "--workers", "0", "--no-progress", "--device", "cpu"]
    assert main([*argv, "-k", "2"]) == 0
    capsys.readouterr()
    assert main([*argv, "-k", "4"]) == 2
    err = capsys.readouterr().err
    assert "n_classes 2 there, 4 in this run" in err and "skipped" not in err


def test_damaged_segments_jsonl_names_file_and_line(small_dir, tmp_path):
    out = tmp_path / "out"
    _run(small_dir, out)
    jsonl = out / "segments.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text(lines[0][:60] + "\n" + lines[1] + "\n")  # a damaged line that is not the last
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"segments\.jsonl' line 1 is not valid JSON"):
        _run(small_dir, out)
    jsonl.write_text(lines[0] + "\n\n" + '{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"segments\.jsonl' line 3 is not a segmentation record"):
        _run(small_dir, out)
    jsonl.write_text(lines[0][:60] + "\n" + lines[1] + "\n")
    assert _snapshot(out) == before  # refused before any work


def test_record_cut_short_by_a_kill_is_redone(small_dir, tmp_path):
    # records are appended as images finish: a kill mid-append leaves a last line without
    # its newline; that image (and the one never recorded) is segmented again
    out = tmp_path / "out"
    _run(small_dir, out)
    reference = _snapshot(out)
    jsonl = out / "segments.jsonl"
    lines = jsonl.read_text().splitlines()
    jsonl.write_text(lines[0] + "\n" + lines[1][:60])
    summary = _run(small_dir, out)
    assert (summary.n_skipped, summary.n_done) == (1, 2)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["input"] for r in records) == sorted(json.loads(line)["input"] for line in lines)
    assert {k: v for k, v in _snapshot(out).items() if k != "segments.jsonl"} == {
        k: v for k, v in reference.items() if k != "segments.jsonl"
    }


def test_records_are_appended_as_images_finish(small_dir, tmp_path, monkeypatch):
    # A run killed part-way keeps the records of the images it finished. The kill is
    # simulated: the third image's write raises, and no whole-file rewrite reaches the disk
    # (a killed process runs no `finally`), so only the appended lines can be there.
    import torchgmm.jobs.segment as segment_job

    monkeypatch.setattr(segment_job, "_write_outputs", ctrl_c_at_call(segment_job._write_outputs, 3))
    monkeypatch.setattr(segment_job, "atomic_write_text", lambda path, text: None)
    with pytest.raises(KeyboardInterrupt):
        _run(small_dir, tmp_path / "out", batch_size=1)
    records = [json.loads(line) for line in (tmp_path / "out" / "segments.jsonl").read_text().splitlines()]
    assert len(records) == 2  # the two images finished before the "kill"


def test_output_folder_inside_input_is_not_read_back(small_dir):
    out = small_dir / "seg"
    assert _run(small_dir, out).n_done == 3
    again = _run(small_dir, out)
    assert again.n_found == 3 and again.n_skipped == 3 and again.n_done == 0
    assert not (out / "seg").exists()


def test_segment_files_single_path_is_one_input(small_dir, tmp_path):
    assert _run(str(small_dir), tmp_path / "o").n_done == 3


def test_output_folder_that_is_a_file_is_refused_before_work(small_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "sub"):
        with pytest.raises(NotADirectoryError, match="afile"):
            _run(small_dir, out)
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("write_threads", [0, 2])
def test_unwritable_output_fails_that_image_only(small_dir, tmp_path, write_threads):
    out = tmp_path / "out"
    (out / "b_labels.png").mkdir(parents=True)  # a folder where b's label map must go
    s = _run(small_dir, out, write_threads=write_threads)
    assert s.n_done == 2 and [Path(p).name for p, _ in s.failed] == ["b.png"]
    assert "b_labels.png" in s.failed[0][1]
    assert (out / "a_labels.png").is_file() and (out / "c_colour.png").is_file()
    recs = [json.loads(line)["input"] for line in (out / "segments.jsonl").read_text().splitlines()]
    assert sorted(Path(r).name for r in recs) == ["a.png", "c.png"]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_rgb_image_with_fewer_pixels_than_k_fails_alone(tmp_path, capsys, batch_size):
    d = tmp_path / "rgbsmall"
    _save(d / "a_big.png", np.stack([_two_tone(8, 8, seed=s) for s in range(3)], -1))
    _save(d / "b_tiny.png", np.array([[[0, 0, 0], [255, 255, 255]]]))  # 1x2 RGB: 2 pixels < K=3
    _save(d / "c_big.png", np.stack([_two_tone(8, 8, seed=s + 3) for s in range(3)], -1))
    out = tmp_path / "out"
    argv = [
        "segment",
        str(d),
        "--out",
        str(out),
        "--mode",
        "rgb",
        "-k",
        "3",
        "--batch-size",
        str(batch_size),
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "b_tiny.png" in err and "n_classes=3 pixels" in err and "segmented 2" in err
    assert (out / "a_big_labels.png").exists() and (out / "c_big_labels.png").exists()
    assert not (out / "b_tiny_labels.png").exists()


def test_failing_group_names_each_image(tmp_path):
    # a batch of same-size images EM cannot fit is retried image by image: each one is named
    d = tmp_path / "pair"
    _save(d / "ok.png", np.stack([_two_tone(1, 4, seed=s) for s in range(3)], -1))  # 4 pixels
    _save(d / "ok2.png", np.stack([_two_tone(1, 4, seed=s + 3) for s in range(3)], -1))
    s = _run(d, tmp_path / "o", 4, mode="rgb", batch_size=2)
    assert s.n_done == 2 and not s.failed  # 4 pixels, K = 4: fits
    s = _run(d, tmp_path / "o5", 5, mode="rgb", batch_size=2)
    assert s.n_done == 0 and sorted(Path(p).name for p, _ in s.failed) == ["ok.png", "ok2.png"]


@pytest.mark.filterwarnings("ignore::torchgmm.mixture.ConvergenceWarning")
def test_records_are_strict_json_and_max_iter_0_refused(small_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="max_iter"):
        _run(small_dir, out, max_iter=0)
    assert not out.exists()  # refused before any work

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    _run(small_dir, out, max_iter=1)
    for line in (out / "segments.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_constants)


def test_temporaries_of_a_killed_run_are_removed(small_dir, tmp_path):
    # a run killed outright cannot remove the temporary file of the write it was in
    out = tmp_path / "out"
    assert _run(small_dir, out).n_done == 3
    stale = out / ".a_labels.png.q1w2e3r4.tmp"
    stale.write_bytes(b"half a png")
    assert _run(small_dir, out).n_skipped == 3
    assert not stale.exists()


def test_12_bit_png_uses_all_grey_levels(tmp_path, capsys):
    # 12-bit data in a 16-bit PNG (as microscopes and many cameras write it): plateaus at
    # 500, 1500 and 3000 are three classes, as for the same data in 8 bits
    rng = np.random.default_rng(0)
    raw = np.zeros((30, 48)) + 500
    raw[:, 16:32], raw[:, 32:] = 1500, 3000
    raw = (raw + rng.normal(0, 50, raw.shape)).round().clip(0, 4095).astype(np.uint16)
    d = tmp_path / "deep"
    d.mkdir()
    Image.fromarray(raw).save(d / "twelve.png")  # mode I;16
    Image.fromarray((_two_tone(30, 48) * 257).astype(np.uint16)).save(d / "full16.png")
    out = tmp_path / "out"
    assert main(["segment", str(d), "-k", "3", "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    labels = np.asarray(Image.open(out / "twelve_labels.png"))
    assert [np.unique(labels[:, cols]).tolist() for cols in (slice(0, 16), slice(16, 32), slice(32, 48))] == [
        [0],
        [1],
        [2],
    ]
    records = {Path(r["input"]).name: r for r in map(json.loads, (out / "segments.jsonl").open())}
    assert records["twelve.png"]["bit_shift"] == 4 and records["full16.png"]["bit_shift"] == 8
    # means * 2^bit_shift are raw 12-bit levels (the truncated low bits: about half a step low)
    raw_means = [m[0] * 16 for m in records["twelve.png"]["means"]]
    np.testing.assert_allclose(raw_means, [raw[:, :16].mean(), raw[:, 16:32].mean(), raw[:, 32:].mean()], atol=16)


def test_record_paths_are_absolute_whatever_the_working_directory(small_dir, tmp_path, monkeypatch):
    # a relative --out: every path in segments.jsonl (and the summary's) is absolute, so the
    # file reads the same from anywhere
    monkeypatch.chdir(tmp_path)
    summary = _run(Path("small"), "out")
    assert summary.jsonl == str(tmp_path / "out" / "segments.jsonl")
    monkeypatch.chdir(small_dir)  # somewhere else
    recs = [json.loads(line) for line in Path(summary.jsonl).read_text().splitlines()]
    assert len(recs) == 3
    for rec in recs:
        stem = Path(rec["input"]).stem
        assert rec["input"] == str(small_dir / f"{stem}.png")
        assert rec["labels"] == str(tmp_path / "out" / f"{stem}_labels.png")
        assert rec["colour"] == str(tmp_path / "out" / f"{stem}_colour.png")
        assert Path(rec["labels"]).is_file() and Path(rec["colour"]).is_file()


def test_records_of_the_previous_version_are_recognised(small_dir, tmp_path, monkeypatch):
    # the previous version wrote "labels"/"colour" relative to the command's working
    # directory, and no init, bit_shift or negligible_classes
    out = tmp_path / "out"
    _run(small_dir, out)
    jsonl = out / "segments.jsonl"
    old = []
    for rec in map(json.loads, jsonl.read_text().splitlines()):
        for name in ("init", "bit_shift", "negligible_classes"):
            del rec[name]
        rec["labels"] = str(Path("out") / Path(rec["labels"]).name)
        rec["colour"] = str(Path("out") / Path(rec["colour"]).name)
        old.append(rec)
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in old))
    monkeypatch.chdir(small_dir)  # not the directory the relative paths were relative to
    # other settings are still refused, before any work
    with pytest.raises(ValueError, match=r"n_classes 2 there, 3 in this run \(3 image"):
        _run(small_dir, out, 3)
    with pytest.raises(ValueError, match=r"init 'range' there, 'kmeans\+\+' in this run \(3 image"):
        _run(small_dir, out, init="kmeans++")
    before = _snapshot(out)
    summary = _run(small_dir, out)  # the same settings: skipped
    assert (summary.n_skipped, summary.n_done) == (3, 0)
    assert {k: v for k, v in _snapshot(out).items() if k != "segments.jsonl"} == {
        k: v for k, v in before.items() if k != "segments.jsonl"
    }
    # ... and their output paths are now absolute; the rest of each record is kept
    recs = {r["input"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    for rec in old:
        new = recs[rec["input"]]
        assert new["labels"] == str(out / Path(rec["labels"]).name) and Path(new["labels"]).is_file()
        assert new["colour"] == str(out / Path(rec["colour"]).name)
        assert {k: v for k, v in new.items() if k not in ("labels", "colour")} == {
            k: v for k, v in rec.items() if k not in ("labels", "colour")
        }


def test_batches_are_capped_by_pixels_as_well_as_count():
    from types import SimpleNamespace

    from torchgmm.jobs.segment import _batched

    def item(h, w):
        return SimpleNamespace(image=None if h == 0 else torch.zeros(1, h, w, dtype=torch.uint8))

    sizes = [(10, 10), (10, 10), (0, 0), (20, 20), (10, 10), (30, 30), (10, 10)]
    got = [
        [tuple(i.image.shape[1:]) if i.image is not None else None for i in b]
        for b in _batched([item(*s) for s in sizes], size=3, max_pixels=500)
    ]
    # 100 + 100 (+ a failed item) = 200, + 400 would pass 500: new batch; 900 alone is over, but one item
    assert got == [[(10, 10), (10, 10), None], [(20, 20), (10, 10)], [(30, 30)], [(10, 10)]]

"""End-to-end wall times of the file jobs against the scripts a user would write instead.

Each job runs as its own process, timed by wall clock from start to exit (interpreter start,
imports, compile and I/O included), as a user experiences it:

- ``background``: a 15-line OpenCV script (``cv2.VideoCapture`` +
  ``createBackgroundSubtractorMOG2(detectShadows=False)`` with 3 mixtures + ``cv2.VideoWriter``
  FFV1 grey masks + ``getBackgroundImage``) against ``torchgmm background INPUT --out DIR``,
  with a warm compile cache (a second run on one ``TORCHINDUCTOR_CACHE_DIR``) and a cold one
  (a fresh cache, as on a new machine).
- ``segment``: a plain single-threaded loop (``decode_image`` + ``torchgmm.segment_images`` +
  two ``write_png``) against ``torchgmm segment FOLDER --out DIR`` on the same JPEGs.

Inputs: ``../shared/data`` (vtest.avi, bgslibrary_video.avi, CDnet baseline/office/input);
missing ones are skipped. Prints a table and writes JSON (``--json``, default
``bench_out/bench_jobs.json``). Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
#: the command as a user runs it: the console script beside this interpreter, else the module
_SCRIPT = Path(sys.executable).with_name("torchgmm")
TORCHGMM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "torchgmm.cli"]

OPENCV_SCRIPT = textwrap.dedent("""
    import sys, time, cv2
    source, out = sys.argv[1], sys.argv[2]
    cap = cv2.VideoCapture(source)
    mog2 = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
    mog2.setNMixtures(3)
    writer, n, t0 = None, 0, time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        mask = mog2.apply(frame)
        if writer is None:
            writer = cv2.VideoWriter(out + "/mask.mkv", cv2.VideoWriter_fourcc(*"FFV1"), 25, mask.shape[::-1], False)
        writer.write(mask)
        n += 1
    writer.release()
    cv2.imwrite(out + "/background.png", mog2.getBackgroundImage())
    print(n, n / (time.perf_counter() - t0))
""")

SEGMENT_LOOP = textwrap.dedent("""
    import sys, pathlib, torch
    from torchvision.io import decode_image, write_png
    import torchgmm
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    for path in sorted(src.glob("*.jpg")):
        img = decode_image(str(path))[None]
        labels, _ = torchgmm.segment_images(img, 3)
        write_png(labels.to(torch.uint8), str(out / f"{path.stem}_labels.png"))
        write_png(torchgmm.segmentation.colourise(labels, 3)[0], str(out / f"{path.stem}_colour.png"))
""")


def timed(argv: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of one process and its stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def wait_for_package_builds() -> None:
    """Wait until no ``torchgmm._aot`` builder runs: a run shorter than its step's build
    leaves the builder finishing the package (for the next run), which would otherwise
    share the cores with the next measurement."""
    while _builders_running():
        time.sleep(0.2)


def _builders_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"torchgmm._aot" in cmdline.read_bytes():
                return True
        except OSError:  # ended meanwhile
            continue
    return False


def opencv_source(path: Path) -> str:
    """What ``cv2.VideoCapture`` opens: the file, or the ``in%06d.jpg`` pattern of a folder."""
    if path.is_dir():
        first = sorted(path.glob("*.jpg"))[0].name
        digits = len(first) - len("in") - len(".jpg")
        return str(path / f"in%0{digits}d.jpg")
    return str(path)


def bench_background(name: str, path: Path, work: Path) -> dict:
    cache = work / "inductor-warm"
    script = work / "opencv_mog2.py"
    script.write_text(OPENCV_SCRIPT)
    ocv_out = work / f"ocv-{name}"
    ocv_out.mkdir()
    ocv_wall, printed = timed([sys.executable, str(script), opencv_source(path), str(ocv_out)])
    ocv_frames, ocv_fps = printed.split()
    argv = [*TORCHGMM, "background", str(path), "--no-progress"]
    row = dict(
        job="background",
        input=name,
        opencv_s=round(ocv_wall, 3),
        opencv_fps=round(float(ocv_fps), 1),
        frames=int(ocv_frames),
    )
    for kind in ("cold", "warm"):
        env = {"TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-cold-{name}" if kind == "cold" else cache)}
        if kind == "warm":
            timed([*argv, "--out", str(work / f"warmup-{name}")], env)  # fills the warm cache
            wait_for_package_builds()
        out = work / f"tg-{name}-{kind}"
        wall, _ = timed([*argv, "--out", str(out)], env)
        wait_for_package_builds()
        summary = json.loads(next(out.glob("*/summary.json")).read_text())
        row[f"torchgmm_{kind}_s"] = round(wall, 3)
        row[f"ratio_{kind}"] = round(wall / ocv_wall, 3)
        row[f"torchgmm_{kind}_fps"] = summary["fps"]
    return row


def bench_segment(images: Path, work: Path, n: int) -> dict:
    folder = work / "segment-input"
    folder.mkdir()
    for path in sorted(images.glob("*.jpg"))[:n]:
        shutil.copy(path, folder / path.name)
    loop = work / "segment_loop.py"
    loop.write_text(SEGMENT_LOOP)
    (work / "loop-out").mkdir()
    loop_wall, _ = timed([sys.executable, str(loop), str(folder), str(work / "loop-out")])
    job_wall, _ = timed(
        [*TORCHGMM, "segment", str(folder), "--out", str(work / "job-out"), "--device", "cpu", "--no-progress"]
    )
    return dict(
        job="segment",
        input=f"{n} CDnet office JPEGs",
        loop_s=round(loop_wall, 3),
        torchgmm_s=round(job_wall, 3),
        ratio=round(job_wall / loop_wall, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--inputs", nargs="*", default=None, help="background inputs to run (default: all three)")
    parser.add_argument("--segment-images", type=int, default=400)
    parser.add_argument("--only", choices=["background", "segment"], default=None)
    parser.add_argument("--json", type=Path, default=REPO / "bench_out" / "bench_jobs.json")
    args = parser.parse_args()
    inputs = {
        "vtest.avi": args.data / "video" / "vtest.avi",
        "bgslibrary_video.avi": args.data / "video" / "bgslibrary_video.avi",
        "office": args.data / "cdnet" / "baseline" / "office" / "input",
    }
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if args.only in (None, "background"):
            for name, path in inputs.items():
                if path.exists() and (args.inputs is None or name in args.inputs):
                    rows.append(bench_background(name, path, work))
                    print(rows[-1], flush=True)
        office = inputs["office"]
        if args.only in (None, "segment") and office.exists():
            rows.append(bench_segment(office, work, args.segment_images))
            print(rows[-1], flush=True)
    print(f"\n{'job':10} {'input':22} {'reference s':>11} {'torchgmm s (cold / warm)':>26} {'ratio cold / warm':>18}")
    for r in rows:
        if r["job"] == "background":
            print(
                f"{'background':10} {r['input']:22} {r['opencv_s']:11.2f} "
                f"{r['torchgmm_cold_s']:12.2f} / {r['torchgmm_warm_s']:<11.2f} {r['ratio_cold']:8.2f} / {r['ratio_warm']:.2f}"
                f"   fps: opencv {r['opencv_fps']}, torchgmm {r['torchgmm_warm_fps']}"
            )
        else:
            print(f"{'segment':10} {r['input']:22} {r['loop_s']:11.2f} {r['torchgmm_s']:26.2f} {r['ratio']:18.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
    )
    args.json.write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

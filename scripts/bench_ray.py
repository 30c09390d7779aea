"""The file jobs on a local Ray cluster against the local engine: same outputs, and the overhead.

Each run is its own process, timed by wall clock from start to exit (interpreter start,
imports, the Ray cluster's start and stop included), as a user experiences it:

- ``segment``: ``torchgmm segment FOLDER --out DIR --device cpu`` over N CDnet JPEGs
  (default 400, highway) with ``--engine local`` (2 decoding workers, the default) and with
  ``--engine ray`` (a local cluster of this machine's CPUs, started by the command). The
  label and colour PNGs must be byte-identical and the records (``segments.jsonl``) equal.
- ``background``: ``torchgmm background vtest.avi --out DIR`` with each engine (compiled
  step, a warm compile cache shared by both: filled by a first run); the masks, the
  background image and the summaries (timings aside) must be equal.

Inputs from ``../shared/data``; a missing one is skipped. Needs Ray (``pip install
"torchmog[ray]"``). Prints a table and writes JSON (``--json``, default
``bench_out/bench_ray.json``). Each pair is measured side by side, alternating, ``--repeat``
times; the table gives the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
_SCRIPT = Path(sys.executable).with_name("torchgmm")
TORCHGMM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "torchgmm.cli"]


def timed(argv: list[str], env: dict | None = None) -> float:
    """Wall seconds of one process (which must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall


def files(folder: Path, skip: tuple[str, ...] = (".torchgmm.lock",)) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in skip
    }


def records(out: Path) -> list[dict]:
    text = (out / "segments.jsonl").read_text().replace(str(out.resolve()), "OUT")
    return [json.loads(line) for line in text.splitlines()]


def summaries(out: Path) -> list[dict]:
    timing = {"fps", "seconds"}
    return [
        {k: v for k, v in json.loads(p.read_text().replace(str(out.resolve()), "OUT")).items() if k not in timing}
        for p in sorted(out.glob("*/summary.json"))
    ]


def bench_segment(images: Path, work: Path, n: int, repeat: int) -> dict:
    folder = work / "segment-input"
    folder.mkdir()
    for path in sorted(images.glob("*.jpg"))[:n]:
        shutil.copy(path, folder / path.name)
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    outs = {}
    for i in range(repeat):
        for engine in ("local", "ray"):
            out = outs[engine] = work / f"segment-{engine}-{i}"
            argv = [*TORCHGMM, "segment", str(folder), "--out", str(out), "--device", "cpu", "--no-progress"]
            walls[engine].append(timed([*argv, "--engine", engine]))
    same_files = files(outs["ray"], (".torchgmm.lock", "segments.jsonl")) == files(
        outs["local"], (".torchgmm.lock", "segments.jsonl")
    )
    return row(
        "segment",
        f"{n} CDnet {images.parent.name} JPEGs",
        walls,
        same_files,
        records(outs["ray"]) == records(outs["local"]),
    )


def bench_background(video: Path, work: Path, repeat: int) -> dict:
    env = {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")}
    argv = [*TORCHGMM, "background", str(video), "--no-progress"]
    timed([*argv, "--out", str(work / "warm-up")], env)  # fills the compile cache both engines use
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    outs = {}
    for i in range(repeat):
        for engine in ("local", "ray"):
            out = outs[engine] = work / f"background-{engine}-{i}"
            walls[engine].append(timed([*argv, "--out", str(out), "--engine", engine], env))
    skip = (".torchgmm.lock", "summary.json")
    same_files = files(outs["ray"], skip) == files(outs["local"], skip)
    return row("background", video.name, walls, same_files, summaries(outs["ray"]) == summaries(outs["local"]))


def row(job: str, what: str, walls: dict[str, list[float]], same_files: bool, same_records: bool) -> dict:
    local, ray = statistics.median(walls["local"]), statistics.median(walls["ray"])
    return dict(
        job=job,
        input=what,
        local_s=round(local, 3),
        ray_s=round(ray, 3),
        overhead_s=round(ray - local, 3),
        ratio=round(ray / local, 3),
        runs_local_s=[round(w, 3) for w in walls["local"]],
        runs_ray_s=[round(w, 3) for w in walls["ray"]],
        identical_outputs=same_files,
        equal_records=same_records,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--segment-images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each engine, alternating")
    parser.add_argument("--only", choices=["background", "segment"], default=None)
    parser.add_argument("--json", type=Path, default=REPO / "bench_out" / "bench_ray.json")
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        parser.error('needs Ray: pip install "torchmog[ray]"')
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        images = args.data / "cdnet" / "baseline" / "highway" / "input"
        if args.only in (None, "segment") and images.exists():
            rows.append(bench_segment(images, work, args.segment_images, args.repeat))
            print(rows[-1], flush=True)
        video = args.data / "video" / "vtest.avi"
        if args.only in (None, "background") and video.exists():
            rows.append(bench_background(video, work, args.repeat))
            print(rows[-1], flush=True)
    print(
        f"\n{'job':10} {'input':26} {'local s':>8} {'ray s':>8} {'ray - local':>11} {'ratio':>6}  same outputs / records"
    )
    for r in rows:
        print(
            f"{r['job']:10} {r['input']:26} {r['local_s']:8.2f} {r['ray_s']:8.2f} {r['overhead_s']:11.2f} "
            f"{r['ratio']:6.2f}  {r['identical_outputs']} / {r['equal_records']}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M"),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
        ray=__import__("ray").__version__,
    )
    args.json.write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if not all(r["identical_outputs"] and r["equal_records"] for r in rows):
        sys.exit("the Ray engine's outputs differ from the local engine's")


if __name__ == "__main__":
    main()

"""The command line answers ``--help`` without importing torch (about 2.5 s of start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from torchgmm.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["segment", "--help"], ["background", "--help"], ["evaluate", "--help"], ["demo", "--help"]]
)
def test_help_does_not_import_torch(argv):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: torchgmm" in proc.stdout
    assert proc.stdout.strip().endswith("torch imported: False")


def test_presets_have_one_home():
    from torchgmm import defaults
    from torchgmm.jobs import background

    assert background.PRESETS is defaults.PRESETS


def test_pyav_job_does_not_import_torchcodec():
    """Checking the default decoder must not import TorchCodec (seconds of start-up)."""
    pytest.importorskip("av")
    probe = subprocess.run([sys.executable, "-c", "import torchcodec.decoders"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("TorchCodec is not importable here: nothing to leave unimported")
    script = (
        "import sys\nfrom torchgmm.jobs.background import _check_decoder\n"
        "_check_decoder('pyav', 'stop')\nprint('torchcodec imported:', 'torchcodec' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torchcodec imported: False"


QUICK_EXIT = """
import atexit, sys, threading, time
from pathlib import Path
marker, wait = Path(sys.argv[1]), sys.argv[2] == "thread"
atexit.register(lambda: ((marker / "atexit").write_text("ran"), print("atexit ran")))  # buffered
if wait:  # a non-daemon thread still working when the job returns
    threading.Thread(target=lambda: (time.sleep(0.5), (marker / "thread").write_text("done"))).start()
sys.stdout.write("written before the job\\n")  # a pipe: held in the buffer, not flushed yet
sys.argv = ["torchgmm", *sys.argv[3:]]
from torchgmm.cli import run
run()
"""


@pytest.mark.parametrize("thread", ["no-thread", "thread"])
def test_the_command_exits_quickly_but_completely(tmp_path, thread):
    # the console script's run(): Python's finalisation after torch is skipped (~0.4 s), but
    # the exit code, the buffered output, the atexit handlers and live threads are honoured
    pytest.importorskip("av")
    from torchgmm.demo import synthetic_clip
    from torchgmm.io.video import VideoWriter

    frames, _, _ = synthetic_clip(8, 16, 24, enter=2, seed=1)
    with VideoWriter(tmp_path / "clip.mkv", fps=25) as writer:
        writer.write(frames)
    argv = [sys.executable, "-c", QUICK_EXIT, str(tmp_path), thread, "background"]
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
    done = subprocess.run(
        [*argv, str(tmp_path / "clip.mkv"), "--out", str(tmp_path / "o"), "--no-compile", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=buffered,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("written before the job\n") and "8 frames at" in done.stdout
    assert done.stdout.endswith("atexit ran\n")  # printed after the job, flushed before the exit
    assert json.loads((tmp_path / "o" / "clip" / "summary.json").read_text())["frames"] == 8
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (thread == "thread")
    missing = subprocess.run(
        [*argv, str(tmp_path / "missing.avi"), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr

"""The command line answers ``--help`` without importing torch (about 2.5 s of start-up)."""

from __future__ import annotations

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

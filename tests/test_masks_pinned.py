"""The masks of a generated clip, pinned bit for bit before the jobs layer is rebuilt.

Issue 16 moves the background job into stages on threads and changes how masks are encoded;
the masks must stay exactly what they were. The checksum was taken at the commit that added
this test (eager and compiled, every mask format, gave the same one), with the model
settings of that time, which the test keeps (the defaults changed since: ``OLD_DEFAULTS``).
"""

from __future__ import annotations

import hashlib

import pytest

from torchgmm.demo import synthetic_clip
from torchgmm.io.video import VideoReader, VideoWriter
from torchgmm.jobs.background import MaskOutputs, run_background

#: sha256 (first 16 hex digits) of the (T, 1, H, W) bool masks' bytes, and their foreground count
PINNED = ("fd4ba2634909bfc7", 7518)

#: the model's defaults when the checksum was taken
OLD_DEFAULTS = dict(learning_rate=0.005, background_ratio=0.7, min_var=36.0, rho="inverse_weight")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, _, _ = synthetic_clip(60, 48, 64, enter=5, noise=4.0, seed=7)
    path = tmp_path_factory.mktemp("pinned") / "clip.mkv"
    with VideoWriter(path, fps=25) as writer:
        writer.write(frames)
    return path


@pytest.mark.parametrize("mask_format", ["mkv", "mp4", "png"])
def test_masks_are_bit_identical_to_the_pinned_ones(clip, tmp_path, mask_format):
    (summary,) = run_background(
        [clip],
        tmp_path,
        outputs=MaskOutputs(format=mask_format),
        device="cpu",
        model_options=dict(compile=False, **OLD_DEFAULTS),
        progress=False,
    )
    with VideoReader(summary["mask"], gray=True, batch_size=1000) as reader:
        (masks,) = list(reader)
    masks = masks > 127
    assert masks.shape == (60, 1, 48, 64)
    assert (hashlib.sha256(masks.numpy().tobytes()).hexdigest()[:16], int(masks.sum())) == PINNED

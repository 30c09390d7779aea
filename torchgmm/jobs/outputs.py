"""The video and PNG outputs of a background run, and how a resumed run continues them.

A resumed run cannot append to a video container, so an interrupted run's file is set aside
(``mask.previous.mp4``), its first frames copied into a new file, and deleted once the copy is
safely written; PNG sequences continue at the next number. Lossy overlays are rebuilt from the
frames and the lossless masks rather than decoded and re-encoded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import Tensor

from torchgmm.io.video import VideoReader, VideoWriter

if TYPE_CHECKING:
    from torchgmm.jobs.background import InputPlan

__all__ = ["OVERLAY_TINT", "overlay_frames", "open_writer", "previous_path", "check_png_frames", "rebuild_overlay"]

#: RGB tint of foreground pixels in overlay videos.
OVERLAY_TINT = (255, 0, 0)

_PNG_FRAME = re.compile(r"^(\d{6})\.png$")


def overlay_frames(frames: Tensor, masks: Tensor) -> Tensor:
    """Tint foreground pixels half-way to :data:`OVERLAY_TINT`.

    (B, C, H, W) uint8, (B, 1, H, W) bool -> (B, 3, H, W) uint8; integer arithmetic
    ``x // 2 + tint // 2`` (no float copy of the frames).

    Example:
        >>> frames = torch.full((1, 1, 1, 2), 200, dtype=torch.uint8)  # grey frames become RGB
        >>> overlay_frames(frames, torch.tensor([[[[True, False]]]]))[0, :, 0].tolist()
        [[227, 200], [100, 200], [100, 200]]
    """
    rgb = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
    half_tint = torch.tensor([v // 2 for v in OVERLAY_TINT], dtype=torch.uint8).to(frames.device).view(1, 3, 1, 1)
    return torch.where(masks, (rgb >> 1) + half_tint, rgb)


def _clear_png_frames(folder: Path, first: int) -> None:
    """Delete the numbered frames ``first`` and later of an earlier run (stale otherwise)."""
    if folder.is_dir():
        for p in folder.iterdir():
            m = _PNG_FRAME.match(p.name)
            if m and int(m.group(1)) >= first:
                p.unlink()


def check_png_frames(folder: Path, done: int, source: Path) -> None:
    """The numbered frames ``0 .. done - 1`` of an interrupted PNG run are all there."""
    present = {int(m.group(1)) for p in folder.iterdir() if (m := _PNG_FRAME.match(p.name))}
    missing = [i for i in range(done) if i not in present]
    if missing:
        raise FileNotFoundError(
            f"cannot resume {str(source)!r}: {len(missing)} of the {done} frames the checkpoint has seen are "
            f"missing from {str(folder)!r} (first: {missing[0]:06d}.png). Run without resuming to start over."
        )


def previous_path(path: Path) -> Path:
    """Where an output file waits while a resumed run copies its first frames."""
    return path.with_name(path.stem + ".previous" + path.suffix)


def rebuild_overlay(job: InputPlan, done: int, gray: bool, masks: Path) -> Iterator[Tensor]:
    """The first ``done`` overlay frames of ``job``, made again from its (selected, resized)
    frames and the interrupted run's lossless masks (a video file): ``(3, H, W)`` uint8 each."""
    with job.reader(gray, count=done, prefetch=0) as frames, VideoReader(masks, end=done, prefetch=0) as mask_frames:
        for frame, mask in zip(frames, mask_frames):
            yield overlay_frames(frame[None], mask[None, :1] > 127)[0]


def open_writer(
    path: Path,
    fps: float,
    done: int,
    mask_format: str,
    *,
    lossless: bool,
    channel: bool,
    durable: bool,
    source: Callable[[], Iterator[Tensor]] | None = None,
) -> tuple[VideoWriter, Path | None]:
    """A writer that already holds the first ``done`` frames of an interrupted run.

    PNG sequences continue at number ``done``. Video containers cannot be appended to, so the
    earlier file is renamed ``*.previous*`` and its first ``done`` frames are copied into a
    new one (``channel``: keep one channel, for masks), or taken from ``source()`` when given
    (a lossy overlay is rebuilt rather than decoded and re-encoded, which would lose quality
    at every resume). ``durable``: see :class:`VideoWriter`.

    Returns ``(writer, previous)``: the caller deletes ``previous`` (None for PNG and fresh
    runs) once the copy is safely in the new file, i.e. after the next frame is written or the
    writer is closed. A ``*.previous*`` file that already exists is the complete output of a
    run killed during its copy and is copied from again; a fresh run deletes a stale one.
    """
    if mask_format == "png":
        _clear_png_frames(path, done)
        return VideoWriter(path, fps=fps, format="png", start_number=done, durable=durable), None
    previous = previous_path(path)
    if not done:
        previous.unlink(missing_ok=True)
        return VideoWriter(path, fps=fps, lossless=lossless, durable=durable), None
    if not previous.exists():
        os.replace(path, previous)
    writer = VideoWriter(path, fps=fps, lossless=lossless, durable=durable)
    try:
        copied = 0
        if source is not None:
            for frame in source():
                writer.write(frame)
                copied += 1
        else:
            with VideoReader(previous, end=done, prefetch=0) as old:
                for frame in old:
                    writer.write(frame[:1] if channel else frame)
                    copied += 1
        if copied < done:
            raise ValueError(
                f"cannot resume: {str(previous)!r} holds {copied} frames but the checkpoint is at frame "
                f"{done}; run without resuming to start over."
            )
    except BaseException:
        writer.close()
        os.replace(previous, path)  # leave the earlier output as it was
        raise
    return writer, previous

"""End-to-end jobs on files: background subtraction of videos and CDnet evaluation.

These are the library functions behind ``torchgmm background`` and ``torchgmm evaluate``;
the command line only parses arguments and calls them. Decoding and writing happen here,
at the edge; the model (:class:`torchgmm.background.BackgroundSubtractorMOG`) only sees
tensors.

Error handling follows one rule: what can be checked before any work is checked first (every
input is opened, every setting validated, every checkpoint read), and an input that fails
part-way keeps what was done (its masks up to the damage are written and playable, its
``summary.json`` names the error) while the other inputs carry on.

Shape vocabulary: B streams, T frames, C channels, H height, W width.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import numbers
import os
import re
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from torchgmm import __version__
from torchgmm import postprocess as pp
from torchgmm._checks import add_note, resolve_device
from torchgmm.background import BackgroundSubtractorMOG
from torchgmm.io.images import (
    atomic_write_bytes,
    atomic_write_text,
    decode_image_file,
    lock_output_folder,
    make_output_folder,
    remove_stale_temporaries,
    write_png,
)
from torchgmm.io.video import (
    VideoDecodeError,
    VideoReader,
    VideoWriter,
    WriterThread,
    _frame_number,
    _numbering_gap,
    list_image_sequence,
)
from torchgmm.metrics import (
    GT_MOTION,
    GT_OUTSIDE_ROI,
    GT_SHADOW,
    GT_STATIC,
    GT_UNKNOWN,
    ChangeDetectionCounter,
    UndefinedScoreWarning,
    mean_scores,
    read_cdnet_sequence_info,
)

__all__ = [
    "PRESETS",
    "MaskFormat",
    "resolve_device",
    "run_background",
    "apply_postprocess",
    "find_cdnet_sequences",
    "evaluate_sequence",
    "evaluate_dataset",
    "write_results",
    "format_table",
    "method_factories",
]

MaskFormat = Literal["mp4", "mkv", "png"]

from torchgmm.defaults import PRESETS  # noqa: E402 - re-exported: torchgmm.pipelines.PRESETS

#: RGB tint of foreground pixels in overlay videos.
OVERLAY_TINT = (255, 0, 0)

_CHECKPOINT = "checkpoint.pt"
#: 2: records the frame selection and the source size (format 1: the whole input, unresized)
_CHECKPOINT_FORMAT = 2
_PNG_FRAME = re.compile(r"^(\d{6})\.png$")


def apply_postprocess(masks: Tensor, *, median: int = 0, opening: int = 0, min_area: int = 0) -> Tensor:
    """Optional mask clean-up practitioners use; every step is off at 0.

    Args:
        masks: foreground masks.
        median: median-filter window (odd), 0 = off.
        opening: morphological opening window (odd), 0 = off.
        min_area: drop connected blobs smaller than this many pixels, 0 = off.

    Returns:
        the cleaned masks, in the order median, opening, small-blob removal.

    Shape:
        - masks: ``(B, 1, H, W)`` bool
        - Output: ``(B, 1, H, W)`` bool
    """
    _check_postprocess(median=median, opening=opening, min_area=min_area)
    if median:
        masks = pp.median_filter_mask(masks, median)
    if opening:
        masks = pp.binary_opening(masks, opening)
    if min_area:
        masks = pp.remove_small_blobs(masks, min_area)
    return masks


_POSTPROCESS_STEPS = ("median", "opening", "min_area")


def _normalise_postprocess(postprocess: Any) -> dict:
    """Checked post-processing settings, keeping only the steps that change a mask (a window
    or area of 0 or 1 does not), so that equal clean-ups compare equal on resume."""
    if postprocess is None:
        return {}
    if not isinstance(postprocess, dict):
        raise TypeError(f"`postprocess` must be a dict with keys {_POSTPROCESS_STEPS}, got {postprocess!r}.")
    unknown = sorted(set(postprocess) - set(_POSTPROCESS_STEPS), key=str)
    if unknown:
        raise ValueError(f"`postprocess` takes the keys {_POSTPROCESS_STEPS}; unknown: {unknown}.")
    _check_postprocess(**postprocess)
    return {step: postprocess[step] for step in _POSTPROCESS_STEPS if postprocess.get(step, 0) > 1}


def _check_postprocess(*, median: int = 0, opening: int = 0, min_area: int = 0) -> None:
    """Post-processing settings are valid (named errors, before any work)."""
    for name, value in (("median", median), ("opening", opening)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value and value % 2 == 0):
            raise ValueError(f"`{name}` must be 0 (off) or an odd window size >= 1, got {value!r}.")
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 0:
        raise ValueError(f"`min_area` must be an int >= 0 (0 = off), got {min_area!r}.")


# ----------------------------------------------------------------------------------------
# torchgmm background
# ----------------------------------------------------------------------------------------
def _overlay(frames: Tensor, masks: Tensor) -> Tensor:
    """Tint foreground pixels half-way to :data:`OVERLAY_TINT`.

    (B, C, H, W) uint8, (B, 1, H, W) bool -> (B, 3, H, W) uint8; integer arithmetic
    ``x // 2 + tint // 2`` (no float copy of the frames).
    """
    rgb = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
    half_tint = torch.tensor([v // 2 for v in OVERLAY_TINT], dtype=torch.uint8).to(frames.device).view(1, 3, 1, 1)
    return torch.where(masks, (rgb >> 1) + half_tint, rgb)


@dataclasses.dataclass
class _Job:
    """One input of :func:`run_background` and everything known about it before work starts.

    The model sees the *processed* frames: the selected source frames ``first``, ``first +
    step``, ... (before ``end``), resized to ``size``. ``resumed``, checkpoints and the outputs
    count processed frames; the i-th is source frame ``first + i * step``.
    """

    path: Path
    out: Path
    height: int  #: H of the processed frames (``size``, or the source's)
    width: int  #: W of the processed frames
    source_height: int
    source_width: int
    frame_count: int  #: frames in the whole input (0 when unknown)
    fps: float  #: the input's frame rate
    first: int = 0  #: ``start`` as a source frame index
    end: int | None = None  #: ``end`` as a source frame index (exclusive); None: the input's end
    step: int = 1
    size: tuple[int, int] | None = None  #: ``size`` as given, (H, W)
    selected: int = 0  #: processed frames the input holds (estimated as frame_count is; 0 when unknown)
    count_exact: bool = True  #: frame_count from a header or file listing, not a duration estimate
    input_bytes: int | None = None  #: size of the input file (None for image folders): ties a checkpoint to it
    resumed: int = 0  #: processed frames already done (from a checkpoint)
    state: dict | None = None  #: the checkpoint's model state (one stream), when resuming

    def selection(self) -> dict:
        """The frame selection as source indices (what a checkpoint records and a resume must repeat)."""
        return dict(start=self.first, end=self.end, step=self.step, size=None if self.size is None else list(self.size))

    def reader(self, gray: bool, *, skip: int = 0, count: int | None = None, **options: Any) -> VideoReader:
        """A reader of the processed frames from the ``skip``-th on (``count`` of them, or to the end)."""
        first = self.first + skip * self.step
        end = self.end if count is None else first + count * self.step
        return VideoReader(self.path, start=first, end=end, step=self.step, size=self.size, gray=gray, **options)


@dataclasses.dataclass
class _Stream:
    """A job while it runs: its reader, writers and progress."""

    job: _Job
    reader: VideoReader
    frames: Iterator[Tensor]
    mask: WriterThread
    overlay: WriterThread | None
    done: int  #: frames written (including those of an interrupted run)
    finished: bool = False
    #: outputs of the interrupted run, deleted once their copies are safely written
    previous: list[Path] = dataclasses.field(default_factory=list)

    def drain(self) -> None:
        """Wait until the writer threads have handed every queued frame to their writers."""
        for writer in (self.mask, self.overlay):
            if writer is not None:
                writer.drain()

    def drop_previous(self) -> None:
        """Delete the interrupted run's outputs: their copies are safely in the new files."""
        for leftover in self.previous:
            leftover.unlink(missing_ok=True)
        self.previous.clear()


def _last_source_frame(job: _Job, done: int, skipped: list[tuple[int, int, str]]) -> int:
    """The source index of the ``done``-th processed frame: ``first + (done - 1) * step``,
    past the frames skipped as damaged."""
    index, kept = job.first - job.step, 0
    while kept < done:
        index += job.step
        kept += not any(a <= index <= b for a, b, _ in skipped)
    return index


def _output_name(path: Path) -> str:
    # a CDnet-style ``sequence/input`` folder is named after its sequence
    if path.is_dir():
        return path.resolve().parent.name if path.name == "input" else path.name
    return path.stem


def _settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def _state_settings(settings: dict) -> str:
    """The settings a checkpoint must agree with (how the update runs, compiled or not, may change)."""
    return _settings_json({k: v for k, v in settings.items() if k != "compile"})


#: the selection of a checkpoint that records none (format 1): every frame at the input's size
_WHOLE_INPUT = dict(start=0, end=None, step=1, size=None)


def _describe_selection(selection: dict) -> str:
    size = selection.get("size")
    return (
        f"start={selection.get('start')}, end={selection.get('end')}, step={selection.get('step')} (source frame "
        f"indices), size={'as the input' if size is None else f'{size[1]}x{size[0]}'}"
    )


def _canonical_selection(selection: dict, job: _Job) -> dict:
    """``selection`` with ``end`` and ``size`` None where they select the whole input or its
    own size: the same frames spelled otherwise compare equal."""
    end, size = selection.get("end"), selection.get("size")
    if end is not None and job.count_exact and job.frame_count and end >= job.frame_count:
        end = None
    if size is not None and list(size) == [job.source_height, job.source_width]:
        size = None
    return {**selection, "end": end, "size": size}


def _read_checkpoint(path: Path, settings: dict, job: _Job, gray: bool, postprocess: dict) -> tuple[int, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        frames_done, state = int(ckpt["frames_done"]), ckpt["state"]
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {exc}; delete it or run without resuming.") from exc
    if ckpt.get("settings") != _state_settings(settings) or ckpt.get("gray") != gray:
        raise ValueError(
            f"checkpoint {str(path)!r} was made with settings {ckpt.get('settings')} (gray={ckpt.get('gray')}); "
            f"this run has {_state_settings(settings)} (gray={gray}). Resume with the same settings, or run "
            "without resuming to start over."
        )
    if ckpt.get("postprocess", {}) != postprocess:  # the written masks must continue alike
        raise ValueError(
            f"checkpoint {str(path)!r} was made with post-processing {ckpt.get('postprocess', {})}; this run "
            f"has {postprocess}. Resume with the same post-processing, or run without resuming to start over."
        )
    # the same frames, compared as source indices (12.5 s and frame 250 of a 20 frames/s video agree)
    selection, wanted = ckpt.get("selection", _WHOLE_INPUT), job.selection()
    selection = selection if isinstance(selection, dict) else {}
    recorded, asked = _canonical_selection(selection, job), _canonical_selection(wanted, job)
    differ = [key for key in wanted if recorded.get(key) != asked[key]]
    if differ:
        raise ValueError(
            f"checkpoint {str(path)!r} was made with {_describe_selection(selection)}; this run has "
            f"{_describe_selection(wanted)}: the {' and '.join(differ)} {'differ' if len(differ) > 1 else 'differs'}. "
            "Resume with the same --start/--end/--step/--size, or run without resuming to start over."
        )
    source_size = ckpt.get("source_size", ckpt.get("size", ()))  # format 1: processed = source size
    if (
        tuple(ckpt.get("size", ())) != (job.height, job.width)
        or tuple(source_size) != (job.source_height, job.source_width)
        or int(state["frames_seen"]) != frames_done
    ):
        raise ValueError(
            f"checkpoint {str(path)!r} does not belong to {str(job.path)!r} ({job.source_width}x"
            f"{job.source_height}); run without resuming to start over."
        )
    stored_count = ckpt.get("frame_count")
    # only a count from the header (or a file listing) binds: one estimated from the duration
    # (e.g. Matroska) is wrong for variable frame rate, and the checkpoint may then be ahead of it
    if job.count_exact and job.frame_count and (
        frames_done > job.selected or (stored_count is not None and stored_count != job.frame_count)
    ):
        made_for = f" made for an input of {stored_count} frames" if stored_count is not None else ""
        selected = f" ({job.selected} selected)" if job.selected != job.frame_count else ""
        raise ValueError(
            f"checkpoint {str(path)!r}{made_for} is at frame {frames_done}, but {str(job.path)!r} has "
            f"{job.frame_count} frames{selected}: it belongs to another input. Run without resuming to start over."
        )
    stored_bytes = ckpt.get("input_bytes")
    if stored_bytes is not None and job.input_bytes is not None and stored_bytes != job.input_bytes:
        # a frame count estimated from the duration cannot tell two videos of one size apart
        raise ValueError(
            f"checkpoint {str(path)!r} was made for an input file of {stored_bytes} bytes, but "
            f"{str(job.path)!r} has {job.input_bytes}: it belongs to another input. Run without "
            "resuming to start over."
        )
    try:  # the state itself (finite, positive variances, ...): checked by the module
        BackgroundSubtractorMOG(**{**settings, "compile": False}).load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} holds an unusable model state: {exc}") from exc
    return frames_done, state


def _save_checkpoint(
    path: Path, state: dict, frames_done: int, settings: dict, job: _Job, gray: bool, postprocess: dict
) -> None:
    buffer = io.BytesIO()
    torch.save(
        dict(
            format=_CHECKPOINT_FORMAT, frames_done=frames_done, state=state, settings=_state_settings(settings),
            gray=gray, size=[job.height, job.width], source_size=[job.source_height, job.source_width],
            selection=job.selection(), input=str(job.path), postprocess=postprocess,
            frame_count=job.frame_count if job.count_exact else None, input_bytes=job.input_bytes,
        ),
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def _save_trailing_checkpoints(
    active: list[_Stream], states: list[dict[str, Tensor]], frames: int, settings: dict, gray: bool,
    postprocess: dict,
) -> None:
    """Save each stream's state of ``frames`` frames, once its writers hold those frames
    (not only queued: a hard kill must not leave a checkpoint ahead of the outputs)."""
    for stream in active:
        stream.drain()
    for stream, state in zip(active, states):
        _save_checkpoint(stream.job.out / _CHECKPOINT, state, frames, settings, stream.job, gray, postprocess)


def _stream_state(model: BackgroundSubtractorMOG, index: int) -> dict[str, Tensor]:
    """The model state of stream ``index`` alone (batch-first buffers sliced; ``frames_seen`` is
    shared by the batch). Cloned to CPU so that a saved checkpoint holds only this stream."""
    state = model.state_dict()
    return {k: (v[index : index + 1] if v.ndim else v).detach().to("cpu", copy=True) for k, v in state.items()}


def _keep_streams(model: BackgroundSubtractorMOG, keep: list[int]) -> None:
    """Drop finished streams from the batch: keep the state of streams ``keep`` (in order)."""
    if not model.is_initialized or not keep:
        return
    index = torch.tensor(keep, dtype=torch.int64, device=model.weight.device)
    model.load_state_dict({k: v.index_select(0, index) if v.ndim else v for k, v in model.state_dict().items()})


def _clear_png_frames(folder: Path, first: int) -> None:
    """Delete the numbered frames ``first`` and later of an earlier run (stale otherwise)."""
    if folder.is_dir():
        for p in folder.iterdir():
            m = _PNG_FRAME.match(p.name)
            if m and int(m.group(1)) >= first:
                p.unlink()


def _check_png_frames(folder: Path, done: int, source: Path) -> None:
    """The numbered frames ``0 .. done - 1`` of an interrupted PNG run are all there."""
    present = {int(m.group(1)) for p in folder.iterdir() if (m := _PNG_FRAME.match(p.name))}
    missing = [i for i in range(done) if i not in present]
    if missing:
        raise FileNotFoundError(
            f"cannot resume {str(source)!r}: {len(missing)} of the {done} frames the checkpoint has seen are "
            f"missing from {str(folder)!r} (first: {missing[0]:06d}.png). Run without resuming to start over."
        )


def _previous_path(path: Path) -> Path:
    """Where an output file waits while a resumed run copies its first frames."""
    return path.with_name(path.stem + ".previous" + path.suffix)


def _rebuild_overlay(job: _Job, done: int, gray: bool, masks: Path) -> Iterator[Tensor]:
    """The first ``done`` overlay frames of ``job``, made again from its (selected, resized)
    frames and the interrupted run's lossless masks (a video file): ``(3, H, W)`` uint8 each."""
    with job.reader(gray, count=done, prefetch=0) as frames, VideoReader(masks, end=done, prefetch=0) as mask_frames:
        for frame, mask in zip(frames, mask_frames):
            yield _overlay(frame[None], mask[None, :1] > 127)[0]


def _open_writer(
    path: Path, fps: float, done: int, mask_format: str, *, lossless: bool, channel: bool, durable: bool,
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
    previous = _previous_path(path)
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


def _position_text(value: int | float | None, index: int | None) -> str:
    """``start``/``end`` as given and as a frame index, for messages: ``12.5 s = frame 312``."""
    given = f"{value:g} s" if isinstance(value, float) else f"frame {value}"
    return given if index is None or isinstance(value, int) else f"{given} = frame {index}"


def _check_selection(job: _Job, start: int | float | None, end: int | float | None) -> None:
    """The selection of ``job`` holds a frame (named errors, before any work)."""
    if job.end is not None and job.end <= job.first:
        raise ValueError(
            f"`end` ({_position_text(end, job.end)}) must come after `start` ({_position_text(start or 0, job.first)})"
            f" for {str(job.path)!r}: no frame would be processed."
        )
    # a count estimated from a duration may be a little short (see VideoReader): refuse only beyond its slack;
    # an input that still ends before `start` fails when it is read (_nothing_selected)
    slack = 0 if job.count_exact else max(2, int(0.02 * job.frame_count))
    if job.frame_count and job.first >= job.frame_count + slack:
        about = "" if job.count_exact else "about "
        raise ValueError(
            f"`start` ({_position_text(start, job.first)}) is at or after the end of {str(job.path)!r} "
            f"({about}{job.frame_count} frames, {job.frame_count / job.fps:.2f} s at {job.fps:g} frames/s): "
            "no frame would be processed."
        )


def _nothing_selected(job: _Job) -> ValueError:
    """The error of an input that ended before its first selected frame."""
    return ValueError(
        f"{str(job.path)!r} ended before frame {job.first} (`start`): no frame was processed."
    )


def _json_position(value: Any) -> Any:
    """``start``/``end`` as JSON keeps them: an int index stays an int, seconds a float."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value  # refused by VideoReader with a TypeError


def run_background(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    n_components: int = 3,
    learning_rate: float = 0.005,
    background_ratio: float = 0.7,
    device: str | torch.device = "auto",
    batch_streams: int = 1,
    mask_format: MaskFormat = "mp4",
    overlay: bool = False,
    checkpoint_every: int = 0,
    resume: bool = False,
    gray: bool = False,
    start: int | float | None = None,
    end: int | float | None = None,
    step: int = 1,
    size: tuple[int, int] | None = None,
    model_options: dict | None = None,
    postprocess: dict | None = None,
    progress: bool = True,
    raise_errors: bool = True,
    on_damage: Literal["stop", "skip"] = "stop",
    stop_after: int | None = None,
) -> list[dict]:
    """Run the background model over videos or image-sequence folders and write the results.

    The model sees the *processed* frames of each input: the source frames ``start``,
    ``start + step``, ... before ``end`` (as :class:`~torchgmm.io.video.VideoReader` selects
    them; frames before ``start`` are decoded and skipped), resized to ``size`` when given.
    Every output is of the processed frames. Per input, in ``out_dir/<name>/`` (``<name>``: the
    file's stem or the folder's name; a CDnet ``sequence/input`` folder is named after the
    sequence):

    - ``mask.mp4`` / ``mask.mkv`` (lossless: H.264 RGB qp 0 / FFV1) or ``mask/000000.png`` ...:
      the foreground masks, 255 = foreground, one per processed frame, at the source frame
      rate divided by ``step`` (so that they last as long as the part of the video they cover);
    - ``background.png``: the background image at the end (mean of each pixel's most
      probable component), at the processed size;
    - ``overlay.mp4`` / ``overlay.mkv`` (H.264 CRF 18) or ``overlay/``, with ``overlay``: the
      processed (resized) frames with foreground tinted red;
    - ``summary.json``: frames (processed), frames/s achieved, settings, ``complete`` and
      ``error``; ``width``/``height`` (processed) and ``source_width``/``source_height``,
      ``source_fps`` and ``output_fps`` (the masks'), ``start``/``end`` as given (int: frame
      index, float: seconds), ``step``, ``size`` as given (``[H, W]``), and ``source_frames``:
      ``{"first", "last"}``, the source indices of the first and last processed frames;
      ``input``, ``output``, ``mask``, ``overlay`` and ``background`` as absolute paths
      (so the file means the same read from any folder);
    - ``checkpoint.pt``, with ``checkpoint_every``: the model state every N frames (saved one
      frame behind, with the videos written ``durable``, so that even after a hard kill the
      outputs hold every frame the checkpoint has seen) and when the run ends or is interrupted.
      It records the selection as source frame indices and the size; a resume must select
      the same frames at the same size.

    Inputs of the same processed size (and, when resuming, the same checkpoint frame) are
    processed together, ``batch_streams`` at a time, as one batch of streams on one device;
    the masks equal those of separate runs. With ``size``, inputs of different source sizes
    are batched together (each is resized first). Seconds are converted with each input's
    own frame rate. A stream that ends (or fails) leaves the batch and the others go on.

    Args:
        inputs: video files or folders of numbered images.
        out_dir: output folder (created).
        n_components: K.
        learning_rate: alpha.
        background_ratio: T.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        batch_streams: how many same-size inputs share one batch.
        mask_format: ``"mp4"``, ``"mkv"`` or ``"png"``.
        overlay: also write the overlay.
        checkpoint_every: save the model state every this many frames (0 = never).
        resume: continue each input from its ``checkpoint.pt`` (inputs without one start from
            the beginning); the masks then equal those of an uninterrupted run. The settings
            must be those of the interrupted run.
        gray: model grey frames (C = 1) instead of RGB.
        start: first source frame to process: an index (int) or a time in seconds (float,
            the first frame at or after it, at the input's average frame rate). Default 0.
        end: stop before this source frame (index or seconds, exclusive); must come after
            ``start``. Default: the end of the input; an ``end`` beyond it is the end.
        step: process every ``step``-th frame from ``start`` (>= 1).
        size: ``(H, W)``: resize every frame to exactly this size before the model
            (the aspect ratio is not kept; bilinear, antialiased when shrinking: see
            :class:`~torchgmm.io.video.VideoReader`). None keeps each input's size.
        model_options: further keyword arguments of :class:`BackgroundSubtractorMOG`
            (e.g. ``compile=False``, ``rho="paper"``).
        postprocess: keyword arguments of :func:`apply_postprocess` (e.g. ``{"median": 5,
            "min_area": 50}``): the masks and the overlay are cleaned before writing; the
            model learns from the frames as without it. Off by default. The steps that are
            on (window or area > 1) go into ``summary.json`` and the checkpoint, and a
            resume must have the same ones.
        progress: show a progress bar (frames/s) per batch of streams on stderr.
        raise_errors: when an input fails part-way, raise its error once every other input
            is done; False returns instead, with the error in that input's summary.
        on_damage: ``"stop"``: an input with a frame that cannot be decoded ends there (its
            masks up to the damage are written, its summary names the frame, the other
            inputs go on). ``"skip"``: go on past damaged frames (see
            :class:`~torchgmm.io.video.VideoReader`); ``summary.json``'s ``skipped_frames``
            lists the skipped source ranges ``[first, last]``, and the masks are of the frames
            decoded. Not with ``checkpoint_every``/``resume``, which count processed frames.
        stop_after: stop each batch once this many processed frames of its inputs are done
            (counted from the first selected frame, as checkpoints are); the summaries say
            ``complete: false``. For tests of interrupted runs.

    Returns:
        One summary dict per input, in the order of ``inputs`` (as written to ``summary.json``).

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image (before any work).
        VideoDecodeError: an input is not a readable video (before any work), or decoding fails
            part-way (after every input is done, and what was decoded is written; with
            ``raise_errors``).
        ValueError: a bad setting (e.g. ``step`` < 1, negative ``start``, ``end`` not after
            ``start``, ``start`` at or after the end of an input), an input without a video
            stream, or a checkpoint that does not fit (other settings or selection; before any
            work).
        TypeError: ``start``/``end`` neither int nor float, ``step`` not an int (before any work).
        KeyboardInterrupt: re-raised after the outputs are finalised (and, with
            ``checkpoint_every``, a checkpoint saved to resume from).

    Shape:
        - Input frames: ``(C, H0, W0)`` per source frame (C = 3, or 1 with ``gray``).
        - Model input: ``(B, C, H, W)`` per processed frame, B the inputs batched together and
          ``(H, W)`` = ``size`` or ``(H0, W0)``.
        - Written masks: ``(T, 1, H, W)``, T = the processed frames (``summary["frames"]``).

    Example:
        >>> import tempfile
        >>> from torchgmm.demo import synthetic_clip
        >>> frames, _, _ = synthetic_clip(40, 48, 64)  # (T, C, H, W) uint8: a square moving over a texture
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with VideoWriter(f"{d}/cam.mkv", fps=25) as writer:
        ...         writer.write(frames)
        ...     # source frames 10, 12, ..., 28 (1.2 s is frame 30), resized to (H, W) = (24, 32)
        ...     (s,) = run_background([f"{d}/cam.mkv"], f"{d}/out", start=10, end=1.2, step=2, size=(24, 32),
        ...                           device="cpu", model_options=dict(compile=False), progress=False)
        ...     with VideoReader(s["mask"], gray=True, batch_size=100) as reader:
        ...         (masks,) = list(reader)  # (T, 1, H, W) uint8, 255 = foreground
        >>> s["frames"], s["source_frames"], s["output_fps"], tuple(masks.shape)
        (10, {'first': 10, 'last': 28}, 12.5, (10, 1, 24, 32))

        Several cameras as one batch: ``run_background(["cam1.mp4", "cam2.mp4"], "out",
        batch_streams=2)``.
    """
    from tqdm import tqdm

    if mask_format not in ("mp4", "mkv", "png"):
        raise ValueError(f"`mask_format` must be 'mp4', 'mkv' or 'png', got {mask_format!r}.")
    if isinstance(batch_streams, bool) or not isinstance(batch_streams, int) or batch_streams < 1:
        raise ValueError(f"`batch_streams` must be an int >= 1, got {batch_streams!r}.")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"`checkpoint_every` must be an int >= 0 (0 = never), got {checkpoint_every!r}.")
    if on_damage not in ("stop", "skip"):
        raise ValueError(f"`on_damage` must be 'stop' or 'skip', got {on_damage!r}.")
    if on_damage == "skip" and (checkpoint_every or resume):
        raise ValueError(
            "on_damage='skip' cannot be combined with checkpoints or resume: a checkpoint counts "
            "processed frames, which skipped frames would shift; use on_damage='stop'."
        )
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given: name video files or image-sequence folders.")
    device = resolve_device(device)
    settings = dict(
        n_components=n_components, learning_rate=learning_rate, background_ratio=background_ratio,
        **(model_options or {}),
    )
    BackgroundSubtractorMOG(**settings)  # validate the settings before any work
    postprocess = _normalise_postprocess(postprocess)
    start, end = _json_position(start), _json_position(end)
    out_dir = Path(out_dir)

    # Open (and so validate) every input, and read every checkpoint, before any work.
    jobs: list[_Job] = []
    used: set[str] = set()
    for path in inputs:
        path = Path(path)
        # the reader checks start/end/step/size and turns seconds into frame indices
        with VideoReader(path, gray=gray, prefetch=0, start=start, end=end, step=step, size=size) as reader:
            job = _Job(path, out_dir, reader.height, reader.width, *reader.source_size, reader.frame_count,
                       reader.fps, first=reader.start_index, end=reader.end_index, step=reader.step, size=reader.size,
                       selected=len(reader.indices), count_exact=reader.frame_count_exact,
                       input_bytes=path.stat().st_size if path.is_file() else None)
        _check_selection(job, start, end)
        name, i = _output_name(path), 1
        while name in used:
            i += 1
            name = f"{_output_name(path)}-{i}"
        used.add(name)
        job.out = out_dir / name
        if job.out.exists() and not job.out.is_dir():
            raise NotADirectoryError(f"cannot write the outputs of {str(path)!r}: {str(job.out)!r} is a file.")
        checkpoint = job.out / _CHECKPOINT
        if resume and checkpoint.exists():
            job.resumed, job.state = _read_checkpoint(checkpoint, settings, job, gray, postprocess)
            for kind, wanted in (("mask", True), ("overlay", overlay)):
                previous = job.out / (kind + ("" if mask_format == "png" else f".{mask_format}"))
                if wanted and job.resumed and not (previous.exists() or _previous_path(previous).exists()):
                    hint = "another mask format" + (" or without the overlay" if kind == "overlay" else "")
                    raise FileNotFoundError(
                        f"cannot resume {str(path)!r}: {str(previous)!r} of the interrupted run is missing "
                        f"(was it run with {hint}?). Run without resuming to start over."
                    )
                if wanted and job.resumed and mask_format == "png":
                    _check_png_frames(previous, job.resumed, path)
        jobs.append(job)
    # Every output folder is made now: a file in the way or a missing permission fails here,
    # before any work, not part-way with other inputs' results half written.
    with ExitStack() as locks:  # one run per output folder at a time, held to the end
        for job in jobs:
            make_output_folder(job.out)
            locks.enter_context(lock_output_folder(job.out, "torchgmm background"))
            remove_stale_temporaries(job.out)  # left by a run killed outright
        return _run_jobs(jobs, batch_streams, raise_errors, device=device, settings=settings,
                         mask_format=mask_format, overlay=overlay, checkpoint_every=checkpoint_every, gray=gray,
                         postprocess=postprocess, progress=progress, tqdm=tqdm, stop_after=stop_after,
                         positions=dict(start=start, end=end), on_damage=on_damage)


def _run_jobs(jobs: list[_Job], batch_streams: int, raise_errors: bool, **options: Any) -> list[dict]:
    """Run the planned jobs, ``batch_streams`` same-size inputs at a time."""

    # batched by the size the model sees: with `size` every input, whatever its own size
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault((job.height, job.width, job.resumed), []).append(job)
    batches = [g[i : i + batch_streams] for g in groups.values() for i in range(0, len(g), batch_streams)]

    summaries: dict[Path, dict] = {}
    errors: list[BaseException] = []
    for batch in batches:
        for job, summary, error in _run_batch(batch, **options):
            summaries[job.out] = summary
            if error is not None:
                errors.append(error)
    if errors and raise_errors:
        for other in errors[1:]:
            add_note(errors[0], f"another input failed as well: {other}")
        raise errors[0]
    return [summaries[job.out] for job in jobs]


def _run_batch(
    jobs: list[_Job], *, device: torch.device, settings: dict, mask_format: str, overlay: bool,
    checkpoint_every: int, gray: bool, postprocess: dict, progress: bool, tqdm: Callable, stop_after: int | None,
    positions: dict, on_damage: str = "stop",
) -> list[tuple[_Job, dict, BaseException | None]]:
    """Process same-size inputs as one batch of streams; one (job, summary, error) per input.

    ``positions``: ``start`` and ``end`` as the caller gave them, for the summaries."""
    resumed = jobs[0].resumed
    model = BackgroundSubtractorMOG(**settings).to(device)
    if resumed:
        states = [job.state for job in jobs]
        # batch-first buffers are concatenated; frames_seen (0-d) is shared and equal (== resumed)
        model.load_state_dict({k: torch.cat([s[k] for s in states]) if v.ndim else v for k, v in states[0].items()})
    results: list[tuple[_Job, dict, BaseException | None]] = []
    active: list[_Stream] = []
    t0 = time.perf_counter()
    frames_done = resumed  # frames fully processed and written for every active stream
    suffix = "" if mask_format == "png" else f".{mask_format}"
    lengths = [job.selected for job in jobs]
    bar = tqdm(
        total=max(lengths) if all(lengths) else None, initial=resumed, unit="frame", dynamic_ncols=True,
        desc=", ".join(job.path.name for job in jobs)[:60], disable=not progress, file=sys.stderr,
    )

    def finish(stream: _Stream, position: int, error: BaseException | None, complete: bool) -> None:
        """Close one stream's files, then write its background, checkpoint and summary.

        The stream counts as finished only at the end: a Ctrl-C in here (writing the
        background can take a while) leaves it to the ``finally`` below, which finishes it
        again as interrupted, so its summary and checkpoint are still written. Every step
        is idempotent (closed files stay closed; the files are replaced atomically).
        """
        job = stream.job
        stream.reader.close()
        close_error: Exception | None = None
        for writer in (stream.mask, stream.overlay):
            try:
                if writer is not None:
                    writer.close()
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: this input fails, the others go on
                close_error = close_error or exc
        if close_error is None:
            stream.drop_previous()  # closed: the copies are complete
        elif error is None:
            error, complete = close_error, False
        elapsed = time.perf_counter() - t0
        consistent = model.is_initialized and int(model.frames_seen) == stream.done
        if model.is_initialized:
            write_png(job.out / "background.png", model.background_image()[position].cpu())
        if checkpoint_every and consistent and stream.done > resumed and close_error is None:
            _save_checkpoint(job.out / _CHECKPOINT, _stream_state(model, position), stream.done, settings, job, gray,
                             postprocess)
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else (None if error is None else str(error))
        summary = dict(
            input=str(job.path.absolute()), output=str(job.out.absolute()), frames=stream.done, resumed_from=resumed,
            complete=complete and error is None, error=message,
            error_type=None if error is None else type(error).__name__, error_frame=getattr(error, "frame_index", None),
            # None when nothing was left to do (a resumed run that was already complete)
            fps=round((stream.done - resumed) / elapsed, 2) if elapsed > 0 and stream.done > resumed else None,
            seconds=round(elapsed, 3), width=job.width, height=job.height, source_width=job.source_width,
            source_height=job.source_height, source_fps=job.fps, output_fps=job.fps / job.step,
            start=positions["start"], end=positions["end"], step=job.step,
            size=None if job.size is None else list(job.size),
            # the source frames the masks are of: first, first + step, ..., last (less the skipped)
            source_frames=dict(
                first=job.first,
                last=_last_source_frame(job, stream.done, stream.reader.skipped),
            ) if stream.done else None,
            rotation=stream.reader.rotation, on_damage=on_damage,
            skipped_frames=[[first, last] for first, last, _ in stream.reader.skipped],
            device=str(device),
            batch_streams=len(jobs), gray=gray, settings=json.loads(_settings_json(settings)),
            postprocess=postprocess or None,
            mask=str(stream.mask.path.absolute()),
            overlay=None if stream.overlay is None else str(stream.overlay.path.absolute()),
            background=str((job.out / "background.png").absolute()) if model.is_initialized else None,
        )
        atomic_write_text(job.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        results.append((job, summary, None if isinstance(error, KeyboardInterrupt) else error))
        stream.finished = True

    interrupt: BaseException | None = None
    try:
        with ExitStack() as stack:
            for job in jobs:
                job.out.mkdir(parents=True, exist_ok=True)
                if not resumed:
                    (job.out / _CHECKPOINT).unlink(missing_ok=True)  # stale, from an earlier run
                # durable when a checkpoint may be resumed from: see _open_writer and the trailing
                # checkpoints below
                durable = bool(checkpoint_every) or resumed > 0
                fps = job.fps / job.step  # one mask per processed frame, over the same time
                mask, previous = _open_writer(job.out / f"mask{suffix}", fps, resumed, mask_format,
                                              lossless=True, channel=True, durable=durable)
                # encoded on a thread while the next frame is modelled; a durable run writes in
                # step, so that a hard kill loses at most the last frame (see VideoWriter)
                mask = stack.enter_context(WriterThread(mask, maxsize=0 if durable else 8))
                leftovers = [previous]
                over = None
                if overlay:
                    # video masks of an interrupted run: the lossy overlay is rebuilt from them
                    rebuild = functools.partial(_rebuild_overlay, job, resumed, gray, previous) if previous else None
                    over, previous = _open_writer(job.out / f"overlay{suffix}", fps, resumed, mask_format,
                                                  lossless=False, channel=False, durable=durable, source=rebuild)
                    over = stack.enter_context(WriterThread(over, maxsize=0 if durable else 8))
                    leftovers.append(previous)
                reader = stack.enter_context(job.reader(gray, skip=resumed, device=device, on_damage=on_damage))
                active.append(_Stream(job, reader, iter(reader), mask, over, resumed,
                                      previous=[p for p in leftovers if p is not None]))
            while active:
                if stop_after is not None and frames_done >= stop_after:
                    break
                frames, ended = [], []
                for position, stream in enumerate(active):
                    try:
                        frames.append(next(stream.frames))
                    except StopIteration:
                        # (an input whose frame count is only estimated may end before `start`)
                        ended.append((position, stream, _nothing_selected(stream.job) if not stream.done else None))
                    except VideoDecodeError as exc:  # frames before the damage are done
                        ended.append((position, stream, exc))
                if ended:
                    if len(ended) == len(active):
                        bar.close()
                    for position, stream, error in ended:
                        finish(stream, position, error, complete=error is None)
                    keep = [i for i, s in enumerate(active) if not s.finished]
                    active = [active[i] for i in keep]
                    _keep_streams(model, keep)
                if not active:
                    break
                # (B, C, H, W); on the CPU stacked channel-major, the layout the compiled update
                # reads fastest there (see component_major), so that forward need not copy it
                batch = torch.stack(frames, 1).movedim(1, 0) if device.type == "cpu" else torch.stack(frames)
                # A checkpoint trails the written frames by one: the (durable) writers hand a
                # frame to the file only when the next one arrives, so after a hard kill the
                # outputs hold every frame but the last written, and the checkpoint must not be
                # ahead of them. The state before this frame's update is copied now and saved
                # once this frame is written.
                due = checkpoint_every and (frames_done + 1) % checkpoint_every == 0 and model.is_initialized
                before = [_stream_state(model, i) for i in range(len(active))] if due else None
                masks = model(batch)  # (B, 1, H, W) bool
                if postprocess:
                    masks = apply_postprocess(masks, **postprocess)
                tinted = _overlay(batch, masks) if overlay else None
                for i, stream in enumerate(active):
                    stream.mask.write(masks[i])
                    if tinted is not None:
                        stream.overlay.write(tinted[i])
                    stream.done += 1
                    if stream.previous:  # a durable writer has now passed on the last copied frame
                        stream.drain()
                        stream.drop_previous()
                frames_done += 1
                bar.update(1)
                if before is not None:
                    _save_trailing_checkpoints(active, before, frames_done - 1, settings, gray, postprocess)
    except BaseException as exc:  # outputs are closed by now; summarise, then re-raise
        interrupt = exc
        raise
    finally:
        bar.close()
        for position, stream in enumerate(active):
            if stream.finished:
                continue
            try:
                finish(stream, position, interrupt, complete=False)
            except Exception as exc:  # noqa: BLE001 - keep the original error
                if interrupt is None:
                    raise
                add_note(interrupt, f"while finishing {str(stream.job.path)!r}: {type(exc).__name__}: {exc}")
    return results


# ----------------------------------------------------------------------------------------
# CDnet evaluation
# ----------------------------------------------------------------------------------------
def find_cdnet_sequences(root: str | os.PathLike) -> list[Path]:
    """Every folder under ``root`` (or ``root`` itself) holding ``input/`` and ``groundtruth/``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no sequence under ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist or is not a folder.")
    found = sorted({p.parent for p in root.rglob("input") if p.is_dir() and (p.parent / "groundtruth").is_dir()})
    if not found:
        raise ValueError(
            f"no CDnet sequences under {str(root)!r}: expected category/sequence/ folders holding "
            "input/, groundtruth/, temporalROI.txt and ROI.bmp."
        )
    return found


def _sequence_name(seq_dir: Path) -> str:
    return f"{seq_dir.parent.name}/{seq_dir.name}"


def _check_sequence(seq_dir: Path) -> None:
    """Everything :func:`evaluate_sequence` needs is there (raises before any work).

    Frames are paired by position, so the input and ground-truth files of the scored frames
    must be numbered alike and without gaps: a missing ``in000012.jpg`` would otherwise
    score every later frame against the ground truth of the next one.
    """
    info = read_cdnet_sequence_info(seq_dir)
    last = info.temporal_roi[1]
    if info.roi is not None and not bool(info.roi.any()):
        raise ValueError(f"the ROI image of {str(seq_dir)!r} selects no pixel (all zero): nothing would be scored.")
    first: dict[str, Path] = {}
    for sub in ("input", "groundtruth"):
        images = list_image_sequence(seq_dir / sub)
        if len(images) < last:
            raise ValueError(
                f"{str(seq_dir / sub)!r} holds {len(images)} images but temporalROI.txt scores frames up to {last}."
            )
        size = tuple(decode_image_file(images[0]).shape[-2:])
        if info.roi is not None and tuple(info.roi.shape[-2:]) != size:
            raise ValueError(
                f"{str(seq_dir / 'ROI.bmp')!r} is {tuple(info.roi.shape[-2:])} (H, W) but {str(images[0])!r} "
                f"is {size}."
            )
        gap = _numbering_gap(images[:last])
        if gap is not None:
            prev, cur, path = gap
            raise ValueError(
                f"{str(seq_dir / sub)!r}: frame numbers jump from {prev} to {cur} ({path.name}); "
                "frames are paired with the ground truth by position, so every frame up to the "
                "end of the temporal ROI must be there."
            )
        first[sub] = images[0]
    starts = [_frame_number(first[sub]) for sub in ("input", "groundtruth")]
    if None not in starts and starts[0] != starts[1]:
        raise ValueError(
            f"{str(seq_dir)!r}: the input starts at {first['input'].name} but the ground truth at "
            f"{first['groundtruth'].name}; frames are paired by position and must be numbered alike."
        )


#: every value a CDnet ground-truth pixel may hold
_GT_LABELS = (GT_STATIC, GT_SHADOW, GT_OUTSIDE_ROI, GT_UNKNOWN, GT_MOTION)
#: share of the scored pixels that may hold other values (anti-aliased edges in a few
#: CDnet files) before the ground truth is taken for another coding (0/1, 0/255 RGB, ...)
_MAX_UNLABELLED_SHARE = 0.01


def evaluate_sequence(
    seq_dir: str | os.PathLike,
    make_model: Callable[[], Callable[[Tensor], Tensor]],
    *,
    device: str | torch.device = "cpu",
    postprocess: dict | None = None,
    gray: bool = False,
) -> dict:
    """Run one model over one CDnet sequence and score it, with and without post-processing.

    Frames 1 .. last of the temporal ROI are fed in order (the frames before its start warm
    the model up); scores count frames inside the temporal ROI and pixels inside ``ROI.bmp``.

    Args:
        seq_dir: a CDnet sequence folder (``input/``, ``groundtruth/``, ``temporalROI.txt``,
            ``ROI.bmp``).
        make_model: returns a fresh callable mapping ``(1, C, H, W)`` uint8 frames to
            ``(1, 1, H, W)`` bool masks (see :func:`method_factories`).
        device: where frames, masks and counts live.
        postprocess: keyword arguments of :func:`apply_postprocess`; the row then also holds
            ``"postprocessed"`` scores.
        gray: feed grey frames (C = 1).

    Returns:
        ``{"sequence": "category/name", "frames", "fps", "Recall", ..., "F-measure", "TP", ...}``.
    """
    seq_dir = Path(seq_dir)
    device = resolve_device(device)
    info = read_cdnet_sequence_info(seq_dir)
    roi = info.roi.to(device)
    raw = ChangeDetectionCounter(roi=roi, temporal_roi=info.temporal_roi)
    cleaned = ChangeDetectionCounter(roi=roi, temporal_roi=info.temporal_roi) if postprocess else None
    model = make_model()
    first, last = info.temporal_roi
    labels = torch.tensor(_GT_LABELS, dtype=torch.uint8, device=device)
    unlabelled = torch.zeros((), dtype=torch.int64, device=device)  # scored pixels with other values
    frames = 0
    t0 = time.perf_counter()
    with VideoReader(seq_dir / "input", gray=gray, end=last, device=device) as inputs, VideoReader(
        seq_dir / "groundtruth", gray=True, end=last, device=device
    ) as truth:
        for index, (frame, gt) in enumerate(zip(inputs, truth, strict=True)):
            mask = model(frame.unsqueeze(0))
            raw.update(mask, gt.unsqueeze(0), frame_index=index)
            if cleaned is not None:
                cleaned.update(apply_postprocess(mask, **postprocess), gt.unsqueeze(0), frame_index=index)
            if index + 1 >= first:  # no host sync: checked once at the end
                unlabelled += (~torch.isin(gt[0], labels) & roi).sum()
            frames += 1
    elapsed = time.perf_counter() - t0
    scored = int(roi.sum()) * (last - first + 1)
    if int(unlabelled) > _MAX_UNLABELLED_SHARE * scored:
        raise ValueError(
            f"{str(seq_dir / 'groundtruth')!r}: {int(unlabelled)} of the {scored} scored pixels "
            f"({100 * int(unlabelled) / scored:.1f}%) hold values other than CDnet's labels {_GT_LABELS} "
            "(0 static, 50 shadow, 85 outside the ROI, 170 unknown, 255 motion) and would not be scored; "
            "is the ground truth coded otherwise (e.g. 0/1)?"
        )
    row = dict(sequence=_sequence_name(seq_dir), frames=frames, fps=frames / elapsed, **raw.compute())
    if cleaned is not None:
        row["postprocessed"] = cleaned.compute()
    _warn_undefined(row)
    return row


def _warn_undefined(row: dict) -> None:
    """One warning naming the sequence and its undefined scores, and why they are."""
    undefined = [k for k in SCORE_KEYS if math.isnan(row[k])]
    if not undefined:
        return
    tp, fp, fn, tn = (row[k] for k in ("TP", "FP", "FN", "TN"))
    why = (
        "no pixel is scored (every pixel of its temporal ROI is outside the ROI or unknown: 85/170)"
        if tp + fp + fn + tn == 0
        else "its ground truth has no motion pixel (255)" if tp + fn == 0
        else "nothing was detected" if tp + fp == 0
        else "no static pixel (0/50) is scored"
    )
    warnings.warn(
        f"{row['sequence']}: {', '.join(undefined)} undefined (NaN; null in results.json, blank in "
        f"results.csv) because {why}; left out of the means.",
        UndefinedScoreWarning,
        stacklevel=3,
    )


SCORE_KEYS = ("Recall", "Specificity", "FPR", "FNR", "PWC", "Precision", "F-measure")
#: file stem of the rows an interrupted evaluation writes (see :func:`evaluate_dataset`)
INTERRUPTED_STEM = "results-interrupted"


def evaluate_dataset(
    root: str | os.PathLike,
    *,
    methods: dict[str, Callable[[], Callable[[Tensor], Tensor]]],
    device: str | torch.device = "auto",
    postprocess: dict | None = None,
    gray: bool = False,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    raise_errors: bool = True,
    metadata: dict | None = None,
) -> list[dict]:
    """Evaluate each method on every CDnet sequence under ``root``.

    Every sequence is checked (ROI, temporal ROI, input and ground-truth images numbered
    alike) and ``out_dir`` created before any model runs. A sequence that fails part-way (a
    corrupt frame, ground truth that is not CDnet-coded) does not stop the others: its row
    holds the error instead of scores, and the results of the others are written.

    Args:
        root: dataset root (``category/sequence/`` folders), or one sequence folder.
        methods: name -> model factory (see :func:`method_factories`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        postprocess: keyword arguments of :func:`apply_postprocess`; each row then holds
            ``"postprocessed"`` scores as well.
        gray: feed grey frames.
        out_dir: write ``results.json`` and ``results.csv`` there (see :func:`write_results`;
            the JSON says ``"complete": true``), also when a sequence failed. On Ctrl-C the
            rows done so far go to ``results-interrupted.json``/``.csv`` (``"complete":
            false``) instead, so an earlier complete ``results.json`` is not replaced by a
            partial one; a complete run removes them.
        progress: a progress bar per method on stderr.
        raise_errors: once every sequence is done and the results are written, raise the
            first sequence's error (the others as notes); False returns the rows instead.
        metadata: JSON-serialisable facts about the run (e.g. the model settings, which
            ``methods`` does not expose) for the written JSON's ``"settings"``, beside the
            dataset root, methods, device, ``gray``, post-processing and versions recorded
            here (a key of both takes the value given here).

    Returns:
        One row per (method, sequence), then per method the per-category and overall means
        (``sequence`` = ``"category/mean"``, ``"overall/mean"``), as CDnet averages: a
        category's scores are the means over its sequences, the overall scores the means
        over the categories; sequences that failed are left out. A failed sequence's row has
        ``"error"`` (the message) and ``"error_type"`` instead of scores.

    Raises:
        FileNotFoundError, ValueError: a missing or malformed sequence, or a bad setting
            (before any work).
        OSError: ``out_dir`` cannot be created (before any work).
        Exception: with ``raise_errors``, the first failed sequence's error, after the
            results are written.
    """
    from tqdm import tqdm

    device = resolve_device(device)
    sequences = find_cdnet_sequences(root)
    _normalise_postprocess(postprocess)  # checked before any work; applied as given
    for seq in sequences:
        _check_sequence(seq)
    if out_dir is not None:
        make_output_folder(out_dir)  # a file in the way fails now, not after the work
    settings = {  # the caller's facts win over those recorded here
        **dict(root=str(Path(root).resolve()), methods=list(methods), device=str(device), gray=gray,
               postprocess=postprocess, torchgmm=__version__, torch=torch.__version__),
        **(metadata or {}),
    }
    rows: list[dict] = []
    errors: list[Exception] = []
    try:
        for name, make_model in methods.items():
            for seq in tqdm(sequences, desc=name, disable=not progress, file=sys.stderr):
                try:
                    row = evaluate_sequence(seq, make_model, device=device, postprocess=postprocess, gray=gray)
                except Exception as exc:  # noqa: BLE001 - this sequence fails, the others go on
                    errors.append(exc)
                    row = dict(sequence=_sequence_name(seq), error=str(exc), error_type=type(exc).__name__)
                rows.append(dict(method=name, **row))
    except BaseException as exc:  # Ctrl-C: the rows done so far are kept, apart from a complete run's
        if out_dir is not None:
            paths = write_results(rows + _mean_rows(rows), out_dir, stem=INTERRUPTED_STEM, complete=False,
                                  settings=settings)
            add_note(exc, f"the {len(rows)} sequence run(s) done are in {str(paths[0])!r}")
        raise
    rows += _mean_rows(rows)
    if out_dir is not None:
        write_results(rows, out_dir, complete=True, settings=settings)
        for stale in (INTERRUPTED_STEM + ".json", INTERRUPTED_STEM + ".csv"):  # of an earlier, interrupted run
            (Path(out_dir) / stale).unlink(missing_ok=True)
    if errors and raise_errors:
        for other in errors[1:]:
            add_note(errors[0], f"another sequence failed as well: {other}")
        raise errors[0]
    return rows


def write_results(
    rows: list[dict], out_dir: str | os.PathLike, stem: str = "results", **extra: Any
) -> tuple[Path, Path]:
    """Write evaluation rows as ``<stem>.json`` (``{"rows": [...], **extra}``) and ``<stem>.csv``.

    The CSV has one line per row; post-processed scores appear as ``post_<score>`` columns.

    Returns:
        the JSON and CSV paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    rows = [_defined_or_none(r) for r in rows]  # strict JSON has no NaN: undefined is null
    atomic_write_text(
        json_path, json.dumps(dict(extra, rows=rows), indent=2, default=str, allow_nan=False) + "\n"
    )
    flat = []
    for r in rows:
        line = {k: v for k, v in r.items() if not isinstance(v, dict)}
        line.update({f"post_{k}": v for k, v in r.get("postprocessed", {}).items()})
        flat.append(line)
    fields = list(dict.fromkeys(k for line in flat for k in line))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(csv_path, text.getvalue())
    return json_path, csv_path


def _defined_or_none(value: Any) -> Any:
    """``value`` with every NaN float (an undefined score) replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: _defined_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Per-category and overall means of the scores, per method, as CDnet averages: a
    category's scores are the means over its videos, the overall scores the means over the
    categories (so a category with more videos does not weigh more). ``frames`` are summed,
    ``fps`` is the mean over videos."""

    def mean(members: list[dict]) -> dict:
        return mean_scores(members, SCORE_KEYS)  # undefined scores are left out

    def mean_row(method: str, label: str, members: list[dict], videos: list[dict]) -> dict:
        row = dict(
            method=method, sequence=label, frames=sum(r["frames"] for r in videos),
            fps=sum(r["fps"] for r in videos) / len(videos), **mean(members),
        )
        if all("postprocessed" in r for r in members):
            row["postprocessed"] = mean([r["postprocessed"] for r in members])
        return row

    means = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and "error" not in r]
        if not mine:
            continue
        categories = dict.fromkeys(r["sequence"].split("/")[0] for r in mine)
        per_category = []
        for c in categories:
            videos = [r for r in mine if r["sequence"].split("/")[0] == c]
            per_category.append(mean_row(method, f"{c}/mean", videos, videos))
        means += [*per_category, mean_row(method, "overall/mean", per_category, mine)]
    return means


def _cell(scores: dict, key: str, size: int, digits: int) -> str:
    """A score for :func:`format_table`; an undefined (NaN) one reads "n/a"."""
    value = float(scores[key])
    return f"{value:{size}.{digits}f}" if math.isfinite(value) else f"{'n/a':>{size}}"


def format_table(rows: Iterable[dict], *, postprocessed: bool = False) -> str:
    """A plain-text table of Recall, Precision, F-measure, PWC and fps per row.

    Args:
        rows: rows of :func:`evaluate_dataset`.
        postprocessed: show the post-processed scores (rows without them are left out).
    """
    rows = list(rows)
    width = max([len("method")] + [len(r["method"]) for r in rows])
    lines = [f"{'method':{width}} {'sequence':26} {'Recall':>7} {'Precision':>9} {'F':>7} {'PWC':>7} {'fps':>8}"]
    for r in rows:
        scores = r
        if "error" in r:
            if not postprocessed:
                lines.append(f"{r['method']:{width}} {r['sequence'][:26]:26} failed: {r['error_type']}")
            continue
        if postprocessed:
            if "postprocessed" not in r:
                continue
            scores = r["postprocessed"]
        lines.append(
            f"{r['method']:{width}} {r['sequence'][:26]:26} {_cell(scores, 'Recall', 7, 4)} "
            f"{_cell(scores, 'Precision', 9, 4)} {_cell(scores, 'F-measure', 7, 4)} {_cell(scores, 'PWC', 7, 3)} "
            f"{float(r['fps']):8.1f}"
        )
    return "\n".join(lines)


def _opencv_subtractor(subtractor: Any) -> Callable[[Tensor], Tensor]:
    """Wrap an OpenCV BackgroundSubtractor as (1, C, H, W) uint8 -> (1, 1, H, W) bool.

    OpenCV applies its own rate schedule (``learningRate=-1``): see :func:`method_factories`.
    """

    def apply(frames: Tensor) -> Tensor:
        image = frames[0].permute(1, 2, 0).cpu().numpy()
        if image.shape[-1] == 3:
            image = image[..., ::-1].copy()  # RGB -> OpenCV's BGR
        else:
            image = image[..., 0].copy()
        mask = subtractor.apply(image, learningRate=-1)
        # 255 is foreground; MOG2's shadow value (127) is not, as CDnet scores a shadow
        return torch.from_numpy(mask == 255).to(frames.device)[None, None]

    return apply


def method_factories(
    names: Sequence[str],
    *,
    n_components: int = 3,
    learning_rate: float = 0.005,
    background_ratio: float = 0.7,
    device: str | torch.device = "auto",
    model_options: dict | None = None,
) -> dict[str, Callable[[], Callable[[Tensor], Tensor]]]:
    """Factories of fresh background subtractors, by name, with matched settings.

    - ``"torchgmm"``: :class:`BackgroundSubtractorMOG` (rate ``max(alpha, 1/t)`` with its
      default ``warmup``), plus ``model_options``.
    - ``"mog2"``: OpenCV ``createBackgroundSubtractorMOG2(history=round(1/alpha),
      detectShadows=False)`` with K mixtures and background ratio T (its rate is
      ``1/min(2t, history)``).
    - ``"mog2-defaults"``: OpenCV ``createBackgroundSubtractorMOG2(detectShadows=False)`` at
      OpenCV's own defaults (history 500, 5 mixtures, T = 0.9, varThreshold 16), ignoring the
      settings above: what a user of OpenCV gets without tuning.
    - ``"torchgmm-mog2"``: :class:`~torchgmm.mog2.BackgroundSubtractorMOG2` at OpenCV's MOG2
      defaults (history 500, 5 mixtures, T = 0.9, varThreshold 16, shadows detected and
      scored as not foreground, as CDnet scores them), ignoring the settings above except
      ``compile`` in ``model_options``: OpenCV's MOG2 with shadows, as torchgmm computes it.
    - ``"bgsegm-mog"``: OpenCV contrib ``bgsegm.createBackgroundSubtractorMOG(history=
      round(1/alpha), nmixtures=K, backgroundRatio=T)`` (rate ``1/min(t, history)``, the same
      schedule as torchgmm's warmup).

    OpenCV's other settings stay at their defaults. All methods see the same frames.

    Raises:
        ValueError: an unknown name.
        ImportError: an OpenCV method without ``opencv-contrib-python(-headless)``.
    """
    device = resolve_device(device)
    options = dict(model_options or {})
    history = max(1, round(1 / learning_rate)) if learning_rate > 0 else 1_000_000
    factories: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {}
    for name in names:
        if name == "torchgmm":
            BackgroundSubtractorMOG(n_components, learning_rate, background_ratio, **options)  # validate now

            def make_torchgmm() -> Callable[[Tensor], Tensor]:
                return BackgroundSubtractorMOG(n_components, learning_rate, background_ratio, **options).to(device)

            factories[name] = make_torchgmm
        elif name == "torchgmm-mog2":
            from torchgmm.mog2 import BackgroundSubtractorMOG2

            def make_torchgmm_mog2(compile_: bool | None = options.get("compile")) -> Callable[[Tensor], Tensor]:
                model = BackgroundSubtractorMOG2(compile=compile_).to(device)
                return lambda frames: model(frames).unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)

            factories[name] = make_torchgmm_mog2
        elif name in ("mog2", "mog2-defaults", "bgsegm-mog"):
            try:
                import cv2

                if name == "bgsegm-mog":
                    cv2.bgsegm  # noqa: B018 - contrib module present?
            except (ImportError, AttributeError) as exc:
                raise ImportError(
                    f"method {name!r} needs OpenCV with the contrib modules: "
                    "pip install opencv-contrib-python-headless"
                ) from exc
            if name == "mog2":

                def make_mog2() -> Callable[[Tensor], Tensor]:
                    sub = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=False)
                    sub.setNMixtures(n_components)
                    sub.setBackgroundRatio(background_ratio)
                    return _opencv_subtractor(sub)

                factories[name] = make_mog2
            elif name == "mog2-defaults":

                def make_mog2_defaults() -> Callable[[Tensor], Tensor]:
                    return _opencv_subtractor(cv2.createBackgroundSubtractorMOG2(detectShadows=False))

                factories[name] = make_mog2_defaults
            else:

                def make_mog() -> Callable[[Tensor], Tensor]:
                    return _opencv_subtractor(cv2.bgsegm.createBackgroundSubtractorMOG(
                        history=history, nmixtures=n_components, backgroundRatio=background_ratio))

                factories[name] = make_mog
        else:
            raise ValueError(
                f"unknown method {name!r}; choose from torchgmm, torchgmm-mog2, mog2, mog2-defaults, bgsegm-mog."
            )
    return factories

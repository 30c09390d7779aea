"""``torchgmm background`` as a job: plan every input, lock its outputs, run batches of streams.

The library function behind ``torchgmm background`` is :func:`run_background`; the command
line only parses arguments and calls it. It reads as four named steps:

1. **plan** (:func:`_plan_inputs`): every setting checked, every input opened (so a missing or
   unreadable file, a bad selection or a checkpoint that does not fit fails before any work),
   outputs named;
2. **lock** (:func:`_locked_outputs`): every output folder made and locked;
3. **run** (:class:`_Batch`): inputs of one processed size go through the model together as
   one batch of streams; decoding runs on the reader's thread, the model on this one, and the
   mask and overlay encoding on writer threads (:class:`~torchgmm.io.video.WriterThread`);
4. **finish** (:meth:`_Batch.finish`): each stream's files closed, then its background image,
   checkpoint and ``summary.json`` written, also when it failed or was interrupted.

An input that fails part-way keeps what was done (its masks up to the damage are written and
playable, its ``summary.json`` names the error) while the other inputs carry on. The model's
state layout is its own: the job asks it for one stream's state
(:meth:`~torchgmm.background.BackgroundSubtractorMOG.stream_state`) and to drop ended streams
(:meth:`~torchgmm.background.BackgroundSubtractorMOG.keep_streams`).

Shape vocabulary: B streams, T frames, C channels, H height, W width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import numbers
import os
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from torchgmm._checks import add_note, resolve_device
from torchgmm.defaults import BACKGROUND_MODELS, PRESETS, VIDEO_BACKENDS
from torchgmm.exceptions import VideoDecodeError
from torchgmm.io.images import (
    atomic_write_text,
    lock_output_folder,
    make_output_folder,
    remove_stale_temporaries,
    write_png,
)
from torchgmm.io.video import VideoReader, WriterThread, video_backends
from torchgmm.jobs.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from torchgmm.jobs._threads import step_threads
from torchgmm.jobs.ray_engine import Engine, check_engine
from torchgmm.jobs.outputs import check_png_frames, open_writer, overlay_frames, previous_path, rebuild_overlay
from torchgmm.postprocess import apply_postprocess, postprocess_settings

__all__ = ["MaskFormat", "FrameSelection", "MaskOutputs", "run_background", "make_background_model"]

MaskFormat = Literal["mp4", "mkv", "png"]
BackgroundModel = Literal["mog", "mog2"]


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Which frames of each input the model sees (what :class:`~torchgmm.io.video.VideoReader`
    selects), and as what.

    Attributes:
        start: first source frame: an index (int) or a time in seconds (float: the first frame
            at or after it, at the input's average frame rate). None: 0.
        end: stop before this source frame (index or seconds, exclusive), after ``start``.
            None: the end of the input; an ``end`` beyond it is the end.
        step: every ``step``-th frame from ``start`` (>= 1).
        size: ``(H, W)``: every frame resized to exactly this size before the model (the
            aspect ratio is not kept; bilinear, antialiased when shrinking). None keeps each
            input's size.
        gray: model grey frames (C = 1) instead of RGB (C = 3).
        decoder: what decodes video files: ``"pyav"`` or ``"torchcodec"`` (the optional extra;
            see :func:`~torchgmm.io.video.video_backends`). Image folders are read alike.

    Example:
        >>> FrameSelection(start=10, end=1.2, step=2, size=(24, 32))
        FrameSelection(start=10, end=1.2, step=2, size=(24, 32), gray=False, decoder='pyav')
    """

    start: int | float | None = None
    end: int | float | None = None
    step: int = 1
    size: tuple[int, int] | None = None
    gray: bool = False
    decoder: str = "pyav"


@dataclasses.dataclass(frozen=True)
class MaskOutputs:
    """What a background run writes per input, besides ``background.png`` and ``summary.json``.

    Attributes:
        format: ``"mp4"`` (lossless H.264, one grey plane), ``"mkv"`` (FFV1) or ``"png"``
            (a numbered sequence ``mask/000000.png``, ...).
        overlay: also write the frames with the foreground tinted red (H.264 CRF 18, or PNGs).
        postprocess: keyword arguments of :func:`~torchgmm.postprocess.apply_postprocess`
            (e.g. ``{"median": 5, "min_area": 50}``): the masks and the overlay are cleaned
            before writing; the model learns from the frames as without it. None: off.

    Example:
        >>> MaskOutputs(format="png", postprocess={"median": 5})
        MaskOutputs(format='png', overlay=False, postprocess={'median': 5})
    """

    format: MaskFormat = "mp4"
    overlay: bool = False
    postprocess: dict | None = None


def make_background_model(model: BackgroundModel, settings: dict) -> nn.Module:
    """A fresh background model by name: ``"mog"`` (Stauffer-Grimson,
    :class:`~torchgmm.background.BackgroundSubtractorMOG`) or ``"mog2"`` (Zivkovic, OpenCV's
    MOG2, :class:`~torchgmm.mog2.BackgroundSubtractorMOG2`), with keyword arguments ``settings``.

    Raises:
        ValueError: an unknown model, or a bad setting (the model's own message).
        TypeError: a setting the model does not take.

    Example:
        >>> make_background_model("mog2", dict(n_mixtures=3, compile=False)).n_mixtures
        3
    """
    if model == "mog":
        from torchgmm.background import BackgroundSubtractorMOG

        return BackgroundSubtractorMOG(**settings)
    if model == "mog2":
        from torchgmm.mog2 import BackgroundSubtractorMOG2

        return BackgroundSubtractorMOG2(**settings)
    raise ValueError(f"`model` must be one of {BACKGROUND_MODELS}, got {model!r}.")


@dataclasses.dataclass(frozen=True)
class _Options:
    """Every setting of a run, checked, as the batches use them (:meth:`create`)."""

    model: BackgroundModel
    settings: dict  #: the model's keyword arguments (recorded in summaries and checkpoints)
    frames: FrameSelection
    outputs: MaskOutputs  #: with ``postprocess`` normalised (only the steps that change a mask)
    checkpoint_every: int
    resume: bool
    device: torch.device
    batch_streams: int
    on_damage: str
    progress: bool
    raise_errors: bool
    engine: Engine = "local"
    ray_address: str | None = None

    @classmethod
    def create(
        cls,
        *,
        model: str = "mog",
        model_options: dict | None = None,
        frames: FrameSelection | None = None,
        outputs: MaskOutputs | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        device: str | torch.device = "auto",
        batch_streams: int = 1,
        on_damage: str = "stop",
        progress: bool = True,
        raise_errors: bool = True,
        engine: Engine = "local",
        ray_address: str | None = None,
    ) -> _Options:
        """Check every setting (named errors, before any input is opened)."""
        frames = FrameSelection() if frames is None else frames
        outputs = MaskOutputs() if outputs is None else outputs
        if not isinstance(frames, FrameSelection):
            raise TypeError(f"`frames` must be a FrameSelection, got {type(frames).__name__}.")
        if not isinstance(outputs, MaskOutputs):
            raise TypeError(f"`outputs` must be a MaskOutputs, got {type(outputs).__name__}.")
        if outputs.format not in ("mp4", "mkv", "png"):
            raise ValueError(f"`mask_format` must be 'mp4', 'mkv' or 'png', got {outputs.format!r}.")
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
        if model not in BACKGROUND_MODELS:
            raise ValueError(f"`model` must be one of {BACKGROUND_MODELS}, got {model!r}.")
        _check_decoder(frames.decoder, on_damage)
        # "mog": the default preset's three settings are always recorded (checkpoints compare them)
        settings = {**(PRESETS["default"] if model == "mog" else {}), **(model_options or {})}
        make_background_model(model, settings)  # validate the settings before any work
        frames = dataclasses.replace(frames, start=_json_position(frames.start), end=_json_position(frames.end))
        outputs = dataclasses.replace(outputs, postprocess=postprocess_settings(outputs.postprocess))
        check_engine(engine, ray_address)
        # on a Ray cluster the device is resolved against the cluster's GPUs, once connected
        if engine == "local" or str(device) != "auto":
            device = resolve_device(device, cuda_available=True if engine == "ray" else None)
        return cls(
            model,
            settings,
            frames,
            outputs,
            checkpoint_every,
            resume,
            device,
            batch_streams,
            on_damage,
            progress,
            raise_errors,
            engine,
            ray_address,
        )

    @property
    def shadows(self) -> bool:
        """The model labels shadows: masks are written with three values (0, shadow, 255)."""
        default = self.model == "mog2"  # MOG2 detects shadows unless told not to, as OpenCV's
        return bool(self.settings.get("detect_shadows", default))

    def make_model(self, **overrides: Any) -> nn.Module:
        return make_background_model(self.model, {**self.settings, **overrides})


def _check_decoder(decoder: str, on_damage: str) -> None:
    """``decoder`` is a backend that imports here and can do what ``on_damage`` asks."""
    if decoder not in VIDEO_BACKENDS:
        raise ValueError(f"`decoder` must be one of {VIDEO_BACKENDS}, got {decoder!r}.")
    if not video_backends([decoder]):
        raise ValueError(
            f'decoder {decoder!r} cannot be imported here: pip install "torchmog[torchcodec]" (it needs the '
            "system's FFmpeg libraries), or use the default decoder 'pyav'."
        )
    if decoder == "torchcodec" and on_damage == "skip":
        raise ValueError("on_damage='skip' needs decoder 'pyav': TorchCodec cannot decode past a damaged frame.")


@dataclasses.dataclass
class InputPlan:
    """One input of :func:`run_background` and everything known about it before work starts
    (its frames, its output folder, the checkpoint it resumes from).

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
    decoder: str = "pyav"  #: what decodes the video (:attr:`FrameSelection.decoder`)

    def selection(self) -> dict:
        """The frame selection as source indices (what a checkpoint records and a resume must repeat)."""
        return dict(start=self.first, end=self.end, step=self.step, size=None if self.size is None else list(self.size))

    def reader(self, gray: bool, *, skip: int = 0, count: int | None = None, **options: Any) -> VideoReader:
        """A reader of the processed frames from the ``skip``-th on (``count`` of them, or to the end)."""
        first = self.first + skip * self.step
        end = self.end if count is None else first + count * self.step
        return VideoReader(
            self.path, start=first, end=end, step=self.step, size=self.size, gray=gray, backend=self.decoder, **options
        )


@dataclasses.dataclass
class _Stream:
    """An input while it runs: its reader, writers and progress."""

    plan: InputPlan
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


def _last_source_frame(job: InputPlan, done: int, skipped: list[tuple[int, int, str]]) -> int:
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


def _position_text(value: int | float | None, index: int | None) -> str:
    """``start``/``end`` as given and as a frame index, for messages: ``12.5 s = frame 312``."""
    given = f"{value:g} s" if isinstance(value, float) else f"frame {value}"
    return given if index is None or isinstance(value, int) else f"{given} = frame {index}"


def _check_selection(job: InputPlan, start: int | float | None, end: int | float | None) -> None:
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


def _nothing_selected(job: InputPlan) -> ValueError:
    """The error of an input that ended before its first selected frame."""
    return ValueError(f"{str(job.path)!r} ended before frame {job.first} (`start`): no frame was processed.")


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
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: BackgroundModel = "mog",
    model_options: dict | None = None,
    frames: FrameSelection | None = None,
    outputs: MaskOutputs | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    device: str | torch.device = "auto",
    batch_streams: int = 1,
    on_damage: Literal["stop", "skip"] = "stop",
    progress: bool = True,
    raise_errors: bool = True,
    engine: Engine = "local",
    ray_address: str | None = None,
) -> list[dict]:
    """Run a background model over videos or image-sequence folders and write the results.

    The model sees the *processed* frames of each input: the source frames ``frames.start``,
    ``start + step``, ... before ``end`` (as :class:`~torchgmm.io.video.VideoReader` selects
    them; frames before ``start`` are decoded and skipped), resized to ``size`` when given.
    Every output is of the processed frames. Per input, in ``out_dir/<name>/`` (``<name>``: the
    file's stem or the folder's name; a CDnet ``sequence/input`` folder is named after the
    sequence):

    - ``mask.mp4`` / ``mask.mkv`` (lossless: H.264 grey qp 0 / FFV1) or ``mask/000000.png`` ...:
      the masks, one per processed frame, at the source frame rate divided by ``step`` (so
      that they last as long as the part of the video they cover): 255 = foreground, 0 =
      background and, when the model detects shadows, its ``shadow_value`` (127) = shadow;
    - ``background.png``: the background image at the end, at the processed size;
    - ``overlay.mp4`` / ``overlay.mkv`` (H.264 CRF 18) or ``overlay/``, with
      ``outputs.overlay``: the processed frames with the foreground tinted red;
    - ``summary.json``: frames (processed), frames/s achieved, the model and its settings,
      ``complete`` and ``error``; ``width``/``height`` (processed) and
      ``source_width``/``source_height``, ``source_fps`` and ``output_fps`` (the masks'),
      ``start``/``end`` as given (int: frame index, float: seconds), ``step``, ``size`` as
      given (``[H, W]``), and ``source_frames``: ``{"first", "last"}``, the source indices of
      the first and last processed frames; ``input``, ``output``, ``mask``, ``overlay`` and
      ``background`` as absolute paths (so the file means the same read from any folder);
    - ``checkpoint.pt``, with ``checkpoint_every``: the model state every N frames (saved one
      frame behind, with the videos written ``durable``, so that even after a hard kill the
      outputs hold every frame the checkpoint has seen) and when the run ends or is
      interrupted (:mod:`torchgmm.jobs.checkpoint`). A resume must select the same frames at
      the same size, with the same model and settings.

    Inputs of the same processed size (and, when resuming, the same checkpoint frame) are
    processed together, ``batch_streams`` at a time, as one batch of streams on one device;
    the masks equal those of separate runs. With ``size``, inputs of different source sizes
    are batched together (each is resized first). Seconds are converted with each input's
    own frame rate. A stream that ends (or fails) leaves the batch and the others go on.

    Args:
        inputs: video files or folders of numbered images.
        out_dir: output folder (created).
        model: ``"mog"`` (Stauffer-Grimson, :class:`~torchgmm.background.BackgroundSubtractorMOG`,
            default) or ``"mog2"`` (Zivkovic's adaptive mixture as OpenCV computes it,
            :class:`~torchgmm.mog2.BackgroundSubtractorMOG2`).
        model_options: keyword arguments of the model (e.g. ``dict(n_components=5,
            compile=False)``, ``dict(detect_shadows=False)`` for ``"mog2"``). ``"mog"`` starts
            from the ``"default"`` preset (:data:`torchgmm.defaults.PRESETS`).
        frames: which frames the model sees (:class:`FrameSelection`); default every frame,
            RGB, at the input's size.
        outputs: what is written (:class:`MaskOutputs`); default lossless ``mask.mp4``.
        checkpoint_every: save the model state every this many frames (0 = never).
        resume: continue each input from its ``checkpoint.pt`` (inputs without one start from
            the beginning); the masks then equal those of an uninterrupted run. The settings
            must be those of the interrupted run.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        batch_streams: how many same-size inputs share one batch.
        on_damage: ``"stop"``: an input with a frame that cannot be decoded ends there (its
            masks up to the damage are written, its summary names the frame, the other
            inputs go on). ``"skip"``: go on past damaged frames (see
            :class:`~torchgmm.io.video.VideoReader`); ``summary.json``'s ``skipped_frames``
            lists the skipped source ranges ``[first, last]``, and the masks are of the frames
            decoded. Not with ``checkpoint_every``/``resume``, which count processed frames.
        progress: show a progress bar (frames/s) per batch of streams on stderr.
        raise_errors: when an input fails part-way, raise its error once every other input
            is done; False returns instead, with the error in that input's summary.
        engine: ``"local"`` (this process, default) or ``"ray"``: each batch of streams runs
            as one Ray task on a Ray cluster (with a GPU of its own with ``device="cuda"``,
            which is then resolved against the cluster's GPUs), writing the same outputs;
            planning, locks, summaries, errors and progress are as with ``"local"``
            (:mod:`torchgmm.jobs.ray_engine`; ``pip install "torchmog[ray]"``).
        ray_address: the Ray cluster to run on (``engine="ray"``); None: ``RAY_ADDRESS``, else
            a local cluster started for the call.

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
        >>> from torchgmm.io import VideoReader, VideoWriter
        >>> clip, _, _ = synthetic_clip(40, 48, 64)  # (T, C, H, W) uint8: a square moving over a texture
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with VideoWriter(f"{d}/cam.mkv", fps=25) as writer:
        ...         writer.write(clip)
        ...     # source frames 10, 12, ..., 28 (1.2 s is frame 30), resized to (H, W) = (24, 32)
        ...     (s,) = run_background([f"{d}/cam.mkv"], f"{d}/out",
        ...                           frames=FrameSelection(start=10, end=1.2, step=2, size=(24, 32)),
        ...                           model_options=dict(compile=False), device="cpu", progress=False)
        ...     with VideoReader(s["mask"], gray=True, batch_size=100) as reader:
        ...         (masks,) = list(reader)  # (T, 1, H, W) uint8, 255 = foreground
        >>> s["frames"], s["source_frames"], s["output_fps"], tuple(masks.shape)
        (10, {'first': 10, 'last': 28}, 12.5, (10, 1, 24, 32))

        Several cameras as one batch: ``run_background(["cam1.mp4", "cam2.mp4"], "out",
        batch_streams=2)``; OpenCV's MOG2 with shadows: ``run_background(["cam.mp4"], "out",
        model="mog2")``.
    """
    options = _Options.create(
        model=model,
        model_options=model_options,
        frames=frames,
        outputs=outputs,
        checkpoint_every=checkpoint_every,
        resume=resume,
        device=device,
        batch_streams=batch_streams,
        on_damage=on_damage,
        progress=progress,
        raise_errors=raise_errors,
        engine=engine,
        ray_address=ray_address,
    )
    return _run_background(inputs, out_dir, options)


def _run_background(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    options: _Options,
    *,
    stop_after: int | None = None,
) -> list[dict]:
    """:func:`run_background`'s steps. ``stop_after`` (for tests of interrupted runs): stop each
    batch once this many processed frames of its inputs are done (counted from the first
    selected frame, as checkpoints are); the summaries say ``complete: false``."""
    plans = _plan_inputs(inputs, Path(out_dir), options)
    with _locked_outputs(plans):
        return _run_plans(plans, options, stop_after)


def _plan_inputs(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike, out_dir: Path, options: _Options
) -> list[InputPlan]:
    """Open (and so validate) every input, name its output folder and read its checkpoint,
    before any work."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no inputs given: name video files or image-sequence folders.")
    frames, fmt = options.frames, options.outputs.format
    plans: list[InputPlan] = []
    used: set[str] = set()
    for path in inputs:
        path = Path(path)
        # the reader checks start/end/step/size and turns seconds into frame indices
        with VideoReader(
            path,
            gray=frames.gray,
            prefetch=0,
            start=frames.start,
            end=frames.end,
            step=frames.step,
            size=frames.size,
            backend=frames.decoder,
        ) as reader:
            plan = InputPlan(
                path,
                out_dir,
                reader.height,
                reader.width,
                *reader.source_size,
                reader.frame_count,
                reader.fps,
                first=reader.start_index,
                end=reader.end_index,
                step=reader.step,
                size=reader.size,
                selected=len(reader.indices),
                count_exact=reader.frame_count_exact,
                input_bytes=path.stat().st_size if path.is_file() else None,
                decoder=frames.decoder,
            )
        _check_selection(plan, frames.start, frames.end)
        name, i = _output_name(path), 1
        while name in used:
            i += 1
            name = f"{_output_name(path)}-{i}"
        used.add(name)
        plan.out = out_dir / name
        if plan.out.exists() and not plan.out.is_dir():
            raise NotADirectoryError(f"cannot write the outputs of {str(path)!r}: {str(plan.out)!r} is a file.")
        checkpoint = plan.out / CHECKPOINT_NAME
        if options.resume and checkpoint.exists():
            plan.resumed, plan.state = read_checkpoint(
                checkpoint,
                options.settings,
                plan,
                frames.gray,
                options.outputs.postprocess,
                model=options.model,
                make_model=functools.partial(options.make_model, compile=False),
            )
            for kind, wanted in (("mask", True), ("overlay", options.outputs.overlay)):
                previous = plan.out / (kind + ("" if fmt == "png" else f".{fmt}"))
                if wanted and plan.resumed and not (previous.exists() or previous_path(previous).exists()):
                    hint = "another mask format" + (" or without the overlay" if kind == "overlay" else "")
                    raise FileNotFoundError(
                        f"cannot resume {str(path)!r}: {str(previous)!r} of the interrupted run is missing "
                        f"(was it run with {hint}?). Run without resuming to start over."
                    )
                if wanted and plan.resumed and fmt == "png":
                    check_png_frames(previous, plan.resumed, path)
        plans.append(plan)
    return plans


@contextlib.contextmanager
def _locked_outputs(plans: list[InputPlan]) -> Iterator[None]:
    """Every output folder made and locked (one run per folder at a time) for the whole run.

    Made now: a file in the way or a missing permission fails here, before any work, not
    part-way with other inputs' results half written."""
    with ExitStack() as locks:
        for plan in plans:
            make_output_folder(plan.out)
            locks.enter_context(lock_output_folder(plan.out, "torchgmm background"))
            remove_stale_temporaries(plan.out)  # left by a run killed outright
        yield


def _run_plans(plans: list[InputPlan], options: _Options, stop_after: int | None) -> list[dict]:
    """Run the planned inputs, ``batch_streams`` same-size inputs at a time; the summaries."""
    # batched by the size the model sees: with `size` every input, whatever its own size
    groups: dict[tuple, list[InputPlan]] = {}
    for plan in plans:
        groups.setdefault((plan.height, plan.width, plan.resumed), []).append(plan)
    size = options.batch_streams
    batches = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]

    summaries: dict[Path, dict] = {}
    errors: list[BaseException] = []
    if options.engine == "ray":
        results = _run_batches_on_ray(batches, options, stop_after)
    else:
        results = (result for batch in batches for result in _Batch(batch, options).run(stop_after))
    for plan, summary, error in results:
        summaries[plan.out] = summary
        if error is not None:
            errors.append(error)
    if errors and options.raise_errors:
        for other in errors[1:]:
            add_note(errors[0], f"another input failed as well: {other}")
        raise errors[0]
    return [summaries[plan.out] for plan in plans]


def _run_batches_on_ray(
    batches: list[list[InputPlan]], options: _Options, stop_after: int | None
) -> list[tuple[InputPlan, dict, BaseException | None]]:
    """Each batch as one task on a Ray cluster (:func:`torchgmm.jobs.ray_engine.run_batches`),
    with one progress bar of the frames done over all of them."""
    from tqdm import tqdm

    from torchgmm.jobs import ray_engine

    # a batch steps all its streams at once: its length is its longest input's
    lengths = [max(plan.selected for plan in batch) - batch[0].resumed for batch in batches]
    with ray_engine.ray_session(options.ray_address) as ray:
        options = dataclasses.replace(options, device=ray_engine.cluster_device(ray, options.device))
        bar = tqdm(
            total=sum(lengths) if all(plan.selected for batch in batches for plan in batch) else None,
            unit="frame",
            dynamic_ncols=True,
            desc=f"{sum(map(len, batches))} input(s) in {len(batches)} Ray task(s)",
            disable=not options.progress,
            file=sys.stderr,
        )
        try:
            return ray_engine.run_batches(ray, batches, options, stop_after, lambda n: bar.update(n - bar.n))
        finally:
            bar.close()


class _Batch:
    """Same-size inputs run as one batch of streams through one model (:meth:`run`);
    ``on_frame(1)`` is called after each frame (the Ray engine's progress)."""

    def __init__(
        self, plans: list[InputPlan], options: _Options, on_frame: Callable[[int], None] | None = None
    ) -> None:
        self.plans, self.options, self.on_frame = plans, options, on_frame
        self.resumed = plans[0].resumed  # every plan of a batch resumes from the same frame
        self.model = options.make_model().to(options.device)
        if self.resumed:
            self.model.load_stream_states([plan.state for plan in plans])
        self.results: list[tuple[InputPlan, dict, BaseException | None]] = []
        self.active: list[_Stream] = []
        self.frames_done = self.resumed  # frames fully processed and written for every active stream
        self.t0 = time.perf_counter()

    def run(self, stop_after: int | None = None) -> list[tuple[InputPlan, dict, BaseException | None]]:
        """Decode, model and write until every stream has ended; ``(plan, summary, error)`` per input."""
        from tqdm import tqdm

        lengths = [plan.selected for plan in self.plans]
        self.bar = tqdm(
            total=max(lengths) if all(lengths) else None,
            initial=self.resumed,
            unit="frame",
            dynamic_ncols=True,
            desc=", ".join(plan.path.name for plan in self.plans)[:60],
            disable=not self.options.progress,
            file=sys.stderr,
        )
        interrupt: BaseException | None = None
        plan = self.plans[0]
        try:
            with ExitStack() as stack:
                stack.enter_context(step_threads(self.options.device, len(self.plans) * plan.height * plan.width))
                if not self.resumed:  # a resumed model holds its state: a second would double the memory
                    self._compile_step()
                for plan in self.plans:
                    self.active.append(self._open(plan, stack))
                while self.active and (stop_after is None or self.frames_done < stop_after):
                    frames = self._next_frames()
                    if frames:
                        self._step(frames)
        except BaseException as exc:  # outputs are closed by now; summarise, then re-raise
            interrupt = exc
            raise
        finally:
            self.bar.close()
            for position, stream in enumerate(self.active):
                if stream.finished:
                    continue
                try:
                    self.finish(stream, position, interrupt, complete=False)
                except Exception as exc:  # noqa: BLE001 - keep the original error
                    if interrupt is None:
                        raise
                    add_note(interrupt, f"while finishing {str(stream.plan.path)!r}: {type(exc).__name__}: {exc}")
        return self.results

    def _compile_step(self) -> None:
        """Compile the model's step before any reader starts: on a throwaway model fed one
        blank batch of this batch's shape and layout (the compiled step is shared by every
        model of one configuration, so the masks are those of an uninterrupted run).

        The compile is Python work holding the GIL; beside the decoder threads' per-frame
        Python it took about twice as long (vtest.avi, 2 cores: 14 s against 7.9 s alone).
        Only for a batch that starts afresh, whose own model holds no state yet: the
        throwaway's state is freed before the first frame, so memory peaks as before.
        """
        plan, device = self.plans[0], self.options.device
        channels = 1 if self.options.frames.gray else 3
        blank = [torch.zeros(channels, plan.height, plan.width, dtype=torch.uint8, device=device)] * len(self.plans)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed compile: the real model warns, once
            self.options.make_model().to(device)(_stack_frames(blank, device))

    def _open(self, plan: InputPlan, stack: ExitStack) -> _Stream:
        """One input's writers (continuing an interrupted run's files) and reader."""
        options, resumed = self.options, self.resumed
        fmt, gray = options.outputs.format, options.frames.gray
        suffix = "" if fmt == "png" else f".{fmt}"
        plan.out.mkdir(parents=True, exist_ok=True)
        if not resumed:
            (plan.out / CHECKPOINT_NAME).unlink(missing_ok=True)  # stale, from an earlier run
        # durable when a checkpoint may be resumed from: see open_writer and _save_trailing_checkpoints
        durable = bool(options.checkpoint_every) or resumed > 0
        fps = plan.fps / plan.step  # one mask per processed frame, over the same time
        mask, previous = open_writer(
            plan.out / f"mask{suffix}", fps, resumed, fmt, lossless=True, channel=True, durable=durable
        )
        # encoded on a thread while the next frame is modelled; a durable run writes in step, so
        # that a hard kill loses at most the last frame (see VideoWriter)
        mask = stack.enter_context(WriterThread(mask, maxsize=0 if durable else 8))
        leftovers = [previous]
        over = None
        if options.outputs.overlay:
            # video masks of an interrupted run: the lossy overlay is rebuilt from them
            rebuild = functools.partial(rebuild_overlay, plan, resumed, gray, previous) if previous else None
            over, previous = open_writer(
                plan.out / f"overlay{suffix}",
                fps,
                resumed,
                fmt,
                lossless=False,
                channel=False,
                durable=durable,
                source=rebuild,
            )
            over = stack.enter_context(WriterThread(over, maxsize=0 if durable else 8))
            leftovers.append(previous)
        reader = stack.enter_context(
            plan.reader(gray, skip=resumed, device=options.device, on_damage=options.on_damage)
        )
        return _Stream(
            plan, reader, iter(reader), mask, over, resumed, previous=[p for p in leftovers if p is not None]
        )

    def _next_frames(self) -> list[Tensor]:
        """The next frame of every active stream; streams that ended (or failed) are finished
        and leave the batch (an empty list once none is left)."""
        frames, ended = [], []
        for position, stream in enumerate(self.active):
            try:
                frames.append(next(stream.frames))
            except StopIteration:
                # (an input whose frame count is only estimated may end before `start`)
                ended.append((position, stream, _nothing_selected(stream.plan) if not stream.done else None))
            except VideoDecodeError as exc:  # frames before the damage are done
                ended.append((position, stream, exc))
        if ended:
            if len(ended) == len(self.active):
                self.bar.close()
            for position, stream, error in ended:
                self.finish(stream, position, error, complete=error is None)
            keep = [i for i, s in enumerate(self.active) if not s.finished]
            self.active = [self.active[i] for i in keep]
            self.model.keep_streams(keep)
        return frames if self.active else []

    def _step(self, frames: list[Tensor]) -> None:
        """Model one frame of every active stream and hand its outputs to the writers."""
        options, model = self.options, self.model
        batch = _stack_frames(frames, options.device)
        # A checkpoint trails the written frames by one: the (durable) writers hand a frame to
        # the file only when the next one arrives, so after a hard kill the outputs hold every
        # frame but the last written, and the checkpoint must not be ahead of them. The state
        # before this frame's update is copied now and saved once this frame is written.
        every = options.checkpoint_every
        due = every and (self.frames_done + 1) % every == 0 and model.is_initialized
        before = [model.stream_state(i) for i in range(len(self.active))] if due else None
        masks, written = self._masks(batch)
        tinted = overlay_frames(batch, masks) if options.outputs.overlay else None
        for i, stream in enumerate(self.active):
            stream.mask.write(written[i])
            if tinted is not None:
                stream.overlay.write(tinted[i])
            stream.done += 1
            if stream.previous:  # a durable writer has now passed on the last copied frame
                stream.drain()
                stream.drop_previous()
        self.frames_done += 1
        self.bar.update(1)
        if self.on_frame is not None:
            self.on_frame(1)
        if before is not None:
            _save_trailing_checkpoints(self.active, before, self.frames_done - 1, options)

    def _masks(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """The model's update: ``(foreground, written)``, ``(B, 1, H, W)`` bool foreground
        (post-processed) and what the mask files get: the same, or with shadows uint8 0 /
        ``shadow_value`` / 255 (a shadow that post-processing turned foreground is foreground)."""
        postprocess = self.options.outputs.postprocess
        if not self.options.shadows:
            masks = self.model(batch)
            masks = masks if masks.ndim == 4 else masks.unsqueeze(1)  # MOG2: (B, H, W)
            masks = apply_postprocess(masks, **postprocess) if postprocess else masks
            return masks, masks
        masks, shadow = self.model(batch, return_shadows=True)
        if masks.ndim == 3:
            masks, shadow = masks.unsqueeze(1), shadow.unsqueeze(1)
        masks = apply_postprocess(masks, **postprocess) if postprocess else masks
        shadow_value = torch.tensor(int(self.model.shadow_value), dtype=torch.uint8, device=masks.device)
        written = torch.where(
            masks,
            torch.tensor(255, dtype=torch.uint8, device=masks.device),
            torch.where(shadow, shadow_value, torch.zeros_like(shadow_value)),
        )
        return masks, written

    def finish(self, stream: _Stream, position: int, error: BaseException | None, complete: bool) -> None:
        """Close one stream's files, then write its background, checkpoint and summary.

        The stream counts as finished only at the end: a Ctrl-C in here (writing the
        background can take a while) leaves it to :meth:`run`'s ``finally``, which finishes it
        again as interrupted, so its summary and checkpoint are still written. Every step is
        idempotent (closed files stay closed; the files are replaced atomically).
        """
        plan, model, options = stream.plan, self.model, self.options
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
        consistent = model.is_initialized and int(model.frames_seen) == stream.done
        if model.is_initialized:
            write_png(plan.out / "background.png", model.background_image()[position].cpu())
        if options.checkpoint_every and consistent and stream.done > self.resumed and close_error is None:
            save_checkpoint(
                plan.out / CHECKPOINT_NAME,
                model.stream_state(position),
                stream.done,
                options.settings,
                plan,
                options.frames.gray,
                options.outputs.postprocess,
                model=options.model,
            )
        summary = self._summary(stream, error, complete)
        atomic_write_text(plan.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.results.append((plan, summary, None if isinstance(error, KeyboardInterrupt) else error))
        stream.finished = True

    def _summary(self, stream: _Stream, error: BaseException | None, complete: bool) -> dict:
        """What ``summary.json`` says of one input (see :func:`run_background`)."""
        plan, options, resumed = stream.plan, self.options, self.resumed
        elapsed = time.perf_counter() - self.t0
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else (None if error is None else str(error))
        frames = options.frames
        return dict(
            input=str(plan.path.absolute()),
            output=str(plan.out.absolute()),
            frames=stream.done,
            resumed_from=resumed,
            complete=complete and error is None,
            error=message,
            error_type=None if error is None else type(error).__name__,
            error_frame=getattr(error, "frame_index", None),
            # None when nothing was left to do (a resumed run that was already complete)
            fps=round((stream.done - resumed) / elapsed, 2) if elapsed > 0 and stream.done > resumed else None,
            seconds=round(elapsed, 3),
            width=plan.width,
            height=plan.height,
            source_width=plan.source_width,
            source_height=plan.source_height,
            source_fps=plan.fps,
            output_fps=plan.fps / plan.step,
            start=frames.start,
            end=frames.end,
            step=plan.step,
            size=None if plan.size is None else list(plan.size),
            # the source frames the masks are of: first, first + step, ..., last (less the skipped)
            source_frames=dict(
                first=plan.first,
                last=_last_source_frame(plan, stream.done, stream.reader.skipped),
            )
            if stream.done
            else None,
            rotation=stream.reader.rotation,
            on_damage=options.on_damage,
            decoder=frames.decoder,
            skipped_frames=[[first, last] for first, last, _ in stream.reader.skipped],
            device=str(options.device),
            batch_streams=len(self.plans),
            gray=frames.gray,
            model=options.model,
            settings=json.loads(json.dumps(options.settings, sort_keys=True, default=str)),
            shadows=options.shadows,
            postprocess=options.outputs.postprocess or None,
            mask=str(stream.mask.path.absolute()),
            overlay=None if stream.overlay is None else str(stream.overlay.path.absolute()),
            background=str((plan.out / "background.png").absolute()) if self.model.is_initialized else None,
        )


def _stack_frames(frames: list[Tensor], device: torch.device) -> Tensor:
    """One ``(C, H, W)`` frame per stream -> the ``(B, C, H, W)`` batch the model gets: on the
    CPU stacked channel-major, the layout the compiled update reads fastest there (see
    ``component_major``), so that ``forward`` need not copy it."""
    return torch.stack(frames, 1).movedim(1, 0) if device.type == "cpu" else torch.stack(frames)


def _save_trailing_checkpoints(
    active: list[_Stream], states: list[dict[str, Tensor]], frames: int, options: _Options
) -> None:
    """Save each stream's state of ``frames`` frames, once its writers hold those frames
    (not only queued: a hard kill must not leave a checkpoint ahead of the outputs)."""
    for stream in active:
        stream.drain()
    for stream, state in zip(active, states):
        save_checkpoint(
            stream.plan.out / CHECKPOINT_NAME,
            state,
            frames,
            options.settings,
            stream.plan,
            options.frames.gray,
            options.outputs.postprocess,
            model=options.model,
        )

"""The checkpoint of a background run: one stream's model state and what it was made from.

``OUT/NAME/checkpoint.pt`` (``torch.save`` of a dict, read with ``weights_only=True``) holds
the state of one stream after ``frames_done`` processed frames, the model settings that
shape the state (not ``compile``), ``gray``, the post-processing, the frame selection as
source indices and the processed and source sizes, the input's frame count (when exact) and
byte size. A resume is refused, with a message naming what differs, unless all of these match
the run that resumes: the masks then continue exactly.

Example:
    >>> import tempfile
    >>> from torchgmm import BackgroundSubtractorMOG
    >>> from torchgmm.jobs.background import InputPlan
    >>> model = BackgroundSubtractorMOG(n_components=2, compile=False)
    >>> _ = model(torch.zeros(1, 1, 4, 6, dtype=torch.uint8))
    >>> plan = InputPlan(Path("clip.avi"), Path("out"), 4, 6, 4, 6, frame_count=10, fps=25.0, selected=10)
    >>> settings = dict(n_components=2)
    >>> path = Path(tempfile.mkdtemp()) / CHECKPOINT_NAME
    >>> save_checkpoint(path, model.stream_state(0), 1, settings, plan, True, {}, model="mog")
    >>> make = lambda: BackgroundSubtractorMOG(n_components=2, compile=False)
    >>> done, state = read_checkpoint(path, settings, plan, True, {}, model="mog", make_model=make)
    >>> done, state["mean"].shape
    (1, torch.Size([1, 2, 1, 4, 6]))
    >>> read_checkpoint(path, settings, plan, False, {}, model="mog", make_model=make)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: checkpoint ... (gray=True); this run has {"n_components": 2} (gray=False). Resume with ...
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from torchgmm.io.images import atomic_write_bytes

if TYPE_CHECKING:
    from torchgmm.jobs.background import InputPlan

__all__ = ["CHECKPOINT_NAME", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
#: 2: records the frame selection and the source size (format 1: the whole input, unresized)
_CHECKPOINT_FORMAT = 2


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


def _canonical_selection(selection: dict, job: InputPlan) -> dict:
    """``selection`` with ``end`` and ``size`` None where they select the whole input or its
    own size: the same frames spelled otherwise compare equal."""
    end, size = selection.get("end"), selection.get("size")
    if end is not None and job.count_exact and job.frame_count and end >= job.frame_count:
        end = None
    if size is not None and list(size) == [job.source_height, job.source_width]:
        size = None
    return {**selection, "end": end, "size": size}


def read_checkpoint(
    path: Path,
    settings: dict,
    job: InputPlan,
    gray: bool,
    postprocess: dict,
    *,
    model: str,
    make_model: Callable[[], Any],
) -> tuple[int, dict]:
    """``(frames_done, state)`` of the checkpoint at ``path``, refused (``ValueError`` naming
    what differs) unless it was made for ``job``'s input with these settings, selection,
    ``gray`` and post-processing; ``make_model()`` (an uncompiled model of these settings)
    checks the state itself; ``model`` names it (``"mog"``, ``"mog2"``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        frames_done, state = int(ckpt["frames_done"]), ckpt["state"]
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {exc}; delete it or run without resuming.") from exc
    made_with = ckpt.get("model", "mog")  # format 2 before MOG2: always Stauffer-Grimson
    if made_with != model:
        raise ValueError(
            f"checkpoint {str(path)!r} was made with model {made_with!r}; this run has {model!r}. Resume with "
            "the same model, or run without resuming to start over."
        )
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
    if (
        job.count_exact
        and job.frame_count
        and (frames_done > job.selected or (stored_count is not None and stored_count != job.frame_count))
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
        make_model().load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} holds an unusable model state: {exc}") from exc
    return frames_done, state


def save_checkpoint(
    path: Path,
    state: dict,
    frames_done: int,
    settings: dict,
    job: InputPlan,
    gray: bool,
    postprocess: dict,
    *,
    model: str,
) -> None:
    """Write the checkpoint of one stream (``state``: :meth:`stream_state`) atomically."""
    buffer = io.BytesIO()
    torch.save(
        dict(
            format=_CHECKPOINT_FORMAT,
            model=model,
            frames_done=frames_done,
            state=state,
            settings=_state_settings(settings),
            gray=gray,
            size=[job.height, job.width],
            source_size=[job.source_height, job.source_width],
            selection=job.selection(),
            input=str(job.path),
            postprocess=postprocess,
            frame_count=job.frame_count if job.count_exact else None,
            input_bytes=job.input_bytes,
        ),
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())

"""Shape, dtype and value checks that raise clear, typed errors.

Every check names the argument, says what was expected and what came. Messages are
built only when a check fails, so the checks cost nothing on the happy path beyond the
test itself. Value checks that need the data (NaN, negative weights) do one reduction and
one host sync; they belong in ``fit``-style entry points, never inside per-frame hot paths.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from torchgmm.exceptions import ShapeError  # noqa: F401 - re-exported: its home is torchgmm.exceptions

__all__ = [
    "ShapeError",
    "check_tensor",
    "check_ndim",
    "check_floating",
    "check_finite",
    "check_choice",
    "check_positive_int",
    "check_real",
    "resolve_device",
    "add_note",
]


def check_tensor(value: object, name: str) -> Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor; return it."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    return value


def check_ndim(x: Tensor, name: str, ndims: Iterable[int], layout: str) -> None:
    """Raise :class:`ShapeError` unless ``x.ndim`` is one of ``ndims``.

    Args:
        x: the tensor to check.
        name: the argument's name, as the user wrote it.
        ndims: the accepted numbers of dimensions.
        layout: the expected layout in the shape vocabulary, e.g. ``"(B, N, D) or (N, D)"``.
    """
    ndims = tuple(ndims)
    if x.ndim not in ndims:
        raise ShapeError(f"`{name}` must have shape {layout}, got a {x.ndim}-D tensor of shape {tuple(x.shape)}.")


def check_floating(x: Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}.")


def check_finite(x: Tensor, name: str, use: str = "fitting") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity (one reduction, one host sync).

    ``use`` names what the values are for (``"fitting"``, ``"prediction"``, ``"the model
    update"``), so the message does not speak of fitting where nothing is fitted.
    """
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"`{name}` contains {n_bad} NaN or infinite value(s); clean or drop them before {use}.")


def check_choice(value: object, name: str, choices: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Raise ``ValueError``/``TypeError`` unless ``value`` is an int >= ``minimum``; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return value


def check_real(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a finite real number in range; return it as float.

    Args:
        value: the setting (int or float; bool is refused).
        name: the argument's name.
        minimum, maximum: inclusive bounds (``exclusive_minimum``: ``value > minimum``).

    Example:
        >>> check_real(0.5, "background_ratio", minimum=0, maximum=1, exclusive_minimum=True)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}.")
    value = float(value)
    low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
    if (
        value != value
        or value in (float("inf"), float("-inf"))
        or not low_ok
        or (maximum is not None and value > maximum)
    ):
        low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        bounds = " and ".join(b for b in (low, high) if b)
        raise ValueError(f"`{name}` must be a finite number{' ' + bounds if bounds else ''}, got {value}.")
    return value


def resolve_device(
    device: str | torch.device, *, cuda_available: bool | None = None, where: str = "PyTorch sees no CUDA device"
) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given.

    The one place where the file-level jobs (``segment_files``, ``run_background``,
    evaluation) turn their ``device`` argument into a device. ``cuda_available`` (default:
    ``torch.cuda.is_available()``) and ``where`` (what the error says is missing) let the Ray
    engine check a cluster's GPUs instead of this process's.

    Raises:
        ValueError: CUDA was asked for but is not available, or the name is not a device.

    Example:
        >>> resolve_device("cpu"), resolve_device("auto", cuda_available=False)
        (device(type='cpu'), device(type='cpu'))
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if str(device) == "auto":
        return torch.device("cuda" if available else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"`device` must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.") from exc
    if device.type == "cuda" and not available:
        raise ValueError(f"device 'cuda' was asked for, but {where}; use 'cpu' or 'auto'.")
    return device


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``: Python >= 3.11 prints it with the traceback; on 3.10 (no
    ``add_note``) the note is kept in the same ``__notes__`` list.

    Example:
        >>> err = ValueError("first")
        >>> add_note(err, "and another")
        >>> err.__notes__
        ['and another']
    """
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def check_generators(generator: object, b: int, device: torch.device, name: str = "generator") -> None:
    """``generator`` is None, a ``torch.Generator``, or a sequence of B of them (one per
    problem), each on the data's ``device`` (PyTorch draws only with a generator of the
    device it draws on; its own error does not say which argument is wrong).

    Raises:
        ValueError: a sequence of another length, or of something else; a generator on
            another device type than the data's.
    """
    if generator is None:
        return
    if isinstance(generator, torch.Generator):
        generators = [generator]
    else:
        try:
            generators = list(generator)  # type: ignore[call-overload]
        except TypeError:
            generators = []
        if len(generators) != b or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(
                f"`{name}` must be a torch.Generator or a sequence of {b} (one per problem), got {generator!r}."
            )
    wrong = [g.device for g in generators if g.device.type != torch.device(device).type]
    if wrong:
        raise ValueError(
            f"`{name}` is on {wrong[0]} but the data are on {device}: make it with "
            f"torch.Generator(device={str(torch.device(device).type)!r})."
        )

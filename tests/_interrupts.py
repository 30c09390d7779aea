"""Simulated Ctrl-C for the tests of interrupted runs (not a test module)."""

from __future__ import annotations

import functools
from typing import Callable


def ctrl_c_at_call(function: Callable, call: int) -> Callable:
    """``function`` wrapped to raise ``KeyboardInterrupt`` at its ``call``-th call (1-based),
    as a Ctrl-C arriving there would; the other calls go through. Works for methods too
    (set the wrapper on the class)."""
    calls = 0

    @functools.wraps(function)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        if calls == call:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapper

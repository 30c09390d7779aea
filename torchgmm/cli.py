"""The ``torchgmm`` command line: argument parsing and progress only.

Each subcommand parses its arguments and calls the same public library functions a user
would call from Python. Exit status: 0 on success, 1 when some inputs failed (each named on
stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


# --- demo ------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled cameraman image and model a generated clip")
    p.add_argument("--out", default="torchgmm-demo", help="output folder (default: ./torchgmm-demo)")
    p.add_argument("--classes", type=int, default=3, help="number of intensity classes (default: 3)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from torchgmm.demo import run_demo

    return run_demo(args.out, n_classes=args.classes)


# --- segment (issue 3) -------------------------------------------------------------------
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images by histogram EM")
    p.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    raise NotImplementedError("torchgmm segment is not implemented yet")


# --- background (issue 5) ----------------------------------------------------------------
def _add_background(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("background", help="per-pixel mixture background subtraction of videos")
    p.set_defaults(run=_run_background)


def _run_background(args: argparse.Namespace) -> int:
    raise NotImplementedError("torchgmm background is not implemented yet")


# --- evaluate (issue 5) ------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score the background model on CDnet-layout sequences")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    raise NotImplementedError("torchgmm evaluate is not implemented yet")


# --- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchgmm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_background, _add_evaluate):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

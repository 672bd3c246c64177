"""What the command lines share: argument types that refuse bad values, and user errors as one line.

A script builds its parser and ends with ``run_main(main, parser)``: a bad input (a ``ValueError`` or
a missing file, whose messages say what to fix) prints ``error: ...`` and exits with status 2, as
argparse does for bad flags; ``--debug``, which ``run_main`` adds, shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _number(text: str, kind: type, test: Callable[[Any], bool], expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return value


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """A seed, an index or an optional count: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a guidance scale, a weight decay, a probability)."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def run_main(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and call ``main``; a user error ends the process with ``error: <message>`` and status 2."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    try:
        return main(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = [
    "USER_ERRORS",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "run_main",
]

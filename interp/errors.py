"""The one error type that user-facing code raises for bad input.

The CLI turns an :class:`InterpError` into one line on stderr and exit code 2; library users get a
normal exception whose message already says what to fix.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any


class InterpError(ValueError):
    """Bad input: the message is one line that names the fix."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def check_finite(name: str, value: Any, above: float | None = None, at_least: float | None = None) -> float:
    """`value` as a float, or a one-line InterpError unless it is a finite real number (> `above`, >= `at_least`).

    Range checks alone are not enough: NaN fails every comparison (so `not x > 0` catches it only by luck of
    phrasing) and inf passes `x > 0`, and either then flows silently into a result as NaN.
    """
    bound = f" above {above:g}" if above is not None else f" of at least {at_least:g}" if at_least is not None else ""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (not real or not math.isfinite(value) or (above is not None and not value > above)
            or (at_least is not None and not value >= at_least)):
        raise InterpError(f"{name} must be a finite number{bound} (got {value!r})")
    return float(value)

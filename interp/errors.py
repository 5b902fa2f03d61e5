"""The one error type that user-facing code raises for bad input.

The CLI turns an :class:`InterpError` into one line on stderr and exit code 2; library users get a
normal exception whose message already says what to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(ValueError):
    """Bad input: the message is one line that names the fix."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""

"""The one error type that user-facing code raises for bad input.

The CLI turns an :class:`InterpError` into one line on stderr and exit code 2; library users get a
normal exception whose message already says what to fix.
"""

from __future__ import annotations

import difflib
import errno
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


# What to do about an OSError on a path the user named, by errno.
_FILE_FIXES = {
    errno.ENOENT: "check the path",
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EROFS: "the disk is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free some space or choose another location",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another location",
    errno.ENOTDIR: "part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; pass a file",
    errno.ENAMETOOLONG: "shorten the name",
}
# errnos that say something about the user's files or disk, not about our code
USER_ERRNOS = frozenset(_FILE_FIXES)


def file_error(path: Any, error: OSError | UnicodeDecodeError) -> InterpError:
    """A one-line InterpError for a user-named file that could not be read or written, naming the fix."""
    if isinstance(error, UnicodeDecodeError):
        return InterpError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8")
    fix = _FILE_FIXES.get(error.errno, "check the path, its permissions and the free disk space")
    return InterpError(f"{path}: {error.strerror or error}; {fix}")

"""Output destinations, checked before any expensive work.

Each parser declares the options that name something its command writes (`declare_outputs`); `main()`
calls `check_outputs(args)` before the command runs, so a result is never computed only to be lost to
a missing folder, a read-only disk, a file where a folder belongs or a folder that already holds
something. Every command inherits `--workspace` and `--html` from the common options; a command adds
its own (`edit --save`, `sae train --out`) with one `declare_outputs` call.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from interp.errors import InterpError, file_error

MIN_FREE_BYTES = 1 << 20  # a destination with less free space than this is full for our purposes


@dataclasses.dataclass(frozen=True)
class Output:
    """How a command writes to the destination one option names.

    kind: "workspace" (a folder, created here when missing, so that `--html` may point into it),
    "html" (a new or existing .html file in an existing folder), "dir" (a folder that must be missing
    or empty) or "unused" (the command writes nothing there: the option is refused). `unless` names a
    flag (e.g. "resume", "force") that allows a non-empty "dir", and `why` says what that flag does
    there (for the error message); `path`, when given, computes the destination from the arguments
    (None: nothing to check).
    """

    kind: str
    unless: str | None = None
    why: str = ""
    path: Callable[[argparse.Namespace], str | Path | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("workspace", "html", "dir", "unused"):
            raise ValueError(f"unknown output kind {self.kind!r}")


WORKSPACE = Output("workspace")
HTML = Output("html")
NEW_DIR = Output("dir")
UNUSED = Output("unused")


def declare_outputs(parser: argparse.ArgumentParser, **outputs: Output) -> None:
    """Record on `parser` which options (by dest) name output destinations, on top of those it has."""
    parser.set_defaults(outputs={**(parser.get_default("outputs") or {}), **outputs})


def html_paths(path: str | Path, n: int) -> list[Path]:
    """Where `n` figures go for `--html path`: the path itself for one, else `<stem>-<i><suffix>` beside it."""
    path = Path(path).expanduser()
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def check_outputs(args: argparse.Namespace) -> None:
    """Raise a one-line InterpError for any declared destination of `args` that cannot be written."""
    for dest, output in (getattr(args, "outputs", None) or {}).items():
        value = output.path(args) if output.path is not None else getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if output.kind == "unused":
            raise InterpError(f"{flag} does not apply to this command; drop it")
        if str(value) == "":
            raise InterpError(f"{flag} is empty; pass a path")
        path = Path(value).expanduser()
        if output.kind == "html":
            _check_html(path, flag)
            continue
        if path.exists() and not path.is_dir():
            raise InterpError(f"{flag} {path} is a file; pass a folder")
        allowed = output.unless is not None and getattr(args, output.unless, False)
        if output.kind == "dir" and path.is_dir() and any(path.iterdir()) and not allowed:
            why = f" {output.why}" if output.why else ""
            other = f" (or pass --{output.unless}{why})" if output.unless else ""
            raise InterpError(f"{flag} {path} already exists and is not empty; choose another {flag}{other}")
        _check_folder(path, flag, keep=output.kind == "workspace")


def _check_html(path: Path, flag: str) -> None:
    if path.is_dir():
        raise InterpError(f"{flag} {path} is a folder; pass a file name such as {path / 'figure.html'}")
    if path.suffix.lower() != ".html":
        raise InterpError(f"{flag} {path} must end in .html; pass e.g. {path.with_name(path.name + '.html')}")
    if not path.parent.is_dir():
        raise InterpError(f"{flag} {path}: folder {path.parent} does not exist; create it or choose another")
    if path.exists() and not os.access(path, os.W_OK):
        raise InterpError(f"{flag} {path} is not writable; fix its permissions or choose another file")
    _check_folder(path.parent, flag, keep=True)


def _check_folder(path: Path, flag: str, keep: bool) -> None:
    """Create `path` (and missing parents) if needed and a temporary file in it, then remove the folders
    made unless `keep`; raise naming the fix when that fails or the disk is full."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun process 0 probes (and removes what it made)
        return
    made: list[Path] = []
    kept = False
    try:
        for folder in reversed([path, *path.parents]):
            if folder.exists() and not folder.is_dir():
                raise InterpError(f"{flag} {path}: {folder} is a file, not a folder; check the path")
            if not folder.is_dir():
                try:
                    folder.mkdir()
                    made.append(folder)
                except FileExistsError:  # made just now by another run
                    if not folder.is_dir():
                        raise
        with tempfile.TemporaryFile(dir=path):
            pass
        stats = os.statvfs(path)
        if stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
            raise InterpError(f"{flag} {path}: the disk is full; free some space or choose another location")
        kept = keep
    except OSError as e:
        raise InterpError(f"{flag} {file_error(e.filename or path, e)}") from None
    finally:
        for folder in reversed(made if not kept else []):
            try:
                folder.rmdir()
            except OSError:
                pass

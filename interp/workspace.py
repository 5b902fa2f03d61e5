"""A workspace: a folder of saved results, laid out as `<root>/<kind>/<name>/`, read by the dashboard.

Saving is atomic (written beside, then renamed), so an interrupted save never damages what was
already there, and a reader never sees half a result. Names are unique: a save reserves its folder
with `mkdir` (atomic, so two saves in the same second, or from two threads or processes, get
`name` and `name-2`) and never replaces anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from interp.errors import InterpError
from interp.results import Result


@dataclasses.dataclass(frozen=True)
class Entry:
    """One saved result: where it is and what kind it is."""

    kind: str
    name: str
    path: Path
    created: float
    note: str | None = None  # set when saved.json is damaged (`created` is then the folder's time)


def slug(text: str, limit: int = 40) -> str:
    """A short file-system-safe name made from `text`."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[:limit].rstrip("-") or "result"


def _reserve(kind_dir: Path, base: str) -> Path:
    """Create and return the first free folder of `base`, `base-2`, `base-3`, ... in `kind_dir`.

    `mkdir` either creates the folder or fails, so concurrent savers can never pick the same name;
    the folder stays empty (invisible to `entries`, which lists folders with a result.json) until
    the finished result is renamed onto it."""
    n = 1
    while True:
        folder = kind_dir / (base if n == 1 else f"{base}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def _within(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every link followed, is `root` (a resolved path) or below it."""
    return _within(str(root), os.path.realpath(path))


def contained(root: Path, folder: Path) -> bool:
    """Whether `folder` and everything below it, with every link followed, lie inside `root` (resolved).

    Only links need resolving: a plain name in a folder whose real path is known is a real path too."""
    pending, seen = [os.path.realpath(folder)], set()
    while pending:
        real = pending.pop()
        if not _within(str(root), real):
            return False
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        with os.scandir(real) as items:
            pending.extend(os.path.realpath(item.path) if item.is_symlink() else item.path for item in items)
    return True


def _created(folder: Path) -> tuple[float, str | None]:
    """When the result in `folder` was saved (its saved.json), else the folder's time and, when saved.json
    exists but is damaged, a note naming it."""
    try:
        created = json.loads((folder / "saved.json").read_text())["created"]
        time.localtime(created)  # a number of seconds the pages can show
        if isinstance(created, bool) or not math.isfinite(created):
            raise ValueError(created)
        return float(created), None
    except FileNotFoundError:  # saved by hand or by an older version: no note
        return folder.stat().st_mtime, None
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:
        return folder.stat().st_mtime, f"saved.json has no valid 'created' time ({type(e).__name__})"


class Workspace:
    """A folder of saved results."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InterpError(f"workspace {self.root} is a file; pass a folder")

    def save(self, result: Result, name: str | None = None) -> Path:
        """Write `result` to a new folder `<root>/<kind>/<name or time>[-N]/` and return it."""
        kind_dir = self.root / result.kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        final = _reserve(kind_dir, slug(name) if name else time.strftime("%Y%m%d-%H%M%S"))
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=kind_dir))
        try:
            result.write(tmp)
            (tmp / "saved.json").write_text(json.dumps({"created": time.time(), "name": final.name}))
            os.rename(tmp, final)  # replaces the empty reserved folder atomically
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                final.rmdir()
            raise
        return final

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every complete saved result (newest first), optionally of one kind.

        A folder that is, or holds, a link to anything outside the workspace is left out, so readers of
        entries never leave the workspace. A damaged saved.json costs only the time: the entry gets
        its folder's time and a `note` naming the file."""
        if not self.root.is_dir():
            return []
        root = self.root.resolve()
        out = []
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if kind is not None and kind_dir.name != kind:
                continue
            for folder in kind_dir.iterdir():
                if folder.name.startswith(".") or not (folder / "result.json").is_file() or not contained(root, folder):
                    continue
                out.append(Entry(kind_dir.name, folder.name, folder, *_created(folder)))
        return sorted(out, key=lambda e: e.created, reverse=True)

    def load(self, kind: str, name: str) -> Result:
        folder = self.root / kind / name
        if not contained(self.root.resolve(), folder):
            raise InterpError(f"{kind}/{name} is, or links to, something outside the workspace; pick a saved result")
        return Result.read(folder)

    def latest(self, kind: str) -> Result | None:
        entries = self.entries(kind)
        return Result.read(entries[0].path) if entries else None

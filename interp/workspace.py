"""A workspace: a folder of saved results, laid out as `<root>/<kind>/<name>/`, read by the dashboard.

Saving is atomic (written beside, then renamed), so an interrupted save never damages what was
already there, and a reader never sees half a result.
"""

from __future__ import annotations

import dataclasses
import json
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


def slug(text: str, limit: int = 40) -> str:
    """A short file-system-safe name made from `text`."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[:limit].rstrip("-") or "result"


class Workspace:
    """A folder of saved results."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InterpError(f"workspace {self.root} is a file; pass a folder")

    def save(self, result: Result, name: str | None = None) -> Path:
        kind_dir = self.root / result.kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        base = slug(name) if name else time.strftime("%Y%m%d-%H%M%S")
        final, n = kind_dir / base, 1
        while final.exists():
            n += 1
            final = kind_dir / f"{base}-{n}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=kind_dir))
        try:
            result.write(tmp)
            (tmp / "saved.json").write_text(json.dumps({"created": time.time(), "name": final.name}))
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every complete saved result (newest first), optionally of one kind."""
        if not self.root.is_dir():
            return []
        out = []
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if kind is not None and kind_dir.name != kind:
                continue
            for folder in kind_dir.iterdir():
                if folder.name.startswith(".") or not (folder / "result.json").is_file():
                    continue
                try:
                    created = json.loads((folder / "saved.json").read_text())["created"]
                except (OSError, ValueError, KeyError):
                    created = folder.stat().st_mtime
                out.append(Entry(kind_dir.name, folder.name, folder, created))
        return sorted(out, key=lambda e: e.created, reverse=True)

    def load(self, kind: str, name: str) -> Result:
        folder = (self.root / kind / name).resolve()
        if self.root.resolve() not in folder.parents:
            raise InterpError(f"{kind}/{name} is outside the workspace; pick a saved result")
        return Result.read(folder)

    def latest(self, kind: str) -> Result | None:
        entries = self.entries(kind)
        return Result.read(entries[0].path) if entries else None

"""What every page of one running dashboard shares: the workspace root, the lazily loaded model, caches.

All file access goes through `inside()`, which refuses any path that resolves outside the workspace,
so a crafted URL cannot read other files. The model is loaded on first use (pages that only read
saved results never pay for it) and guarded by a lock because the server answers from many threads.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.workspace import inside

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_name(name: str, what: str) -> str:
    """`name` if it is one plain path component (letters, digits, . _ -), else a one-line error."""
    if not _SAFE_NAME.match(name or "") or ".." in name:
        raise InterpError(f"{what} {name!r} is not a plain name; pick one from the list")
    return name


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class Context:
    """Shared state of one dashboard: workspace, optional live model, caches."""

    def __init__(self, workspace: str | Path, model_spec: str | None = None, device: str = "cpu",
                 model_options: dict | None = None):
        self.root = Path(workspace).expanduser().resolve()
        self.model_spec = model_spec
        self.device = device
        self.model_options = model_options or {}  # more load_model arguments: dtype, n_devices, device_map
        self.model_lock = threading.Lock()
        self._model = None
        self.cache = LRU(64)

    def inside(self, *parts: str) -> Path:
        """The path `root/parts...`, refused when it would leave the workspace."""
        path = self.root.joinpath(*parts).resolve()
        if not inside(self.root, path):
            raise InterpError(f"{'/'.join(parts)} is outside the workspace; pick an entry from the list")
        return path

    def workspace_problem(self) -> str | None:
        """A sentence for the page when the workspace cannot be shown, else None."""
        if not self.root.exists():
            return (f"The workspace {self.root} does not exist yet. Run an analysis with "
                    f"`--workspace {self.root}` (for example `interp lens \"...\" --workspace {self.root}`).")
        if not self.root.is_dir():
            return f"The workspace {self.root} is a file, not a folder; start the dashboard on a folder."
        return None

    @property
    def has_model(self) -> bool:
        return self.model_spec is not None

    def model(self):
        """The hooked model (loaded once, on first use)."""
        if self.model_spec is None:
            raise InterpError("no model is loaded; start the dashboard with --model SPEC to run prompts")
        with self.model_lock:
            if self._model is None:
                from interp.models import load_model

                self._model = load_model(self.model_spec, device=self.device, **self.model_options)
            return self._model

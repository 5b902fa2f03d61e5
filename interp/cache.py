"""Where derived artifacts live: converted weights, key statistics, noise scales.

`INTERP_CACHE` overrides the user cache folder (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("INTERP_CACHE") or user_cache_dir("interp"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

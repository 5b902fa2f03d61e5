"""Reads the SAE feature-statistics folders described in FEATURES_SCHEMA.md, fast enough to page 16k features.

`features.parquet` (one small row per feature) is loaded once per file version and searched and
sorted in memory. `contexts.parquet` is sorted by feature, so a feature page reads only the row
groups whose min/max statistics can hold that feature.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dashboards.context import Context, check_name
from interp.errors import InterpError
from interp.workspace import contained

FEATURES_DIR = "sae_features"
META_FILE = "sae.json"
FEATURES_FILE = "features.parquet"
CONTEXTS_FILE = "contexts.parquet"
SAE_DIR = "sae"
REQUIRED_FEATURE_COLUMNS = ("feature", "density", "max_act")
REQUIRED_CONTEXT_COLUMNS = ("feature", "group", "group_rank", "rank", "tokens", "acts")
OPTIONAL_CONTEXT_COLUMNS = ("source_attr", "head_attr", "attr_before")  # attention-output SAEs' top contexts
SORTS = {
    "density": ("density", False),
    "density-asc": ("density", True),
    "max_act": ("max_act", False),
    "feature": ("feature", True),
}


def feature_set_names(ctx: Context) -> list[str]:
    """Names of the complete feature folders (those whose sae.json, written last, exists), leaving out
    any that is, or holds, a link to outside the workspace."""
    base = ctx.root / FEATURES_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / META_FILE).is_file() and contained(ctx.root, p))


def load_feature_set(ctx: Context, name: str) -> FeatureSet:
    """The feature set `name` of the workspace, cached until its files change."""
    folder = ctx.inside(FEATURES_DIR, check_name(name, "feature set"))
    if not (folder / META_FILE).is_file():
        raise InterpError(f"there is no complete feature set {name!r} in this workspace "
                          f"(no {FEATURES_DIR}/{name}/{META_FILE}); run `interp sae features` or pick one "
                          "from the list")
    if not contained(ctx.root, folder):
        raise InterpError(f"the feature set {name!r} links to files outside the workspace, so it is not shown; "
                          "copy the files into it instead")
    stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0
                  for p in (folder / META_FILE, folder / FEATURES_FILE, folder / CONTEXTS_FILE))
    return ctx.cache.get(("features", str(folder), stamp), lambda: FeatureSet(folder))


def _missing(columns: list[str], required: tuple[str, ...], path: Path) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise InterpError(f"{path.name} lacks columns {missing}; rewrite it as FEATURES_SCHEMA.md describes")


def _read(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`; a damaged or missing file becomes an InterpError that names it."""
    try:
        return read(path)
    except (OSError, ValueError) as e:
        raise InterpError(f"cannot read {path.parent.name}/{path.name} ({type(e).__name__}: {e}); it may be "
                          "half-written, run `interp sae features` again") from e


def _json_object(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class FeatureSet:
    """One SAE's feature statistics: metadata, per-feature rows, contexts on demand."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta: dict[str, Any] = _read(folder / META_FILE, _json_object)
        frame = _read(folder / FEATURES_FILE, pd.read_parquet)
        _missing(list(frame.columns), REQUIRED_FEATURE_COLUMNS, folder / FEATURES_FILE)
        if frame["feature"].duplicated().any():
            raise InterpError(f"{FEATURES_FILE} in {folder.name} lists a feature twice; rewrite it")
        self.frame = frame.set_index(frame["feature"].to_numpy()).sort_index()  # rows by feature id
        tokens = self.frame["top_tokens"] if "top_tokens" in self.frame else pd.Series([], dtype=object)
        self._search = pd.Series(["\n".join(map(str, t)).lower() for t in tokens], index=tokens.index, dtype=object)
        self._orders: dict[str, np.ndarray] = {}
        self._contexts_meta, self._groups = self._index_contexts()

    @property
    def name(self) -> str:
        return self.folder.name

    def _index_contexts(self) -> tuple[Any, list[tuple[int, int, int]]]:
        """Footer metadata and (row group, min feature, max feature) of contexts.parquet."""
        path = self.folder / CONTEXTS_FILE
        if not path.is_file():
            return None, []
        meta = _read(path, pq.read_metadata)
        _missing(meta.schema.to_arrow_schema().names, REQUIRED_CONTEXT_COLUMNS, path)
        col = [meta.schema.column(j).path for j in range(meta.num_columns)].index("feature")
        groups = []
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            lo, hi = (stats.min, stats.max) if stats is not None and stats.has_min_max else (None, None)
            groups.append((i, lo, hi))
        return meta, groups

    def order(self, sort: str) -> np.ndarray:
        """Feature ids sorted by `sort` (one of SORTS), computed once."""
        if sort not in SORTS:
            raise InterpError(f"unknown sort {sort!r}; use one of {sorted(SORTS)}")
        if sort not in self._orders:
            column, ascending = SORTS[sort]
            ranked = self.frame.sort_values([column, "feature"], ascending=[ascending, True], kind="stable")
            self._orders[sort] = ranked["feature"].to_numpy()
        return self._orders[sort]

    def search(self, text: str, sort: str) -> np.ndarray:
        """Feature ids matching `text` (a feature id, or part of a token the feature fires on), sorted."""
        ids = self.order(sort)
        text = (text or "").strip()
        if not text:
            return ids
        if text.isdigit():
            return ids[ids == int(text)]
        hits = self._search.str.contains(text.lower(), regex=False)
        return ids[hits.reindex(ids).to_numpy(dtype=bool)] if len(hits) else ids[:0]

    def row(self, feature: int) -> pd.Series:
        if feature not in self.frame.index:
            raise InterpError(f"feature {feature} is not in {self.name} (it has features "
                              f"{int(self.frame.index.min())}..{int(self.frame.index.max())})")
        return self.frame.loc[feature]

    def contexts(self, feature: int) -> pd.DataFrame:
        """The stored contexts of one feature, ordered by group then rank (empty when none)."""
        if self._contexts_meta is None:
            return pd.DataFrame(columns=list(REQUIRED_CONTEXT_COLUMNS))
        groups = [i for i, lo, hi in self._groups if lo is None or lo <= feature <= hi]
        names = self._contexts_meta.schema.to_arrow_schema().names
        columns = list(REQUIRED_CONTEXT_COLUMNS) + [c for c in OPTIONAL_CONTEXT_COLUMNS if c in names]
        table = pq.ParquetFile(self.folder / CONTEXTS_FILE, metadata=self._contexts_meta).read_row_groups(
            groups, columns=columns)
        frame = table.to_pandas()
        frame = frame[frame["feature"] == feature]
        return frame.sort_values(["group_rank", "rank"], kind="stable").reset_index(drop=True)

    def sae_folder(self) -> Path | None:
        """The sae-lens folder (cfg.json + sae_weights.safetensors) saved beside the stats, if any."""
        folder = self.folder / SAE_DIR
        return folder if (folder / "cfg.json").is_file() else None

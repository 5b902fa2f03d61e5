"""Probe datasets: texts with labels (and optional groups and marks), built-in or from CSV / JSONL.

A file needs a `text` column (Marks & Tegmark's `statement` is accepted too) and a `label` column;
`group` keeps related rows in one cross-validation fold, `mark` names the substring whose last token
`position="mark"` reads. Built-in datasets live in probes/data (see `probes.generate`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from interp.errors import InterpError, file_error, suggest

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = tuple(sorted(path.stem for path in DATA_DIR.glob("*.csv")))  # written by `python -m probes.generate`


@dataclasses.dataclass(frozen=True)
class ProbeDataset:
    """Texts and their labels; binary labels are 0/1 ints, continuous ones floats."""

    name: str
    texts: list[str]
    labels: np.ndarray
    groups: list[str] | None = None
    marks: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def binary(self) -> bool:
        return self.labels.dtype.kind in "iub"

    def subset(self, index) -> ProbeDataset:
        """The rows at positions `index` (any integer index array)."""
        idx = np.asarray(index, dtype=int)
        pick = (lambda xs: [xs[i] for i in idx]) if len(idx) else (lambda xs: [])
        return ProbeDataset(self.name, pick(self.texts), self.labels[idx],
                            pick(self.groups) if self.groups else None, pick(self.marks) if self.marks else None)

    def require_binary(self) -> ProbeDataset:
        """Self, or a one-line error when the labels are not two classes (classification probes need both)."""
        if not self.binary:
            raise InterpError(f"dataset {self.name!r} has continuous labels; use --method ridge or 0/1 labels")
        classes = np.unique(self.labels)
        if len(classes) != 2:
            raise InterpError(f"dataset {self.name!r} has only class {classes.tolist()}; "
                              "a probe needs rows of both label 0 and label 1")
        return self


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False, dtype={"text": str, "statement": str, "group": str,
                                                                   "mark": str})
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl", dtype={"group": str, "mark": str})
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, e) from None
    except (ValueError, pd.errors.ParserError) as e:
        raise InterpError(f"cannot read {path} ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
                          "fix the file") from None
    raise InterpError(f"{path} is neither .csv nor .jsonl; save the dataset as one of them")


def _labels(values: pd.Series, name: str) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy().astype(np.int64)
    lowered = values.astype(str).str.strip().str.lower()
    if lowered.isin(["true", "false"]).all():
        return (lowered == "true").to_numpy().astype(np.int64)
    try:
        numbers = pd.to_numeric(values).to_numpy()
    except (ValueError, TypeError):
        raise InterpError(f"dataset {name!r}: labels must be 0/1, true/false or numbers") from None
    if np.isnan(numbers).any():
        raise InterpError(f"dataset {name!r} has rows without a label; fill in every label")
    if set(np.unique(numbers)) <= {0, 1}:
        return numbers.astype(np.int64)
    return numbers.astype(np.float64)


def from_frame(frame: pd.DataFrame, name: str) -> ProbeDataset:
    """Check a table's columns and rows and turn it into a `ProbeDataset`."""
    frame = frame.rename(columns={"statement": "text"}) if "text" not in frame else frame
    missing = [c for c in ("text", "label") if c not in frame]
    if missing:
        raise InterpError(f"dataset {name!r} lacks column(s) {', '.join(missing)}; "
                          f"it has {', '.join(map(str, frame.columns)) or 'none'} (need text and label)")
    if frame.empty:
        raise InterpError(f"dataset {name!r} has no rows; add labelled texts")
    texts = ["" if pd.isna(t) else str(t) for t in frame["text"]]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise InterpError(f"dataset {name!r} has {len(empty)} empty text(s) (first at row {empty[0]}); "
                          "remove or fill them")
    groups, marks = (frame[c].astype(str).tolist() if c in frame else None for c in ("group", "mark"))
    return ProbeDataset(name, texts, _labels(frame["label"], name), groups, marks)


def concat(parts: list[ProbeDataset]) -> ProbeDataset:
    """Rows of several datasets as one (e.g. Marks & Tegmark's cities + neg_cities training set).

    Groups are kept as they are, so the same city in two datasets stays in one fold."""
    if len({p.binary for p in parts}) > 1:
        raise InterpError("cannot join datasets with 0/1 labels and continuous labels; probe them separately")

    def joined(field: str) -> list[str] | None:
        if not all(getattr(p, field) for p in parts):
            return None
        return [x for p in parts for x in getattr(p, field)]

    return ProbeDataset("+".join(p.name for p in parts), [t for p in parts for t in p.texts],
                        np.concatenate([p.labels for p in parts]), joined("groups"), joined("marks"))


def load_dataset(spec: str) -> ProbeDataset:
    """A built-in dataset by name (see `BUILTIN`), a .csv / .jsonl file, or several joined with '+'."""
    if "+" in spec and not Path(spec).expanduser().is_file():
        return concat([load_dataset(part.strip()) for part in spec.split("+")])
    if spec in BUILTIN:
        return from_frame(_read_table(DATA_DIR / f"{spec}.csv"), spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InterpError(f"unknown dataset {spec!r}{suggest(spec, BUILTIN)}; use one of "
                          f"{', '.join(BUILTIN)} or a .csv / .jsonl file")
    return from_frame(_read_table(path), path.stem)

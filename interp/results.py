"""The shape every analysis returns: a dataclass with `to_frame()`, `figure()`, `summary()`, `save()`.

Fields are stored by type: tensors (and dicts of tensors) in one safetensors file, DataFrames as
Parquet, everything else as JSON. Nothing is pickled, so the dashboard can read any result safely.
Subclasses register a `kind` so a saved folder loads back as its own class.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

RESULT_KINDS: dict[str, type[Result]] = {}


def register_result(cls: type[Result]) -> type[Result]:
    """Class decorator: make `cls` loadable from a workspace by its `kind`."""
    RESULT_KINDS[cls.kind] = cls
    return cls


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: tensors and arrays as (nested) lists, DataFrames as records, numpy scalars as
    numbers, and NaN or inf as None, since JSON has no literal for them (`json.dumps(..., allow_nan=False)` holds)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return value.tolist() if finite else jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))  # pandas writes NaN and inf as null
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):  # numpy float64 too
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # other numpy scalars
        return jsonable(value.item())
    return value


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


@dataclasses.dataclass
class Result:
    """Base class of analysis results; subclasses are dataclasses that set `kind`."""

    kind: ClassVar[str] = "result"

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def figure(self):
        raise NotImplementedError

    def summary(self) -> str:
        """A few human-readable lines for the terminal."""
        return self.to_frame().head(20).to_string()

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (what `--json` prints)."""
        out = {"kind": self.kind}
        out.update({f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return out

    # -- storage -----------------------------------------------------------------------------
    def write(self, folder: Path) -> None:
        """Write this result's files into an existing empty `folder`."""
        from safetensors.torch import save_file

        meta: dict[str, Any] = {"kind": self.kind, "json": {}, "tensors": [], "tensor_dicts": [], "frames": [],
                                "tensor_dict_keys": {}}
        tensors: dict[str, torch.Tensor] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value.detach().cpu().contiguous()
                meta["tensors"].append(f.name)
            elif _is_tensor_dict(value):
                for key, tensor in value.items():
                    tensors[f"{f.name}/{key}"] = tensor.detach().cpu().contiguous()
                meta["tensor_dicts"].append(f.name)
                meta["tensor_dict_keys"][f.name] = list(value)  # safetensors sorts keys; keep the order
            elif isinstance(value, pd.DataFrame):
                value.to_parquet(folder / f"{f.name}.parquet")
                meta["frames"].append(f.name)
            else:
                meta["json"][f.name] = jsonable(value)
        if tensors:
            save_file(tensors, str(folder / "tensors.safetensors"))
        (folder / "result.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def read(cls, folder: Path) -> Result:
        """Load a folder written by `write`, as the class registered for its kind."""
        from safetensors.torch import load_file

        from interp.errors import InterpError

        folder = Path(folder)
        try:
            meta = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError) as e:
            raise InterpError(f"{folder} is not a saved result ({e.__class__.__name__}); pick another folder") from e
        kind = meta.get("kind")
        target = RESULT_KINDS.get(kind, cls) if cls is Result else cls
        if target is Result:
            raise InterpError(f"{folder} holds a result of unknown kind {kind!r}; import the module that defines it")
        values: dict[str, Any] = dict(meta["json"])
        for f in dataclasses.fields(target):  # a float field stored as null was NaN or inf
            if f.type in ("float", float) and f.name in values and values[f.name] is None:
                values[f.name] = math.nan
        if meta["tensors"] or meta["tensor_dicts"]:
            tensors = load_file(str(folder / "tensors.safetensors"))
            for name in meta["tensors"]:
                values[name] = tensors[name]
            for name in meta["tensor_dicts"]:
                prefix = name + "/"
                keys = meta.get("tensor_dict_keys", {}).get(name) or [
                    k[len(prefix):] for k in tensors if k.startswith(prefix)]
                values[name] = {k: tensors[prefix + k] for k in keys}
        for name in meta["frames"]:
            if not (isinstance(name, str) and name.isidentifier()):  # a field name, never a path
                raise InterpError(f"{folder}/result.json names a table {name!r} that is not a field; it is damaged")
            values[name] = pd.read_parquet(folder / f"{name}.parquet")
        return target(**values)

    def save(self, workspace: str | Path, name: str | None = None) -> Path:
        """Save into `workspace` (a folder) and return the result's own folder."""
        from interp.workspace import Workspace

        return Workspace(workspace).save(self, name)

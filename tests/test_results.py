"""Results save into a workspace (safetensors + JSON/Parquet) and load back as their own class."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from interp.errors import InterpError
from interp.results import Result, register_result
from interp.workspace import Workspace


@register_result
@dataclasses.dataclass
class _Toy(Result):
    kind = "results_toy"
    name: str
    scores: torch.Tensor
    per_kind: dict
    table: pd.DataFrame

    def to_frame(self):
        return self.table

    def figure(self):
        import plotly.graph_objects as go

        return go.Figure(go.Scatter(y=self.scores.tolist()))


def _toy():
    return _Toy("a", torch.arange(6.0).reshape(2, 3), {"y": torch.zeros(3), "x": torch.ones(2)},
                pd.DataFrame({"a": [1, 2], "b": ["u", "v"]}))


def test_round_trip_without_pickle(tmp_path):
    path = _toy().save(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["result.json", "saved.json", "table.parquet", "tensors.safetensors"]
    back = Result.read(path)
    assert isinstance(back, _Toy)
    assert torch.equal(back.scores, _toy().scores)
    assert torch.equal(back.per_kind["y"], torch.zeros(3))
    assert list(back.per_kind) == ["y", "x"]  # the order the result had (figures draw in it), not sorted
    pd.testing.assert_frame_equal(back.table, _toy().table)
    assert json.loads(json.dumps(back.to_dict()))["scores"] == [[0, 1, 2], [3, 4, 5]]


def test_workspace_lists_newest_first_and_never_overwrites(tmp_path):
    ws = Workspace(tmp_path)
    first = ws.save(_toy(), "run")
    second = ws.save(_toy(), "run")
    assert first != second and first.exists() and second.exists()
    assert [e.path for e in ws.entries("results_toy")] == [second, first]
    assert isinstance(ws.latest("results_toy"), _Toy)


def test_half_written_results_are_ignored(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "results_toy" / ".tmp-abc").mkdir(parents=True)
    (tmp_path / "results_toy" / "broken").mkdir()
    assert ws.entries() == []
    with pytest.raises(InterpError, match="not a saved result"):
        Result.read(tmp_path / "results_toy" / "broken")


def test_load_refuses_paths_outside_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    _toy().save(tmp_path / "other")
    with pytest.raises(InterpError, match="outside the workspace"):
        ws.load("..", "other/toy")

"""Probe accuracy across training checkpoints (after "Emergence of Linear Truth Encodings in Language
Models", Ravfogel et al. 2025, who follow the linear separability of true and false statements over
training and see it arrive after the facts themselves are memorised, lowering the LM loss).

Each checkpoint is loaded in turn and swept with `probes.sweep` on the same dataset, folds and seed,
so the scores differ only by the weights. Checkpoints are a folder of checkpoint folders (as
`python -m interp.outliers.checkpoints OUT` writes) or a list of model specs, resolved by
`interp.outliers.checkpoints.resolve_checkpoints`; a folder's `training.json` gives the step and loss.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.results import Result, register_result
from probes.datasets import ProbeDataset
from probes.sweep import check_classifiers, cv_splits, probe_layers


def training_loss(spec: str) -> float | None:
    """The recent training loss recorded in a checkpoint folder's training.json (None without one)."""
    from interp.outliers.checkpoints import TRAINING_FILE

    try:
        loss = json.loads((Path(spec) / TRAINING_FILE).read_text()).get("loss")
    except (OSError, ValueError, AttributeError):
        return None
    return float(loss) if isinstance(loss, (int, float)) else None


def check_checkpoints(specs: str | Path | Sequence[str | Path]) -> list[tuple[str, int | None]]:
    """`resolve_checkpoints`, after refusing a single path that is not an existing folder."""
    from interp.outliers.checkpoints import resolve_checkpoints

    single = [specs] if isinstance(specs, (str, Path)) else list(specs)
    if len(single) == 1 and ("/" in str(single[0]) or str(single[0]).startswith(".")) and not Path(single[0]).is_dir():
        raise InterpError(f"--checkpoints {single[0]} is not a folder; pass a folder of checkpoint folders")
    return resolve_checkpoints(specs)


@register_result
@dataclasses.dataclass
class ProbeCheckpointResult(Result):
    """Cross-validated probe scores of every checkpoint: per layer, and at each checkpoint's best layer."""

    kind = "probe_checkpoints"
    dataset: str
    position: str
    methods: list[str]
    folds: int
    n: int
    checkpoints: pd.DataFrame  # checkpoint, step, loss, method, best_layer, accuracy (+ interval), auroc, f1
    layers: pd.DataFrame  # checkpoint, step, loss, layer, method, accuracy, auroc, f1 (cross-validated)

    def to_frame(self) -> pd.DataFrame:
        return self.checkpoints

    def summary(self) -> str:
        frame = self.checkpoints.copy()
        frame["checkpoint"] = frame["checkpoint"].map(lambda s: Path(s).name)
        show = ["checkpoint", "step", "loss", "method", "best_layer", "accuracy", "accuracy_lo", "accuracy_hi",
                "auroc"]
        return "\n".join([
            f"probes on {self.dataset!r} ({self.n} rows, {self.folds}-fold grouped CV, {self.position} token) "
            f"across {frame.checkpoint.nunique()} checkpoints; accuracy at each checkpoint's best layer",
            frame[show].to_string(index=False, float_format="{:.3f}".format),
        ])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        c = self.checkpoints
        by_step = c["step"].notna().all()
        names = {s: escape_label(Path(s).name) for s in c["checkpoint"]}
        fig = make_subplots(rows=1, cols=2, specs=[[{"secondary_y": True}, {}]], subplot_titles=(
            "best-layer accuracy (cross-validated) and training loss",
            escape_label(f"accuracy per layer ({self.methods[0]})")))
        for method, rows in c.groupby("method", sort=False):
            x = rows["step"].tolist() if by_step else [names[s] for s in rows["checkpoint"]]
            error = dict(type="data", symmetric=False, array=(rows.accuracy_hi - rows.accuracy).tolist(),
                         arrayminus=(rows.accuracy - rows.accuracy_lo).tolist())
            fig.add_trace(go.Scatter(x=x, y=rows.accuracy, error_y=error, mode="lines+markers",
                                     name=escape_label(f"{method} accuracy")), 1, 1)
        first = c[c.method == self.methods[0]]
        if first["loss"].notna().any():
            x = first["step"].tolist() if by_step else [names[s] for s in first["checkpoint"]]
            fig.add_trace(go.Scatter(x=x, y=first["loss"], mode="lines", name="training loss",
                                     line=dict(dash="dot", color="grey")), 1, 1, secondary_y=True)
        grid = self.layers[self.layers.method == self.methods[0]].pivot_table(
            index="layer", columns="checkpoint", values="accuracy", sort=False)[list(first["checkpoint"])]
        x = first["step"].tolist() if by_step else [names[s] for s in first["checkpoint"]]
        fig.add_trace(go.Heatmap(z=grid.values.tolist(), x=x, y=grid.index.tolist(), colorscale="Viridis",
                                 zmin=0.5, zmax=1.0, colorbar=dict(title="accuracy", x=1.02)), 1, 2)
        fig.add_hline(y=0.5, line_dash="dot", row=1, col=1)
        fig.update_xaxes(title_text="step" if by_step else "checkpoint")
        fig.update_yaxes(title_text="accuracy", row=1, col=1, secondary_y=False)
        fig.update_yaxes(title_text="loss", row=1, col=1, secondary_y=True)
        fig.update_yaxes(title_text="layer", row=1, col=2)
        fig.update_layout(title=escape_label(f"Probe accuracy over training on {self.dataset}"), height=480)
        return fig


def probe_checkpoints(specs: str | Path | Sequence[str | Path], dataset: ProbeDataset,
                      layers: str | Sequence[int] | None = None, methods: Sequence[str] = ("logistic",),
                      position: str | int = "last", folds: int = 5, seed: int = 0, batch_size: int = 32,
                      device: str = "cpu", dtype: str = "float32", progress: bool = True) -> ProbeCheckpointResult:
    """Sweep probes on `dataset` at every checkpoint (`layers`: None for all of each model's layers, or
    text like '2-5' that `interp.hooks.parse_layers` reads against each model).

    The checkpoints, methods and folds are checked before any model loads."""
    from interp.hooks import parse_layers
    from interp.models import load_model

    resolved = check_checkpoints(specs)
    methods = check_classifiers(methods, dataset, "--checkpoints")
    cv_splits(dataset, folds, seed)
    per_layer, best = [], []
    for spec, step in tqdm(resolved, desc="checkpoints", unit="model", file=sys.stderr, disable=not progress):
        model = load_model(spec, device=device, dtype=dtype)
        chosen = parse_layers(model, layers) if isinstance(layers, str) else layers
        swept = probe_layers(model, dataset, chosen, methods, position, folds, batch_size=batch_size, seed=seed)
        del model
        cv = swept.frame[swept.frame["eval"] == "cv"].drop(columns="eval")
        where = {"checkpoint": spec, "step": step, "loss": training_loss(spec)}
        per_layer.append(cv.assign(**where))
        for method in methods:
            row = cv[(cv.method == method) & (cv.layer == swept.best_layer(method))].iloc[0]
            best.append({**where, "method": method, "best_layer": int(row.layer),
                         **row.drop(["layer", "method"]).to_dict()})
    order = ["checkpoint", "step", "loss"]
    layers_frame = pd.concat(per_layer, ignore_index=True)
    return ProbeCheckpointResult(dataset=dataset.name, position=str(position), methods=methods, folds=folds,
                                 n=len(dataset), checkpoints=pd.DataFrame(best).astype({"step": "Int64"}),
                                 layers=layers_frame[order + [c for c in layers_frame if c not in order]]
                                 .astype({"step": "Int64"}))

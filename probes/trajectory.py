"""Layer-wise trajectories of a statement's hidden state and a single-pass truth detector on them
(after "The Geometry of Truth: Layer-wise Semantic Dynamics for Hallucination Detection", Mir 2025).

The paper follows each statement's hidden states through the layers, measures their alignment with a
"truth" reference (an external sentence encoder's embedding, mapped into a space learnt by contrastive
training) and how much they move between layers, and feeds these trajectory statistics to a classifier.
Here the references are the model's own: the mean last-token state of the true and of the false
training statements at each layer. Per statement and chosen layer l:

- `align_true_l`, `align_false_l`: cosine of (h_l - m_l) with (mu_true_l - m_l) and with (mu_false_l - m_l),
  where m_l is the mean state of all training statements (`center=True`; without centring the large
  shared component of the residual stream makes every cosine nearly equal) and mu the class means,
  all fitted on the training split only;
- `drift_l_l'`: 1 - cos(h_l, h_l') of the raw states at consecutive chosen layers l < l' (in [0, 2];
  scale-free, so layers whose norms grow still compare).

The detector is a logistic regression (scikit-learn, features standardised on the training split) on
all of these at once: one forward pass, no sampling. It is scored on a held-out split that shares no
group (no city, no number pair) with the training split, beside the single-layer probes of
`probes.sweep` fitted on the same training split; "the best single-layer probe" is the (method, layer)
with the best cross-validated accuracy inside the training split, so the held-out split never picks it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp.errors import InterpError
from interp.results import Result, register_result
from probes.datasets import ProbeDataset
from probes.sweep import check_classifiers, sweep

HELD_OUT = "held-out"
# closed-form probes by default: logistic ones took ~100 s per layer of the default model on ~1,500 rows (2 busy cores)
METHODS = ("mass-mean", "mass-mean-iid")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrajectoryConfig:
    """How the statements are split and the detector fitted.

    holdout: about this share of the groups is held out (1 / round(1 / holdout) of them, stratified);
    folds: cross-validation folds inside the training split that choose the best single-layer probe;
    center: subtract the training mean state before taking alignments; C: the detector's inverse L2 strength.
    """

    holdout: float = 0.25
    folds: int = 5
    seed: int = 0
    center: bool = True
    C: float = 1.0

    def __post_init__(self):
        if not 0 < self.holdout <= 0.5:
            raise InterpError(f"holdout {self.holdout} must be in (0, 0.5]; 0.25 holds out a quarter")
        if self.folds < 2:
            raise InterpError(f"--folds {self.folds} is too few; use 2 or more")
        if not (math.isfinite(self.C) and self.C > 0):
            raise InterpError(f"C {self.C} must be a positive number")

    @property
    def holdout_folds(self) -> int:
        """The held-out split is one of this many stratified group folds."""
        return max(2, round(1 / self.holdout))


def _groups_per_class(dataset: ProbeDataset, rows: np.ndarray) -> dict[int, int]:
    groups = dataset.groups or [str(i) for i in range(len(dataset))]
    return {c: len({groups[i] for i in rows if dataset.labels[i] == c}) for c in (0, 1)}


def holdout_split(dataset: ProbeDataset,
                  config: TrajectoryConfig = TrajectoryConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): one fold of a stratified group k-fold, so no group is on both sides.

    Needs no model, so a dataset too small for the split (or for `config.folds`-fold CV inside the
    training part) is refused before any model work."""
    from sklearn.model_selection import StratifiedGroupKFold

    dataset.require_binary()
    k = config.holdout_folds
    everything = np.arange(len(dataset))
    have = _groups_per_class(dataset, everything)
    if min(have.values()) < k:
        raise InterpError(f"dataset {dataset.name!r} has {min(have.values())} group(s) of one label; holding out "
                          f"1/{k} of them needs at least {k} per label; add rows or raise --holdout")
    groups = dataset.groups or list(range(len(dataset)))
    cv = StratifiedGroupKFold(k, shuffle=True, random_state=config.seed)
    train, test = next(cv.split(np.zeros(len(dataset)), dataset.labels, groups))
    left = _groups_per_class(dataset, train)
    if min(left.values()) < config.folds or min(_groups_per_class(dataset, test).values()) < 1:
        raise InterpError(f"dataset {dataset.name!r} leaves {min(left.values())} group(s) of one label for "
                          f"training, fewer than --folds {config.folds}; add rows or lower --folds")
    return np.sort(train), np.sort(test)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def trajectory_features(acts: torch.Tensor | np.ndarray, labels: np.ndarray, train: np.ndarray,
                        layers: Sequence[int], center: bool = True) -> pd.DataFrame:
    """The trajectory features of every statement (one row each): `align_true_l`, `align_false_l` per
    layer and `drift_l_l'` per pair of consecutive layers, from `acts` [len(layers), N, d]; class means
    (and the centre) come from the rows `train` only."""
    X = acts.double().numpy() if isinstance(acts, torch.Tensor) else np.asarray(acts, dtype=np.float64)
    if X.ndim != 3 or X.shape[0] != len(layers) or X.shape[1] != len(labels):
        raise InterpError(f"activations of shape {X.shape} do not match {len(layers)} layers x {len(labels)} rows")
    if len(layers) < 2:
        raise InterpError("a trajectory needs at least 2 layers; pass --layers all or a range like 4-12")
    y = np.asarray(labels)[train]
    centre = X[:, train].mean(axis=1, keepdims=True) if center else np.zeros((len(layers), 1, X.shape[2]))
    shifted = X - centre  # [L, N, d]
    means = {c: shifted[:, train[y == c]].mean(axis=1, keepdims=True) for c in (0, 1)}  # [L, 1, d]
    units = _unit(shifted)
    columns: dict[str, np.ndarray] = {}
    for c, name in ((1, "true"), (0, "false")):
        cosines = (units * _unit(means[c])).sum(-1)  # [L, N]
        columns.update({f"align_{name}_{layer}": cosines[i] for i, layer in enumerate(layers)})
    raw = _unit(X)
    steps = 1 - (raw[:-1] * raw[1:]).sum(-1)  # [L-1, N]
    columns.update({f"drift_{a}_{b}": steps[i] for i, (a, b) in enumerate(zip(layers[:-1], layers[1:]))})
    return pd.DataFrame(columns)


def fit_detector(features: pd.DataFrame, labels: np.ndarray, train: np.ndarray, C: float = 1.0):
    """A scikit-learn pipeline (standardise, then L2 logistic regression) fitted on the rows `train`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    detector = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    return detector.fit(features.to_numpy()[train], np.asarray(labels)[train])


def detector_scores(labels: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """F1 (of label 1, predicting 1 when the probability exceeds 0.5), AUROC and accuracy."""
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = (probability > 0.5).astype(int)
    return {"f1": float(f1_score(labels, predicted, zero_division=0.0)),
            "auroc": float(roc_auc_score(labels, probability)), "accuracy": float((predicted == labels).mean())}


@register_result
@dataclasses.dataclass
class TrajectoryResult(Result):
    """Per-statement trajectories, the detector on them and the single-layer probes, on one held-out split."""

    kind = "probe_trajectory"
    model: str
    dataset: str
    position: str
    layers: list[int]
    config: dict
    statements: pd.DataFrame  # row, text, label, split, detector, probe (best single-layer probe's P(true)), features
    layer_scores: pd.DataFrame  # probes.sweep rows: layer, method, eval ("cv" in training, "held-out"), scores
    scores: pd.DataFrame  # model ("detector" / "best single layer"), method, layer, n, f1, auroc, accuracy
    weights: pd.DataFrame  # feature, weight of the detector on the standardised feature

    def to_frame(self) -> pd.DataFrame:
        return self.statements

    def score(self, name: str) -> dict:
        """The held-out scores of "detector" or "best single layer" as a dict."""
        return self.scores.set_index("model").loc[name].to_dict()

    def summary(self) -> str:
        held = self.statements[self.statements.split == HELD_OUT]
        lines = [f"layer-wise trajectories on {self.dataset!r} ({len(self.statements)} statements, {len(held)} held "
                 f"out sharing no group with training; {self.position} token, {self.model})"]
        for row in self.scores.itertuples():
            where = "" if row.model == "detector" else f" ({row.method}, layer {row.layer})"
            lines.append(f"  {row.model + where:>38}: F1 {row.f1:.3f}  AUROC {row.auroc:.3f}  "
                         f"accuracy {row.accuracy:.3f}")
        top = self.weights.reindex(self.weights.weight.abs().sort_values(ascending=False).index).head(5)
        lines.append("largest detector weights (standardised features): "
                     + ", ".join(f"{r.feature} {r.weight:+.2f}" for r in top.itertuples()))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        held = self.statements[self.statements.split == HELD_OUT]
        fig = make_subplots(rows=2, cols=2, subplot_titles=(
            "alignment to the true mean minus to the false mean", "drift 1 - cos(h_l, h_next)",
            "held-out AUROC: single-layer probes vs the detector", "held-out ROC"))
        drifts = [c for c in held if c.startswith("drift_")]
        for label, name, colour in ((1, "true", "seagreen"), (0, "false", "crimson")):
            rows = held[held.label == label]
            margin = [rows[f"align_true_{l}"] - rows[f"align_false_{l}"] for l in self.layers]
            fig.add_trace(go.Scatter(x=self.layers, y=[float(m.mean()) for m in margin], mode="lines+markers",
                                     name=f"{name} statements", line=dict(color=colour), legendgroup=name,
                                     error_y=dict(type="data", array=[float(m.std()) for m in margin])), 1, 1)
            fig.add_trace(go.Scatter(x=[int(c.split("_")[2]) for c in drifts], y=rows[drifts].mean().tolist(),
                                     mode="lines+markers", line=dict(color=colour), legendgroup=name,
                                     showlegend=False), 1, 2)
        for method, rows in self.layer_scores[self.layer_scores["eval"] == HELD_OUT].groupby("method", sort=False):
            fig.add_trace(go.Scatter(x=rows.layer, y=rows.auroc, mode="lines+markers", name=f"{method} probe"), 2, 1)
        detector = self.score("detector")
        fig.add_hline(y=detector["auroc"], line_dash="dash", row=2, col=1,
                      annotation_text=f"detector {detector['auroc']:.3f}")
        for column, name in (("detector", "detector"), ("probe", "best single layer")):
            fpr, tpr = _roc(held.label.to_numpy(), held[column].to_numpy())
            fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} ROC"), 2, 2)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.update_xaxes(title_text="from layer", row=1, col=2)
        fig.update_xaxes(title_text="layer", row=2, col=1)
        fig.update_xaxes(title_text="false positive rate", row=2, col=2)
        fig.update_layout(title=escape_label(f"Layer-wise trajectories on {self.dataset} ({self.model})"), height=800)
        return fig


def _roc(labels: np.ndarray, scores: np.ndarray) -> tuple[list[float], list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr.tolist(), tpr.tolist()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -500, 500)))


def trajectory(acts: torch.Tensor, dataset: ProbeDataset, layers: Sequence[int],
               config: TrajectoryConfig = TrajectoryConfig(), methods: Sequence[str] = METHODS,
               model: str = "", position: str = "last", progress: bool = True) -> TrajectoryResult:
    """Trajectory features, the detector and the single-layer probes from `acts` [len(layers), N, d]."""
    methods = check_trajectory(dataset, config, methods)
    layers = list(layers)
    train, test = holdout_split(dataset, config)
    features = trajectory_features(acts, dataset.labels, train, layers, config.center)
    y = dataset.labels
    detector = fit_detector(features, y, train, config.C)
    probability = detector.predict_proba(features.to_numpy())[:, 1]
    probes = sweep(acts[:, train], dataset.subset(train), layers, methods, config.folds, config.seed,
                   {HELD_OUT: (dataset.subset(test), acts[:, test])}, model=model, position=position,
                   progress=progress)
    frame = probes.frame
    cv = frame[frame["eval"] == "cv"]
    best = cv.loc[cv["accuracy"].idxmax()]
    method, layer = str(best["method"]), int(best["layer"])
    held = frame[(frame["eval"] == HELD_OUT) & (frame.method == method) & (frame.layer == layer)].iloc[0]
    i = layers.index(layer)
    probe_prob = _sigmoid(acts[i].double().numpy() @ probes.coefs[method][i].double().numpy()
                          + float(probes.intercepts[method][i]))
    scores = pd.DataFrame([
        {"model": "detector", "method": "logistic on trajectories", "layer": None, "n": len(test),
         **detector_scores(y[test], probability[test])},
        {"model": "best single layer", "method": method, "layer": layer, "n": len(test),
         "f1": float(held["f1"]), "auroc": float(held["auroc"]), "accuracy": float(held["accuracy"])},
    ]).astype({"layer": "Int64"})
    split = np.full(len(dataset), "train", dtype=object)
    split[test] = HELD_OUT
    statements = pd.concat([pd.DataFrame({"row": np.arange(len(dataset)), "text": dataset.texts, "label": y,
                                          "split": split, "detector": probability, "probe": probe_prob}),
                            features], axis=1)
    weights = pd.DataFrame({"feature": list(features.columns), "weight": detector[-1].coef_[0]})
    return TrajectoryResult(model=model, dataset=dataset.name, position=str(position), layers=layers,
                            config=dataclasses.asdict(config), statements=statements, layer_scores=frame,
                            scores=scores, weights=weights)


def check_trajectory(dataset: ProbeDataset, config: TrajectoryConfig, methods: Sequence[str]) -> list[str]:
    """The checked methods, after checking that `dataset` allows the held-out split; needs no model."""
    holdout_split(dataset, config)
    return check_classifiers(methods, dataset, "--trajectory")


def probe_trajectory(model, dataset: ProbeDataset, layers: Sequence[int] | None = None,
                     config: TrajectoryConfig = TrajectoryConfig(), methods: Sequence[str] = METHODS,
                     position: str | int = "last", batch_size: int = 32,
                     workspace: str | Path | None = None) -> TrajectoryResult:
    """Collect every statement's hidden state at every layer in one pass (cached in `workspace`), then
    `trajectory`. The split and methods are checked before the model runs."""
    from probes.collect import cached_activations

    check_trajectory(dataset, config, methods)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if len(layers) < 2:
        raise InterpError("a trajectory needs at least 2 layers; pass --layers all or a range like 4-12")
    acts = cached_activations(model, dataset.texts, layers, position, dataset.marks, batch_size, workspace)
    return trajectory(acts, dataset, layers, config, methods, model=getattr(model.cfg, "spec", model.cfg.model_name),
                      position=str(position))

"""Layer sweeps: cross-validated probes at every layer, scored with confidence intervals, and the
same probes (fit on all training rows) tested on other datasets, e.g. cities -> neg_cities.

Folds keep each `group` together (a city's true and false statement land in the same fold), so a
probe cannot score by remembering the subject. The best layer is chosen on these cross-validated
scores, so its score is slightly optimistic; generalisation scores on another dataset are not.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from interp.errors import InterpError
from interp.results import Result, register_result
from probes.datasets import ProbeDataset
from probes.estimators import LinearProbe, make_probe
from probes.stats import classification_scores, regression_scores

CLASSIFIERS = ("logistic", "mass-mean", "mass-mean-iid")


@register_result
@dataclasses.dataclass
class ProbeSweepResult(Result):
    kind = "probe"
    model: str
    dataset: str
    position: str
    layers: list[int]
    methods: list[str]
    folds: int
    n: int
    frame: pd.DataFrame  # one row per (layer, method, eval); eval "cv" or a test dataset's name
    coefs: dict[str, torch.Tensor]  # method -> [len(layers), d_model], fit on every training row
    intercepts: dict[str, torch.Tensor]  # method -> [len(layers)]
    mean_gaps: dict[str, torch.Tensor]  # method -> [len(layers)] class-mean gap along the direction

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    @staticmethod
    def metric(method: str) -> str:
        return "r2" if method == "ridge" else "accuracy"

    def best_layer(self, method: str, eval: str = "cv") -> int:
        """The layer with the highest score (accuracy, or R^2 for ridge) under `eval`."""
        rows = self.frame[(self.frame.method == method) & (self.frame["eval"] == eval)]
        if rows.empty:
            raise InterpError(f"no {eval!r} scores for method {method!r}; it was not in this sweep")
        return int(rows.loc[rows[self.metric(method)].idxmax(), "layer"])

    def direction(self, method: str, layer: int) -> torch.Tensor:
        """The unit probe direction of `method` at `layer`."""
        coef = self.coefs[method][self.layers.index(layer)]
        return coef / coef.norm()

    def steering_vector(self, method: str, layer: int) -> torch.Tensor:
        """The unit direction times the class-mean gap along it (Marks & Tegmark's intervention size)."""
        return self.direction(method, layer) * self.mean_gaps[method][self.layers.index(layer)]

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        binary = [m for m in self.methods if m != "ridge"]
        titles = ("accuracy", "AUROC") if binary else ("R^2", "Pearson r")
        fig = make_subplots(rows=1, cols=2, subplot_titles=titles)
        for (method, ev), rows in self.frame.groupby(["method", "eval"], sort=False):
            pairs = (("accuracy", "auroc") if method != "ridge" else ("r2", "pearson"))
            for col, metric in enumerate(pairs, start=1):
                lo, hi = f"{metric}_lo", f"{metric}_hi"
                error = dict(type="data", symmetric=False, array=(rows[hi] - rows[metric]).tolist(),
                             arrayminus=(rows[metric] - rows[lo]).tolist()) if lo in rows else None
                fig.add_trace(go.Scatter(
                    x=rows.layer, y=rows[metric], error_y=error, mode="lines+markers", name=f"{method} ({ev})",
                    legendgroup=f"{method}-{ev}", showlegend=col == 1,
                    line=dict(dash="solid" if ev == "cv" else "dash")), 1, col)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=escape_label(f"Probes on {self.dataset} ({self.position} token), {self.model}"),
                          height=450)
        return fig

    def summary(self) -> str:
        lines = [f"probes on {self.dataset!r} ({self.n} rows, {self.folds}-fold grouped CV, {self.position} token, "
                 f"{self.model})"]
        for method in self.methods:
            best = self.best_layer(method)
            rows = self.frame[(self.frame.method == method) & (self.frame.layer == best)]
            for row in rows.itertuples():
                where = "held-out (CV)" if row.eval == "cv" else f"on {row.eval}"
                if method == "ridge":
                    score = f"R^2 {row.r2:.3f}, r {row.pearson:.3f} [{row.pearson_lo:.3f}, {row.pearson_hi:.3f}]"
                else:
                    score = (f"accuracy {row.accuracy:.3f} [{row.accuracy_lo:.3f}, {row.accuracy_hi:.3f}], "
                             f"AUROC {row.auroc:.3f} [{row.auroc_lo:.3f}, {row.auroc_hi:.3f}]")
                lines.append(f"  {method:>13} best layer {best:>2} {where}: {score}")
        metric_cols = ["accuracy", "auroc"] if any(m != "ridge" for m in self.methods) else ["r2", "pearson"]
        table = self.frame.pivot_table(index="layer", columns=["method", "eval"], values=metric_cols[0])
        lines += [f"{metric_cols[0]} per layer:", table.round(3).to_string()]
        return "\n".join(lines)


def cv_splits(dataset: ProbeDataset, folds: int, seed: int):
    """The (train, test) index pairs of `folds`-fold cross-validation: stratified when binary, whole groups kept on
    one side when the dataset has groups; raises the one-line error when a class has fewer groups than folds."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    groups = dataset.groups or list(range(len(dataset)))
    if folds < 2:
        raise InterpError(f"--folds {folds} is too few; use 2 or more")
    if dataset.binary:
        smallest = min(len({g for g, y in zip(groups, dataset.labels) if y == c}) for c in (0, 1))
        if smallest < folds:
            raise InterpError(f"dataset {dataset.name!r} has only {smallest} group(s) of one class, fewer than "
                              f"{folds} folds; add rows or lower --folds")
        cv = (StratifiedGroupKFold if dataset.groups else StratifiedKFold)(folds, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(len(dataset)), dataset.labels, groups))
    if len(set(groups)) < folds:
        raise InterpError(f"dataset {dataset.name!r} has fewer than {folds} groups; add rows or lower --folds")
    cv = GroupKFold(folds) if dataset.groups else KFold(folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(dataset)), dataset.labels, groups))


def _scores(method: str, decision: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return regression_scores(decision, labels) if method == "ridge" else classification_scores(decision, labels)


def _evaluate(method: str, X: np.ndarray, y: np.ndarray, splits: list,
              tests: dict[str, tuple[ProbeDataset, np.ndarray]]) -> tuple[list[dict], LinearProbe]:
    """Scores of `method` on one layer: pooled out-of-fold ("cv"), then the probe fit on every row and its
    scores on each test set; returns the score rows and that probe."""
    decision = np.zeros(len(y))
    fold_scores = []
    for train, held in splits:
        probe = make_probe(method).fit(X[train], y[train])
        decision[held] = probe.decision_function(X[held])
        fold_scores.append(probe.score(X[held], y[held]))
    rows = [{"eval": "cv", "n": len(y), **_scores(method, decision, y), "fold_std": float(np.std(fold_scores))}]
    full = make_probe(method).fit(X, y)
    rows += [{"eval": name, "n": len(test), **_scores(method, full.decision_function(test_X), test.labels)}
             for name, (test, test_X) in tests.items()]
    return rows, full


def check_methods(methods: Sequence[str], dataset: ProbeDataset) -> list[str]:
    """Validated method names; classifiers need two classes, ridge needs continuous or 0/1 labels."""
    methods = list(dict.fromkeys(methods))
    for method in methods:
        make_probe(method)
    if any(m in CLASSIFIERS for m in methods):
        dataset.require_binary()
    return methods


def check_classifiers(methods: Sequence[str], dataset: ProbeDataset, analysis: str) -> list[str]:
    """`check_methods` for an analysis that needs classifiers (named in the error), so no ridge."""
    methods = check_methods(methods, dataset)
    if "ridge" in methods:
        raise InterpError(f"{analysis} needs classifiers; pick --method from {', '.join(CLASSIFIERS)}")
    return methods


def sweep(acts: torch.Tensor, dataset: ProbeDataset, layers: Sequence[int], methods: Sequence[str],
          folds: int = 5, seed: int = 0, tests: dict[str, tuple[ProbeDataset, torch.Tensor]] | None = None,
          model: str = "", position: str = "last", progress: bool = True) -> ProbeSweepResult:
    """Cross-validate every method at every layer of `acts` [len(layers), N, d]; test on `tests`."""
    from tqdm.auto import tqdm

    methods = check_methods(methods, dataset)
    if acts.shape[:2] != (len(layers), len(dataset)):
        raise InterpError(f"activations of shape {tuple(acts.shape)} do not match {len(layers)} layers x "
                          f"{len(dataset)} rows; collect them for this dataset")
    splits = cv_splits(dataset, folds, seed)
    tests = tests or {}
    for test, _ in tests.values():
        if not test.binary and any(m in CLASSIFIERS for m in methods):
            raise InterpError(f"test dataset {test.name!r} has continuous labels; classifiers need 0/1 labels")
    y = dataset.labels
    rows: list[dict] = []
    coefs = {m: torch.zeros(len(layers), acts.shape[-1]) for m in methods}
    intercepts = {m: torch.zeros(len(layers)) for m in methods}
    gaps = {m: torch.zeros(len(layers)) for m in methods if m != "ridge"}
    with threadpool_limits(torch.get_num_threads()):  # numpy's BLAS honours the torch thread setting
        for i, layer in enumerate(tqdm(layers, desc="probes", unit="layer", file=sys.stderr, disable=not progress)):
            X = acts[i].double().numpy()
            layer_tests = {name: (test, test_acts[i].double().numpy()) for name, (test, test_acts) in tests.items()}
            for method in methods:
                scored, full = _evaluate(method, X, y, splits, layer_tests)
                rows += [{"layer": layer, "method": method, **row} for row in scored]
                coefs[method][i] = torch.from_numpy(full.coef_).float()
                intercepts[method][i] = full.intercept_
                if method in gaps:
                    gaps[method][i] = full.mean_gap_
    return ProbeSweepResult(model=model, dataset=dataset.name, position=str(position), layers=list(layers),
                            methods=methods, folds=folds, n=len(dataset), frame=pd.DataFrame(rows), coefs=coefs,
                            intercepts=intercepts, mean_gaps=gaps)


def probe_layers(model, dataset: ProbeDataset, layers: Sequence[int] | None = None,
                 methods: Sequence[str] = ("logistic", "mass-mean"), position: str | int = "last",
                 folds: int = 5, tests: Sequence[ProbeDataset] = (), batch_size: int = 32,
                 workspace: str | Path | None = None, seed: int = 0) -> ProbeSweepResult:
    """Collect activations (cached in `workspace`) for `dataset` and each test set, then `sweep`."""
    from probes.collect import cached_activations

    methods = check_methods(methods, dataset)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)

    def acts_of(data: ProbeDataset) -> torch.Tensor:
        return cached_activations(model, data.texts, layers, position, data.marks, batch_size, workspace)

    test_acts = {t.name: (t, acts_of(t)) for t in tests}
    return sweep(acts_of(dataset), dataset, layers, methods, folds, seed, test_acts,
                 model=getattr(model.cfg, "spec", model.cfg.model_name), position=str(position))

"""The course of massive activations over training, fitted per layer with the curve of Gallego-Feliciano
et al. ("Hidden Dynamics of Massive Activations in Transformer Training"):

    f(t) = A * exp(-lam * x) * log(x) + K,   x = gamma * t + t0

for the largest |h| of a layer (`quantity="top"`, the default) or its ratio to the layer's median
|h| (`quantity="ratio"`, the quantity the paper fits) against the training step t. A is the
amplitude, lam the decay rate (0: a pure logarithmic climb; larger: an early peak, then decay to K),
gamma the time scale, t0 the offset, K the level the curve settles at. The peak, where the curve has one (A > 0, lam > 0), lies at
t = (exp(W(1/lam)) - t0) / gamma (W: Lambert's W).

Fitting follows the paper: steps and values scaled to [0, 1], scipy's trust-region-reflective
`curve_fit` with bounds (lam >= 0, gamma and t0 > 0 so that log(x) exists), the paper's starting
point (A = the range, K = the middle, lam = 1/std(t), gamma = 1/range(t), t0 = 1) plus seeded random
restarts; the best fit by squared error wins. A fit that cannot be made is reported with its reason
and no numbers, never NaN.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd

from interp.errors import InterpError
from interp.results import Result, register_result

PARAMS = ("A", "lam", "gamma", "t0", "K")
LOWER = np.array([-1e3, 0.0, 1e-3, 1e-3, -1e3])  # in the scaled space (steps and values in [0, 1])
UPPER = np.array([1e3, 1e2, 1e3, 1e2, 1e3])
QUANTITIES = ("top", "ratio")


def curve(t, A, lam, gamma, t0, K):
    """The paper's exponentially decaying, log-modulated curve at steps `t` (array or float)."""
    x = gamma * np.asarray(t, dtype=float) + t0
    return A * np.exp(-lam * x) * np.log(x) + K


def r_squared(y: np.ndarray, fitted: np.ndarray) -> float:
    """Coefficient of determination 1 - SSE / SST."""
    return float(1.0 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def peak_step(A: float, lam: float, gamma: float, t0: float) -> float | None:
    """The step of the curve's maximum (its only turning point, a maximum when A > 0), or None when it
    has none after step 0 (lam = 0: a pure logarithm; A <= 0: the turning point is a minimum)."""
    if lam <= 0 or A <= 0:
        return None
    from scipy.special import lambertw

    step = float((math.exp(float(lambertw(1.0 / lam).real)) - t0) / gamma)
    return step if step > 0 else None


def _starts(tn: np.ndarray, restarts: int, seed: int) -> list[np.ndarray]:
    """The paper's starting point, then `restarts` seeded random ones, all inside the bounds."""
    first = np.array([1.0, 1.0 / max(float(tn.std()), 1e-6), 1.0 / max(float(np.ptp(tn)), 1e-6), 1.0, 0.5])
    rng = np.random.default_rng(seed)
    starts = [first]
    for _ in range(restarts):
        starts.append(np.array([rng.uniform(-2, 2), 10 ** rng.uniform(-2, 1.5), 10 ** rng.uniform(-1, 2.5),
                                10 ** rng.uniform(-2, 1), rng.uniform(-1, 2)]))
    return [np.clip(s, LOWER + 1e-9, UPPER - 1e-9) for s in starts]


def fit_curve(steps, values, *, restarts: int = 8, seed: int = 0) -> dict:
    """Fit `curve` to (steps, values): {"status": "ok" or why not, "n_points", the five parameters in
    the original units, "r2", "peak_step"}; numbers are None when there is no fit."""
    from scipy.optimize import OptimizeWarning, curve_fit

    t, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    out = {"status": "ok", "n_points": int(len(t)), **{p: None for p in PARAMS}, "r2": None, "peak_step": None}
    if len(t) <= len(PARAMS):
        return {**out, "status": f"too few checkpoints ({len(t)}; the curve has 5 parameters)"}
    if t.min() < 0 or t.max() <= 0:
        return {**out, "status": "training steps must be >= 0 and not all 0"}
    low, span = float(y.min()), float(np.ptp(y))
    if span == 0:
        return {**out, "status": "constant values (nothing to fit)"}
    tn, yn = t / t.max(), (y - low) / span
    best, best_sse = None, math.inf
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", OptimizeWarning)
        for start in _starts(tn, restarts, seed):
            try:
                params, _ = curve_fit(curve, tn, yn, p0=start, bounds=(LOWER, UPPER), method="trf", maxfev=4000)
            except (RuntimeError, ValueError):
                continue
            sse = float(((curve(tn, *params) - yn) ** 2).sum())
            if math.isfinite(sse) and sse < best_sse:
                best, best_sse = params, sse
    if best is None:
        return {**out, "status": "the fit did not converge from any start"}
    A, lam, gamma, t0, K = (float(v) for v in best)
    params = {"A": A * span, "lam": lam, "gamma": gamma / float(t.max()), "t0": t0, "K": K * span + low}
    r2 = r_squared(y, curve(t, *params.values()))
    if not all(math.isfinite(v) for v in [*params.values(), r2]):
        return {**out, "status": "the fit gave non-finite numbers"}
    return {**out, **params, "r2": r2, "peak_step": peak_step(params["A"], params["lam"], params["gamma"], params["t0"])}


@register_result
@dataclasses.dataclass
class DynamicsResult(Result):
    """Per layer: the paper's curve fitted to a massive-activation statistic over training steps."""

    kind = "massive_dynamics"
    source: str
    quantity: str  # "top" (largest |h|) or "ratio" (largest |h| / median |h|, the paper's)
    data: pd.DataFrame  # layer, step, value
    fits: pd.DataFrame  # layer, status, n_points, A, lam, gamma, t0, K, r2, peak_step

    def to_frame(self) -> pd.DataFrame:
        return self.fits

    def summary(self) -> str:
        ok = self.fits[self.fits["status"] == "ok"]
        last = self.data["step"].max()
        lines = [f"massive-activation dynamics ({self.source}): f(t) = A exp(-lam x) log(x) + K, x = gamma t + t0, "
                 f"fitted per layer to the {'top/median ratio' if self.quantity == 'ratio' else 'largest |h|'} over "
                 f"{self.data['step'].nunique()} checkpoints (steps {self.data['step'].min():g}-{last:g})"]
        if len(ok):
            peaked = ok["peak_step"].notna() & (ok["peak_step"] <= last)
            lines.append(f"{len(ok)} of {len(self.fits)} layers fitted; R^2 mean {ok['r2'].mean():.3f}, min "
                         f"{ok['r2'].min():.3f} (the paper: 0.984 on average over Pythia's layers); {int(peaked.sum())} "
                         f"layers peak inside training, then decay (the paper's early peak), {int((~peaked).sum())} "
                         "have no peak inside training")
        failed = self.fits[self.fits["status"] != "ok"]
        for row in failed.itertuples():
            lines.append(f"layer {row.layer}: no fit: {row.status}")
        lines.append(self.fits.drop(columns="status").to_string(index=False, float_format="{:.4g}".format,
                                                                 na_rep="-"))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        layers = self.fits["layer"].tolist()
        cols = min(4, max(1, len(layers)))
        rows = -(-len(layers) // cols)
        titles = [f"layer {l}" + (f", R² {r:.3f}" if s == "ok" else ", no fit")
                  for l, r, s in zip(layers, self.fits["r2"], self.fits["status"])]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_xaxes=True)
        steps = self.data["step"]
        grid = np.linspace(float(steps.min()), float(steps.max()), 200)
        for i, fit in enumerate(self.fits.itertuples()):
            row, col = i // cols + 1, i % cols + 1
            points = self.data[self.data["layer"] == fit.layer]
            fig.add_trace(go.Scatter(x=points["step"], y=points["value"], mode="markers", name="measured",
                                     marker=dict(color="#1f77b4", size=5), showlegend=i == 0), row, col)
            if fit.status == "ok":
                fitted = curve(grid, fit.A, fit.lam, fit.gamma, fit.t0, fit.K)
                fig.add_trace(go.Scatter(x=grid, y=fitted, mode="lines", name="fitted curve",
                                         line=dict(color="#d62728"), showlegend=i == 0), row, col)
        what = "largest |h| / median |h|" if self.quantity == "ratio" else "largest |h|"
        fig.update_layout(title=escape_label(f"Massive activations over training: {what} per layer ({self.source})"),
                          height=max(400, 260 * rows))
        return fig


def massive_dynamics(checkpoints, quantity: str = "top", *, restarts: int = 8, seed: int = 0) -> DynamicsResult:
    """Fit the paper's curve per layer to `checkpoints` (a `CheckpointResult`, whose per-layer table
    holds each checkpoint's largest |h| and its ratio to the median) against the training step."""
    if quantity not in QUANTITIES:
        raise InterpError(f"unknown quantity {quantity!r}; use 'top' (largest |h|) or 'ratio' (largest/median)")
    if restarts < 0:
        raise InterpError(f"restarts must be >= 0, got {restarts}")
    layers = checkpoints.layers
    data = pd.DataFrame({"layer": layers["layer"], "step": layers["step"], "value": layers[quantity]})
    fits = []
    for layer, group in data.groupby("layer"):
        if group["step"].isna().any():
            fit = fit_curve([], [])
            fit["status"] = "training steps unknown (give a folder of checkpoints with training.json or step-N names)"
        else:
            fit = fit_curve(group["step"], group["value"], restarts=restarts, seed=seed)
        fits.append({"layer": int(layer), **fit})
    columns = ["layer", "status", "n_points", *PARAMS, "r2", "peak_step"]
    return DynamicsResult(source=checkpoints.source, quantity=quantity,
                          data=data.dropna(subset=["step"]).reset_index(drop=True),
                          fits=pd.DataFrame(fits, columns=columns).astype({p: float for p in [*PARAMS, "r2", "peak_step"]}))

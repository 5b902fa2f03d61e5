"""Massive-activation dynamics: the paper's curve, its fit (recovers known parameters, R^2 as 1 - SSE/SST,
failures reported without NaN), and the fit over a folder of checkpoints trained by the small trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from interp.errors import InterpError
from interp.outliers.checkpoints import CheckpointResult
from interp.outliers.dynamics import curve, fit_curve, massive_dynamics, peak_step
from interp.results import Result

STEPS = np.arange(0, 3001, 100.0)


def test_curve_is_the_papers_formula():
    A, lam, gamma, t0, K = 3.0, 0.5, 0.01, 2.0, 1.0
    for t in (0.0, 10.0, 500.0):
        x = gamma * t + t0
        assert curve(t, A, lam, gamma, t0, K) == pytest.approx(A * math.exp(-lam * x) * math.log(x) + K)


def test_peak_step_is_where_the_slope_vanishes():
    lam, gamma, t0 = 0.8, 0.002, 0.5
    step = peak_step(1.0, lam, gamma, t0)
    values = curve(np.array([step - 1, step, step + 1]), 1.0, lam, gamma, t0, 0.0)
    assert values[1] > values[0] and values[1] > values[2]
    assert peak_step(1.0, 0.0, gamma, t0) is None  # a pure logarithm never turns
    assert peak_step(1.0, 0.8, gamma, 10.0) is None  # the turn lies before step 0
    assert peak_step(-1.0, lam, gamma, t0) is None  # there it is a minimum


@pytest.mark.parametrize("truth", [(50.0, 0.8, 0.002, 0.5, 20.0), (-4.0, 0.05, 0.01, 1.5, 100.0)])
def test_fit_recovers_known_parameters(truth):
    fit = fit_curve(STEPS, curve(STEPS, *truth))
    assert fit["status"] == "ok" and fit["r2"] > 0.9999
    fitted = curve(STEPS, *(fit[p] for p in ("A", "lam", "gamma", "t0", "K")))
    np.testing.assert_allclose(fitted, curve(STEPS, *truth), rtol=1e-4, atol=1e-4 * abs(truth[0]))


def test_r2_is_one_minus_sse_over_sst():
    rng = np.random.default_rng(1)
    y = 30 * np.log1p(STEPS / 200) + rng.normal(0, 2, len(STEPS))
    fit = fit_curve(STEPS, y)
    fitted = curve(STEPS, fit["A"], fit["lam"], fit["gamma"], fit["t0"], fit["K"])
    assert fit["r2"] == pytest.approx(1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert 0.95 < fit["r2"] < 1
    assert fit_curve(STEPS, y, seed=3)["r2"] == pytest.approx(fit["r2"], abs=1e-3)  # restarts agree


@pytest.mark.parametrize("steps, values, why", [
    (STEPS[:5], STEPS[:5] ** 0.5, "too few checkpoints"),
    (STEPS, np.full(len(STEPS), 7.0), "constant"),
    (np.zeros(8), np.arange(8.0), "steps"),
])
def test_fits_that_cannot_be_made_say_why_and_hold_no_numbers(steps, values, why):
    fit = fit_curve(steps, values)
    assert why in fit["status"]
    assert all(fit[k] is None for k in ("A", "lam", "gamma", "t0", "K", "r2", "peak_step"))


def synthetic_checkpoints(steps, per_layer) -> CheckpointResult:
    rows = [{"checkpoint": f"step-{s}", "step": s, "layer": l, "top": 10 * v, "median": 0.1, "ratio": v}
            for l, values in enumerate(per_layer) for s, v in zip(steps, values)]
    return CheckpointResult(source="synthetic", n_tokens=64, ratio_threshold=1000, sink_threshold=0.3,
                            checkpoints=pd.DataFrame({"checkpoint": [f"step-{s}" for s in steps], "step": steps}),
                            layers=pd.DataFrame(rows))


def test_massive_dynamics_fits_each_layer_and_saves_without_nan(tmp_path):
    truth = curve(STEPS, 50.0, 0.8, 0.002, 0.5, 20.0)
    result = massive_dynamics(synthetic_checkpoints(STEPS, [truth, np.full(len(STEPS), 3.0)]), quantity="ratio")
    fits = result.to_frame().set_index("layer")
    assert fits.loc[0, "status"] == "ok" and fits.loc[0, "r2"] > 0.9999
    assert fits.loc[0, "peak_step"] == pytest.approx(peak_step(50.0, 0.8, 0.002, 0.5), rel=1e-3)
    assert "constant" in fits.loc[1, "status"]
    json.dumps(result.to_dict(), allow_nan=False)
    assert "layer 1: no fit" in result.summary() and len(result.figure().data) == 3
    back = Result.read(result.save(tmp_path))
    assert back.to_frame()["status"].tolist() == result.to_frame()["status"].tolist()
    top = massive_dynamics(synthetic_checkpoints(STEPS, [truth, truth]))  # the largest |h|, by default
    assert top.quantity == "top" and top.data["value"].max() == pytest.approx(10 * truth.max())
    with pytest.raises(InterpError, match="unknown quantity"):
        massive_dynamics(synthetic_checkpoints(STEPS, [truth]), quantity="mean")


def test_unknown_steps_are_reported_not_fitted():
    result = massive_dynamics(synthetic_checkpoints([None] * 8, [np.arange(8.0)]))
    assert result.to_frame()["status"].str.contains("training steps unknown").all()


def test_trained_checkpoints_and_cli(tmp_path, capsys):
    from interp.cli import main
    from interp.outliers.checkpoints import TrainConfig, train_checkpoints

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(100)))
    cfg = TrainConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, seq_len=32, batch_size=2,
                      lr=1e-2, warmup=1)
    train_checkpoints(tmp_path / "ckpt", steps=6, save_every=1, corpus=str(corpus), config=cfg)
    assert main(["outliers", "--checkpoints", str(tmp_path / "ckpt"), "--corpus", str(corpus), "--tokens", "64",
                 "--seq-len", "32", "--batch-size", "2", "--ppl-tokens", "0", "--fit", "ratio", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    kinds = [r["kind"] for r in payload["results"]]
    assert kinds == ["outlier_checkpoints", "massive_dynamics"]
    fits = payload["results"][1]["fits"]
    assert [f["layer"] for f in fits] == [0, 1, 2] and all(f["n_points"] == 7 for f in fits)
    assert payload["results"][1]["quantity"] == "ratio"
    (tmp_path / "empty").mkdir()
    assert main(["outliers", "--checkpoints", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint folders" in err[0]

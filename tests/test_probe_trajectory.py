"""Layer-wise trajectories (`interp probe --trajectory`) and probes across checkpoints (`--checkpoints`):
features against a plain loop, the detector's metrics against scikit-learn's, the held-out split,
checkpoints against a direct sweep of each one, and bad input refused before any model loads."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from interp.cli import main
from interp.errors import InterpError
from interp.results import Result
from probes.datasets import ProbeDataset, load_dataset
from probes.trajectory import (
    HELD_OUT,
    TrajectoryConfig,
    fit_detector,
    holdout_split,
    probe_trajectory,
    trajectory,
    trajectory_features,
)

M = ["--model", "tiny-llama"]


def synthetic(n_groups: int = 40, layers: int = 4, d: int = 16, signal: float = 0.6, seed: int = 0):
    """A dataset of `n_groups` groups (a true and a false row each) and activations [layers, N, d] whose
    class difference grows with depth, on a shared offset (as a residual stream has)."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_groups)
    groups = [f"g{i // 2}" for i in range(2 * n_groups)]
    direction = rng.normal(size=d)
    acts = rng.normal(size=(layers, len(labels), d)) + 5.0
    acts += np.arange(1, layers + 1)[:, None, None] * signal * (labels[None, :, None] - 0.5) * direction
    data = ProbeDataset("synthetic", [f"row {i}" for i in range(len(labels))], labels, groups)
    return data, torch.tensor(acts, dtype=torch.float32)


def loop_features(acts: np.ndarray, labels: np.ndarray, train: np.ndarray, center: bool) -> dict[str, np.ndarray]:
    """The trajectory features one statement and one layer at a time."""
    L, N, _ = acts.shape
    cos = lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    out = {}
    for c, name in ((1, "true"), (0, "false")):
        for l in range(L):
            centre = np.mean([acts[l, i] for i in train], axis=0) if center else 0.0
            mean = np.mean([acts[l, i] - centre for i in train if labels[i] == c], axis=0)
            out[f"align_{name}_{l}"] = np.array([cos(acts[l, n] - centre, mean) for n in range(N)])
    for l in range(L - 1):
        out[f"drift_{l}_{l + 1}"] = np.array([1 - cos(acts[l, n], acts[l + 1, n]) for n in range(N)])
    return out


@pytest.mark.parametrize("center", [True, False])
def test_features_match_a_plain_loop(center):
    data, acts = synthetic()
    train, _ = holdout_split(data)
    got = trajectory_features(acts, data.labels, train, [0, 1, 2, 3], center)
    want = loop_features(acts.double().numpy(), data.labels, train, center)
    assert list(got.columns) == list(want)
    for name, values in want.items():
        np.testing.assert_allclose(got[name].to_numpy(), values, rtol=1e-10, atol=1e-12, err_msg=name)


def test_class_means_come_from_the_training_split_only():
    data, acts = synthetic()
    train, test = holdout_split(data)
    changed = acts.clone()
    changed[:, torch.as_tensor(test)] += torch.randn(len(test), acts.shape[-1]) * 50
    before = trajectory_features(acts, data.labels, train, [0, 1, 2, 3])
    after = trajectory_features(changed, data.labels, train, [0, 1, 2, 3])
    pd.testing.assert_frame_equal(before.iloc[train], after.iloc[train])
    assert not np.allclose(before.iloc[test].to_numpy(), after.iloc[test].to_numpy())


def test_held_out_split_shares_no_group_and_keeps_both_labels():
    data = load_dataset("cities")
    train, test = holdout_split(data, TrajectoryConfig(holdout=0.25, seed=3))
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(data)
    assert {data.groups[i] for i in train}.isdisjoint({data.groups[i] for i in test})
    assert 0.15 < len(test) / len(data) < 0.35 and set(data.labels[test]) == {0, 1}
    again, _ = holdout_split(data, TrajectoryConfig(holdout=0.25, seed=3))
    assert np.array_equal(train, again)


def test_detector_metrics_and_fit_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    data, acts = synthetic(signal=0.15)
    result = trajectory(acts, data, [0, 1, 2, 3], TrajectoryConfig(folds=3), progress=False)
    s = result.statements
    train, test = (s.split != HELD_OUT).to_numpy(), (s.split == HELD_OUT).to_numpy()
    assert set(s.row[test]) == set(holdout_split(data, TrajectoryConfig(folds=3))[1])
    features = s[[c for c in s if c.startswith(("align_", "drift_"))]]
    refit = fit_detector(features, s.label.to_numpy(), np.flatnonzero(train))  # the training rows alone
    np.testing.assert_allclose(refit.predict_proba(features.to_numpy())[:, 1], s.detector, rtol=1e-9)
    detector = result.score("detector")
    y, p = s.label[test].to_numpy(), s.detector[test].to_numpy()
    assert detector["f1"] == pytest.approx(f1_score(y, p > 0.5))
    assert detector["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert detector["accuracy"] == pytest.approx(((p > 0.5) == y).mean())
    assert 0.5 < detector["auroc"] < 1  # a signal, but not a trivial one
    probe = result.score("best single layer")
    q = s.probe[test].to_numpy()
    assert probe["auroc"] == pytest.approx(roc_auc_score(y, q), abs=1e-6)
    assert probe["f1"] == pytest.approx(f1_score(y, q > 0.5))
    cv = result.layer_scores[result.layer_scores["eval"] == "cv"]
    assert cv.loc[cv.accuracy.idxmax(), "layer"] == probe["layer"]  # chosen inside the training split


def test_probe_trajectory_on_a_tiny_model_saves_and_reloads(tiny_llama, tmp_path):
    data = load_dataset("larger_than").subset(range(80))
    result = probe_trajectory(tiny_llama, data, config=TrajectoryConfig(folds=3), methods=["mass-mean"])
    assert result.layers == [0, 1, 2] and len(result.statements) == 80
    loaded = Result.read(result.save(tmp_path, "t"))
    pd.testing.assert_frame_equal(loaded.scores, result.scores)
    assert loaded.figure().data and "detector" in loaded.summary()


def test_too_few_layers_or_groups_are_refused():
    data, acts = synthetic(n_groups=6)
    with pytest.raises(InterpError, match="at least 2 layers"):
        trajectory_features(acts[:1], data.labels, np.arange(8), [0])
    with pytest.raises(InterpError, match="--folds"):
        holdout_split(data, TrajectoryConfig(folds=5))
    with pytest.raises(InterpError, match="--holdout"):
        holdout_split(data.subset(range(4)), TrajectoryConfig(folds=2))


# -- checkpoints ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """Three checkpoint folders (steps 0, 1, 2) of a tiny Llama trained on the built-in corpus."""
    from interp.outliers.checkpoints import TrainConfig, train_checkpoints

    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, seq_len=32, batch_size=2)
    train_checkpoints(out, steps=2, save_every=1, config=cfg)
    return out


def test_checkpoints_match_a_sweep_of_each_checkpoint(checkpoint_dir):
    from interp.models import load_model
    from probes.checkpoints import probe_checkpoints
    from probes.sweep import probe_layers

    data = load_dataset("sentiment").subset(range(0, 400, 10))
    result = probe_checkpoints(checkpoint_dir, data, methods=["logistic", "mass-mean"], folds=3, progress=False)
    best = result.to_frame()
    assert best.step.tolist() == [0, 0, 1, 1, 2, 2] and best.loss.isna().tolist() == [True, True] + [False] * 4
    for step in (0, 2):
        folder = checkpoint_dir / f"step-{step:06d}"
        direct = probe_layers(load_model(str(folder)), data, None, ["logistic", "mass-mean"], folds=3).frame
        mine = result.layers[result.layers.step == step]
        np.testing.assert_allclose(mine.accuracy.to_numpy(), direct[direct["eval"] == "cv"].accuracy.to_numpy())
        row = best[(best.step == step) & (best.method == "logistic")].iloc[0]
        assert row.accuracy == mine[mine.method == "logistic"].accuracy.max()
    assert result.figure().data and "step-000002" in result.summary()


# -- the command line -----------------------------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")
    monkeypatch.setattr(importlib.import_module("interp.models"), "load_model", refuse)


def one_line_exit_2(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and out == "", err
    return lines[0]


@pytest.mark.parametrize("extra, words", [
    (["--trajectory", "--checkpoints", "x"], "one at a time"),
    (["--trajectory", "--steer"], "drop --steer"),
    (["--trajectory", "--test", "neg_cities"], "drop --test"),
    (["--holdout", "0.2"], "--trajectory only"),
    (["--trajectory", "--holdout", "0.9"], "--holdout"),
    (["--trajectory", "--method", "ridge"], "classifiers"),
    (["--checkpoints", "{empty}"], "no checkpoint folders"),
    (["--checkpoints", "{empty}/missing"], "not a folder"),
])
def test_bad_combinations_are_one_line_before_the_model(capsys, no_model, tmp_path, extra, words):
    (tmp_path / "empty").mkdir()
    argv = ["probe", "--dataset", "cities", *M, *[a.format(empty=tmp_path / "empty") for a in extra]]
    assert words in one_line_exit_2(capsys, argv)


def test_a_dataset_too_small_to_hold_out_is_refused_before_the_model(capsys, no_model, tmp_path):
    small = tmp_path / "small.csv"
    small.write_text("text,label\n" + "".join(f"Statement {i}.,{i % 2}\n" for i in range(10)))
    assert "--folds" in one_line_exit_2(capsys, ["probe", "--dataset", str(small), *M, "--trajectory"])
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("text,label\nA.,1\nB.,0\nC.,1\n")
    assert "--holdout" in one_line_exit_2(capsys, ["probe", "--dataset", str(tiny), *M, "--trajectory"])


@pytest.mark.real
def test_default_model_trajectories_separate_true_from_false(smollm):
    data = load_dataset("cities").subset(range(0, 428, 3))  # about 140 statements, all groups' labels mixed
    result = probe_trajectory(smollm, data, config=TrajectoryConfig(folds=3), methods=["mass-mean"])
    assert result.score("detector")["auroc"] > 0.8 and result.score("best single layer")["auroc"] > 0.8

"""Probes: datasets, activation collection, estimators, layer sweeps, steering and the CLI.

Mechanics run on synthetic activations and on a tiny model with a planted direction: the embeddings
of "X" and "Y" get +c u and -c u, so every residual stream after them carries the label along u.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InterpError
from probes.collect import cached_activations, collect_activations
from probes.datasets import BUILTIN, ProbeDataset, from_frame, load_dataset
from probes.estimators import LogisticProbe, MassMeanProbe, RidgeProbe, make_probe
from probes.generate import BUILDERS
from probes.stats import auroc, wilson
from probes.steering import add_hook, answer_margins, steer
from probes.sweep import ProbeSweepResult, sweep


def cos(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b))


# -- datasets --------------------------------------------------------------------------------------
def test_every_generated_dataset_is_built_in():
    assert set(BUILTIN) == set(BUILDERS)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_datasets_are_balanced_and_regenerate_identically(name):
    data = load_dataset(name)
    assert len(data) >= 300 and (data.labels.mean() == 0.5 if name != "numbers" else not data.binary)
    assert data.groups and data.marks and all(m in t for m, t in zip(data.marks, data.texts))
    rows = BUILDERS[name]()
    assert [r["text"] for r in rows] == data.texts and [r["label"] for r in rows] == data.labels.tolist()


@pytest.mark.parametrize("plain,negated", [("cities", "neg_cities"), ("larger_than", "neg_larger_than"),
                                           ("sentiment", "neg_sentiment")])
def test_negated_variants_flip_every_label(plain, negated):
    a, b = load_dataset(plain), load_dataset(negated)
    assert (a.labels == 1 - b.labels).all() and all(" not " in t for t in b.texts)
    assert [t.replace(" not", "") for t in b.texts] == a.texts


def test_dataset_files_and_bad_input(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"statement": "A is A.", "label": true}\n{"statement": "A is B.", '
                                       '"label": false}\n')
    ok = load_dataset(str(tmp_path / "ok.jsonl"))
    assert ok.texts == ["A is A.", "A is B."] and ok.labels.tolist() == [1, 0]
    cases = {
        "one.csv": ("text,label\nA is A.,1\nB is B.,1\n", "only class"),
        "cols.csv": ("sentence,truth\nA,1\nB,0\n", r"lacks column\(s\) text, label"),
        "empty.csv": ('text,label\nA is A.,1\n"",0\n', "empty text"),
        "words.csv": ("text,label\nA,yes\nB,no\n", "labels must be"),
    }
    for fname, (body, message) in cases.items():
        (tmp_path / fname).write_text(body)
        with pytest.raises(InterpError, match=message) as err:
            load_dataset(str(tmp_path / fname)).require_binary()
        assert "\n" not in str(err.value)
    with pytest.raises(InterpError, match="did you mean: cities"):
        load_dataset("citys")
    assert not from_frame(pd.DataFrame({"text": ["a", "b"], "label": [0.5, 2.0]}), "reg").binary


# -- collection --------------------------------------------------------------------------------------
TEXTS = ["a", "hello there", "The city of Paris is in France.", "xyz abc", "Seventy is larger than sixty."]


def _reference(model, text: str) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=False))
    return {name: cache[name][0] for name in cache if name.endswith("hook_resid_post")}


def test_batched_right_padded_collection_equals_one_text_at_a_time(tiny_llama):
    marks = ["a", "hello", "Paris", "abc", "larger"]
    got = {pos: collect_activations(tiny_llama, TEXTS, position=pos, marks=marks, batch_size=3, progress=False)
           for pos in ("last", "mean", "mark")}
    got[-2] = collect_activations(tiny_llama, ["_" + t for t in TEXTS], position=-2, batch_size=3, progress=False)
    for i, text in enumerate(TEXTS):
        ref = _reference(tiny_llama, text)
        start = text.index(marks[i]) + len(marks[i]) - 1  # byte tokens: one per character
        for layer in range(tiny_llama.cfg.n_layers):
            acts = ref[f"blocks.{layer}.hook_resid_post"]
            torch.testing.assert_close(got["last"][layer, i], acts[-1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["mean"][layer, i], acts.mean(0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["mark"][layer, i], acts[start], atol=1e-5, rtol=1e-5)
            second_last = _reference(tiny_llama, "_" + text)[f"blocks.{layer}.hook_resid_post"][-2]
            torch.testing.assert_close(got[-2][layer, i], second_last, atol=1e-5, rtol=1e-5)


def test_collection_bad_input(tiny_llama):
    with pytest.raises(InterpError, match="out of range"):
        collect_activations(tiny_llama, TEXTS, layers=[3], progress=False)
    with pytest.raises(InterpError, match="text 1 is empty"):
        collect_activations(tiny_llama, ["a", "  "], progress=False)
    with pytest.raises(InterpError, match="'mark' column"):
        collect_activations(tiny_llama, TEXTS, position="mark", progress=False)
    with pytest.raises(InterpError, match="outside text 0"):
        collect_activations(tiny_llama, TEXTS, position=-3, progress=False)
    with pytest.raises(InterpError, match="unknown position"):
        collect_activations(tiny_llama, TEXTS, position="first", progress=False)


def test_activations_are_cached_in_the_workspace(tiny_llama, tmp_path):
    first = cached_activations(tiny_llama, TEXTS, [0, 2], workspace=tmp_path)
    files = list((tmp_path / ".activations").glob("*.safetensors"))
    assert len(files) == 1
    again = cached_activations(tiny_llama, TEXTS, [0, 2], workspace=tmp_path)
    assert torch.equal(first, again) and len(list((tmp_path / ".activations").iterdir())) == 1


# -- estimators and statistics ----------------------------------------------------------------------------
def _planted(n=600, d=48, seed=0, strength=1.5, spread=(1.0, 1.0)):
    """Rows = noise (per-dimension scales from `spread`) + (+-strength) u + an offset; labels; u."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = rng.integers(0, 2, n)
    noise = rng.normal(size=(n, d)) * np.linspace(*spread, d)
    return noise + np.outer(2 * y - 1, u) * strength + 3.0, y, u


@pytest.mark.parametrize("method", ["logistic", "mass-mean", "mass-mean-iid"])
def test_classifier_probes_find_a_planted_direction(method):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    X, y, u = _planted(n=1000, strength=1.0)
    probe = make_probe(method).fit(torch.tensor(X), torch.tensor(y))
    assert cos(probe.direction_, u) > 0.9 and np.isclose(np.linalg.norm(probe.direction_), 1)
    assert probe.direction_ @ u > 0 and probe.mean_gap_ == pytest.approx(
        (X[y == 1].mean(0) - X[y == 0].mean(0)) @ probe.direction_)
    assert probe.score(X, y) > 0.8 and probe.predict_proba(X).shape == (len(X), 2)
    assert probe.transform(X).shape == (len(X), 1)
    assert cross_val_score(clone(probe), X, y, cv=3).mean() > 0.8  # Bayes accuracy: Phi(1) = 0.84


def test_whitened_mass_mean_agrees_with_logistic_under_anisotropic_noise():
    """Both estimate Sigma^-1 (mu1 - mu0); the plain mass-mean direction stays on mu1 - mu0."""
    X, y, u = _planted(n=2000, spread=(0.2, 1.0))
    iid, logistic = MassMeanProbe(whiten=True).fit(X, y), LogisticProbe(C=100).fit(X, y)
    assert cos(iid.direction_, logistic.direction_) > 0.95
    assert cos(MassMeanProbe().fit(X, y).direction_, u) > 0.95 > cos(iid.direction_, u)


def test_ridge_probe_finds_a_planted_direction_and_rejects_constant_targets():
    X, _, u = _planted()
    target = (X - 3.0) @ u * 2 + np.random.default_rng(1).normal(size=len(X)) * 0.1
    probe = RidgeProbe().fit(X, target)
    assert cos(probe.direction_, u) > 0.9 and probe.score(X, target) > 0.9
    with pytest.raises(InterpError, match="same value"):
        RidgeProbe().fit(X, np.ones(len(X)))


def test_probes_reject_one_class_and_mismatched_rows():
    X, y, _ = _planted(n=20)
    for probe in (LogisticProbe(), MassMeanProbe(), MassMeanProbe(whiten=True)):
        with pytest.raises(InterpError, match="labels 0 and 1"):
            probe.fit(X, np.ones(len(X)))
        with pytest.raises(InterpError, match="one label per row"):
            probe.fit(X, y[:-1])
    with pytest.raises(InterpError, match="unknown probe method"):
        make_probe("lda")


def test_confidence_intervals():
    from sklearn.metrics import roc_auc_score

    lo, hi = wilson(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = labels + rng.normal(size=300)
    a, a_lo, a_hi = auroc(scores, labels)
    assert a == pytest.approx(roc_auc_score(labels, scores)) and a_lo < a < a_hi and a_hi - a_lo < 0.15


def test_sweep_scores_layers_generalises_and_round_trips(tmp_path):
    X, y, u = _planted(n=300)
    acts = torch.tensor(np.stack([np.random.default_rng(2).normal(size=X.shape), X]), dtype=torch.float32)
    data = ProbeDataset("planted", [f"row {i}" for i in range(len(y))], y, [str(i // 2) for i in range(len(y))])
    flipped = ProbeDataset("flipped", data.texts, 1 - y)
    result = sweep(acts, data, [4, 9], ["logistic", "mass-mean"], folds=4, tests={"flipped": (flipped, acts)},
                   model="synthetic", progress=False)
    cv = result.frame[result.frame["eval"] == "cv"].set_index(["method", "layer"])
    assert cv.loc[("mass-mean", 9), "accuracy"] > 0.9 and cv.loc[("mass-mean", 4), "accuracy"] < 0.65
    assert (cv.accuracy_lo <= cv.accuracy).all() and (cv.accuracy <= cv.accuracy_hi).all()
    assert result.best_layer("logistic") == 9 and cos(result.direction("mass-mean", 9), u) > 0.9
    test = result.frame[result.frame["eval"] == "flipped"].set_index(["method", "layer"])
    assert test.loc[("mass-mean", 9), "auroc"] < 0.1  # the flipped labels are predicted backwards
    back = ProbeSweepResult.read(result.save(tmp_path))
    pd.testing.assert_frame_equal(back.frame, result.frame)
    torch.testing.assert_close(back.steering_vector("mass-mean", 9), result.steering_vector("mass-mean", 9))
    assert "best layer  9" in back.summary() and back.figure().data
    with pytest.raises(InterpError, match="fewer than 301 folds"):
        sweep(acts, data, [4, 9], ["mass-mean"], folds=301, progress=False)


# -- a tiny model with a planted direction ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_model():
    """tiny-llama whose "X" / "Y" embeddings carry +c u / -c u, with u = W_U[:, "A"] - W_U[:, "B"] (unit)."""
    from interp.models import load_model

    model = load_model("tiny-llama")
    tok = {ch: model.tokenizer.encode(ch, add_special_tokens=False)[0] for ch in "XYAB"}
    u = model.W_U[:, tok["A"]] - model.W_U[:, tok["B"]]
    u = (u / u.norm()).detach()
    c = 30 * float(model.W_E.norm(dim=-1).mean())
    with torch.no_grad():
        model.W_E[tok["X"]] += c * u
        model.W_E[tok["Y"]] -= c * u
    words = ["red", "cat", "sun", "old", "big", "sea", "map", "ink", "fog", "owl"]
    rng = np.random.default_rng(0)
    texts, labels, groups = [], [], []
    for i in range(120):
        stem = " ".join(rng.choice(words, size=3))
        texts += [f"{stem} X", f"{stem} Y"]
        labels += [1, 0]
        groups += [str(i)] * 2
    return model, u, ProbeDataset("planted", texts, np.array(labels), groups, ["X" if l else "Y" for l in labels])


def test_probe_finds_the_planted_direction_in_a_model(planted_model):
    model, u, data = planted_model
    acts = collect_activations(model, data.texts, position="mark", marks=data.marks, progress=False)
    result = sweep(acts, data, [0, 1, 2], ["logistic", "mass-mean", "mass-mean-iid"], folds=4, progress=False)
    assert (result.frame.accuracy == 1.0).all()
    for method in ("logistic", "mass-mean"):  # whitening follows the (near-degenerate) within-class noise
        for layer in result.layers:
            assert cos(result.direction(method, layer), u) > 0.9, (method, layer)


def test_steering_along_the_planted_direction_moves_the_output(planted_model):
    model, u, data = planted_model
    prompts, starts = ["red cat X Then:", "sun Y Then:"], [8, 4]
    ids = tuple(model.tokenizer.encode(ch, add_special_tokens=False)[0] for ch in "AB")
    base = answer_margins(model, prompts, starts, ids)
    plus = answer_margins(model, prompts, starts, ids, lambda m: [add_hook(2, 20 * u, m)])
    minus = answer_margins(model, prompts, starts, ids, lambda m: [add_hook(2, -20 * u, m)])
    assert (plus > base + 1).all() and (minus < base - 1).all()

    result = steer(model, data, [2], method="mass-mean", n_eval=20, shots=2, answers=("A", "B"),
                   suffix=" Then:")
    gain = result.cell("add", "false") - result.cell("baseline", "false")
    loss = result.cell("baseline", "true") - result.cell("subtract", "true")
    random_gain = abs(result.cell("random add", "false") - result.cell("baseline", "false"))
    assert gain > 1 and loss > 1 and gain > 2 * random_gain
    assert result.cell("add", "false", "judged_true") == 1.0 and result.cell("subtract", "true", "judged_true") == 0
    assert "add to false statements" in result.summary() and result.figure().data
    with pytest.raises(InterpError, match="different first tokens"):
        steer(model, data, [2], answers=(" True", " False"))


# -- command line ------------------------------------------------------------------------------------------
def test_cli_probe_sweeps_tests_steers_and_saves(tmp_path, capsys):
    from interp.cli import main
    from interp.workspace import Workspace

    code = main(["probe", "--model", "tiny-llama", "--dataset", "larger_than", "--layers", "0,2", "--method",
                 "mass-mean", "--test", "neg_larger_than", "--folds", "3", "--steer", "--steer-n", "10",
                 "--answers", "A,B", "--json", "--workspace", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["kind"] for r in out["results"]] == ["probe", "steering"] and len(out["saved"]) == 2
    frame = pd.DataFrame(out["results"][0]["frame"])
    assert set(frame["eval"]) == {"cv", "neg_larger_than"} and sorted(set(frame.layer)) == [0, 2]
    cv = frame[frame["eval"] == "cv"]
    assert out["results"][1]["layers"] == [int(cv.loc[cv.accuracy.idxmax(), "layer"])]  # steers at the best layer
    assert Workspace(tmp_path).latest("probe").n == 400 and Workspace(tmp_path).latest("steering") is not None
    assert len(list((tmp_path / ".activations").glob("*.safetensors"))) == 3  # train, test, steering rows


def test_cli_ridge_probe_on_continuous_labels(capsys):
    from interp.cli import main

    code = main(["probe", "--model", "tiny-llama", "--dataset", "numbers", "--layers", "2", "--folds", "3",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["methods"] == ["ridge"] and {"r2", "pearson"} <= set(out["frame"][0])


@pytest.mark.parametrize("body,args,message", [
    ("text,label\nA is A.,1\nB is B.,1\n", [], "only class"),
    ("sentence,label\nA,1\nB,0\n", [], "lacks column"),
    ('text,label\nA is A.,1\n"  ",0\n', [], "empty text"),
    ("text,label\nA,1\nB,0\n", ["--layers", "7"], "layer 7 is out of range"),
    ("text,label\nA,1\nB,0\n", ["--method", "svm"], "unknown probe method"),
    ("text,label\nA,1\nB,0\n", ["--position", "first"], "unknown position"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, body, args, message):
    from interp.cli import main

    (tmp_path / "data.csv").write_text(body)
    code = main(["probe", "--model", "tiny-llama", "--dataset", str(tmp_path / "data.csv"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("error: ")
    assert not [line for line in err if line.startswith("Traceback")]


# -- the real default model -------------------------------------------------------------------------------------
@pytest.mark.real
def test_cities_truth_probe_beats_chance_widely_at_middle_layers(smollm):
    from probes.sweep import probe_layers

    result = probe_layers(smollm, load_dataset("cities"), layers=[2, 12], methods=["logistic", "mass-mean"])
    cv = result.frame.set_index(["method", "layer"])
    assert cv.loc[("logistic", 12), "accuracy_lo"] > 0.85  # measured 0.94 (95% interval low end ~0.92)
    assert cv.loc[("mass-mean", 12), "accuracy"] > 0.8 and cv.loc[("logistic", 12), "auroc"] > 0.95
    assert cv.loc[("logistic", 12), "accuracy"] > cv.loc[("logistic", 2), "accuracy"] + 0.2

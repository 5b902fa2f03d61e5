"""Steering: the addition lands where asked (also through the KV cache), vector sources equal their plain
definitions, files round-trip, results save and plot, bad input is one line; one test on the real model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from interp.cli import main
from interp.errors import InterpError
from interp.hooks import mlp_out, resid_post
from interp.results import Result
from interp.steering import (
    SteeringVector,
    read_vector,
    resolve_vector,
    save_vector,
    steer,
    steering,
)
from interp.steering.run import random_control

M = ["--model", "tiny-llama"]
HOOK = resid_post(1)
PROMPT = "The movie was"
# what each positions mode steers in a 7-token pass whose prompt is the first 3 tokens
EXPECTED = {"all": [1] * 7, "prompt": [1, 1, 1, 0, 0, 0, 0], "last": [0, 0, 1, 1, 1, 1, 1]}


def unit(model, seed: int = 1, norm: float = 1.0) -> torch.Tensor:
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def tokens_of(model, text: str) -> torch.Tensor:
    return model.to_tokens(text, prepend_bos=False)


def greedy(model, tokens: torch.Tensor, kv: bool, n: int = 10) -> torch.Tensor:
    return model.generate(tokens, max_new_tokens=n, do_sample=False, use_past_kv_cache=kv, verbose=False,
                          stop_at_eos=False)


@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_addition_lands_exactly_at_the_chosen_positions(tiny_llama, positions):
    tokens = tokens_of(tiny_llama, "abcdefg")
    v = unit(tiny_llama, norm=3.0)
    _, plain = tiny_llama.run_with_cache(tokens, names_filter=[HOOK])
    with steering(tiny_llama, v, HOOK, 2.0, positions, prompt_len=3):
        _, steered = tiny_llama.run_with_cache(tokens, names_filter=[HOOK])
    diff = (steered[HOOK] - plain[HOOK])[0]
    for t, on in enumerate(EXPECTED[positions]):
        if on:
            torch.testing.assert_close(diff[t], 2.0 * v, rtol=0, atol=1e-5)
        else:
            assert torch.equal(steered[HOOK][0, t], plain[HOOK][0, t])
    assert "forward" not in tiny_llama.__dict__  # the wrapped forward is gone after the block


def test_coefficient_zero_is_no_steering_bit_for_bit(tiny_llama):
    tokens = tokens_of(tiny_llama, PROMPT)
    logits, generated = tiny_llama(tokens), greedy(tiny_llama, tokens, kv=True)
    with steering(tiny_llama, unit(tiny_llama, norm=50.0), HOOK, 0.0):
        assert torch.equal(tiny_llama(tokens), logits)
        assert torch.equal(greedy(tiny_llama, tokens, kv=True), generated)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])  # rotary and learned absolute positions
@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_generation_with_the_kv_cache_equals_generation_without_it(request, name, positions):
    model = request.getfixturevalue(name)
    tokens = tokens_of(model, PROMPT)
    v = unit(model, norm=40.0)
    plain = greedy(model, tokens, kv=True)
    with steering(model, v, HOOK, 1.0, positions):
        cached = greedy(model, tokens, kv=True)
    with steering(model, v, HOOK, 1.0, positions):
        full = greedy(model, tokens, kv=False)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, plain)  # the steering changed the generation, so the comparison tells


def test_positions_differ_in_what_generation_sees(tiny_llama):
    tokens = tokens_of(tiny_llama, PROMPT)
    v = unit(tiny_llama, norm=40.0)
    outs = {}
    for positions in ("all", "prompt", "last"):
        with steering(tiny_llama, v, HOOK, 1.0, positions):
            outs[positions] = greedy(tiny_llama, tokens, kv=True)
    assert not torch.equal(outs["prompt"], outs["all"]) and not torch.equal(outs["prompt"], outs["last"])


def write_dataset(path, texts_pos, texts_neg):
    rows = [{"text": t, "label": 1} for t in texts_pos] + [{"text": t, "label": 0} for t in texts_neg]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


POS = ["I loved it.", "What a great day.", "Wonderful food here.", "Superb acting!"]
NEG = ["I hated it.", "What an awful day.", "Terrible food here", "Dull acting, sadly."]


def test_dataset_vector_is_the_hand_computed_mean_difference(tiny_llama, tmp_path):
    csv = write_dataset(tmp_path / "d.csv", POS, NEG)
    vector = resolve_vector(tiny_llama, f"dataset:{csv}", layer=1)
    last = []
    for text in POS + NEG:
        _, cache = tiny_llama.run_with_cache(tokens_of(tiny_llama, text), names_filter=[HOOK])
        last.append(cache[HOOK][0, -1])
    last = torch.stack(last)
    expected = last[:4].mean(0) - last[4:].mean(0)
    torch.testing.assert_close(vector.vector, expected, rtol=1e-5, atol=1e-6)
    assert vector.hook == HOOK and vector.behaviour.name == "probe"
    (tmp_path / "pos.txt").write_text("\n".join(POS) + "\n\n")
    (tmp_path / "neg.txt").write_text("\n".join(NEG))
    contrast = resolve_vector(tiny_llama, f"contrast:{tmp_path / 'pos.txt'},{tmp_path / 'neg.txt'}", layer=1)
    torch.testing.assert_close(contrast.vector, expected, rtol=1e-5, atol=1e-6)
    moved = resolve_vector(tiny_llama, f"dataset:{csv}", layer=1, hook=mlp_out(2))  # read at L, added elsewhere
    assert moved.hook == mlp_out(2) and torch.equal(moved.vector, vector.vector)


def write_sae(model, out, hook: str, model_name: str | None = None, seed: int = 0):
    """An untrained (random) SAE on `hook`, saved as `interp sae train` saves one."""
    from interp.sae.build import training_sae
    from interp.sae.config import TrainConfig
    from interp.sae.io import save_trained

    name = model_name or model.cfg.spec
    cfg = TrainConfig(hook=hook, arch="topk", k=4, expansion=2.0, model=name, seed=seed)
    metadata = {"model_name": name, "hook_name": hook, "prepend_bos": False, "interp_arch": "topk"}
    d = model.cfg.d_model
    save_trained(training_sae(cfg, d, None, metadata), out, 1.0, 1.0, torch.zeros(cfg.d_sae(d)), {})
    return out


def test_probe_vector_is_the_saved_sweeps_gap_scaled_direction(tiny_llama, tmp_path):
    from probes.collect import collect_activations
    from probes.datasets import load_dataset
    from probes.sweep import sweep

    data = load_dataset("sentiment").subset(range(0, 400, 10))
    layers = [0, 1]
    acts = collect_activations(tiny_llama, data.texts, layers, progress=False)
    saved = sweep(acts, data, layers, ["logistic", "mass-mean"], folds=3, model="tiny-llama", progress=False)
    folder = saved.save(tmp_path / "ws")
    vector = resolve_vector(tiny_llama, f"probe:{folder}", layer=1)
    assert vector.hook == HOOK and torch.equal(vector.vector, saved.steering_vector("mass-mean", 1).float())
    assert vector.behaviour.name == "probe"  # the sweep's dataset is built in, so the measure is there
    logistic = resolve_vector(tiny_llama, f"probe:{folder}:logistic", layer=1)
    assert torch.equal(logistic.vector, saved.steering_vector("logistic", 1).float())
    with pytest.raises(InterpError, match="no probe at layer 2"):
        resolve_vector(tiny_llama, f"probe:{folder}", layer=2)


def test_feature_vectors_are_decoder_rows_at_the_right_hook(tiny_llama, tmp_path):
    from interp.sae.io import load_sae
    from interp.sae.sets import write_random_set

    sae_dir = write_sae(tiny_llama, tmp_path / "sae", HOOK)
    sae = load_sae(sae_dir)
    feature = resolve_vector(tiny_llama, f"feature:{sae_dir}:7")
    assert feature.hook == HOOK and torch.equal(feature.vector, sae.W_dec[7].detach().float())
    assert feature.behaviour.name == "feature" and len(feature.behaviour.top_tokens) == 10
    tc_set = write_random_set(tiny_llama, tmp_path / "tc", layers=[0, 2], k=4, expansion=2.0)
    member = load_sae(tc_set / "layer-02")
    transcoder = resolve_vector(tiny_llama, f"feature:{tc_set}:3", layer=2)
    assert transcoder.hook == mlp_out(2) and torch.equal(transcoder.vector, member.W_dec[3].detach().float())
    with pytest.raises(InterpError, match="belongs to blocks.2.hook_mlp_out"):
        resolve_vector(tiny_llama, f"feature:{tc_set / 'layer-02'}:3", layer=1)


def test_feature_steering_reads_the_feature_before_the_addition(tiny_llama, tmp_path):
    sae_dir = write_sae(tiny_llama, tmp_path / "sae", HOOK)
    result = steer(tiny_llama, f"feature:{sae_dir}:5", coefs=[0, 30], prompt=PROMPT, max_new_tokens=4, neutral=2,
                   progress=False)
    frame = result.to_frame().set_index(["coef", "condition"])
    assert list(result.behaviour_columns) == ["feature_act", "feature_logits"]
    assert np.isfinite(frame["feature_act"]).all() and np.isfinite(frame["feature_logits"]).all()
    # at coefficient 0 nothing is added: both conditions are one run
    assert frame.loc[(0.0, "vector")].equals(frame.loc[(0.0, "random")])


def test_saved_vector_round_trips_through_file(tiny_llama, tmp_path, capsys):
    csv = write_dataset(tmp_path / "d.csv", POS, NEG)
    vector = resolve_vector(tiny_llama, f"dataset:{csv}", layer=1)
    path = save_vector(vector, tmp_path / "v.safetensors")
    tensor, metadata = read_vector(path)
    assert torch.equal(tensor, vector.vector) and tensor.dtype == torch.float32 and metadata == {"hook_name": HOOK}
    again = resolve_vector(tiny_llama, f"file:{path}")
    assert torch.equal(again.vector, vector.vector) and again.hook == HOOK
    # the CLI writes what coefficient 1 adds, and file: reads it back into the same run
    out = tmp_path / "cli.safetensors"
    args = ["steer", PROMPT, *M, "--layer", "1", "--coef", "0,1", "--max-new-tokens", "2", "--neutral", "1", "--json"]
    assert main([*args, "--vector", f"dataset:{csv}", "--save-vector", str(out)]) == 0
    first = json.loads(capsys.readouterr().out)
    # the CLI run may use another thread count, so the means can differ in the last bit
    assert torch.allclose(read_vector(out)[0], vector.vector, rtol=1e-5, atol=1e-7)
    assert main([*args[:4], *args[6:], "--vector", f"file:{out}"]) == 0  # no --layer: the file names its hook
    second = json.loads(capsys.readouterr().out)
    assert second["vector"] == first["vector"] and second["hook"] == HOOK
    assert second["generations"] == first["generations"]


def test_edit_vector_is_the_change_the_saved_edit_makes_at_the_subject(tiny_llama, tmp_path):
    from circuits.editing import ROMESettings, rome, save_model, second_moments
    from circuits.editing.optimize import ValueSettings
    from interp.models import load_model

    second_moments(tiny_llama, [1], n_tokens=20_000, progress=False)
    request = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
    settings = ROMESettings(values=ValueSettings(steps=5), context_lengths=((5, 5),), stats_tokens=20_000)
    with rome(tiny_llama, request, layer=1, settings=settings, progress=False):
        folder = save_model(tiny_llama, tmp_path / "edited")
        with pytest.raises(InterpError, match="already equal"):
            resolve_vector(tiny_llama, f"edit:{folder}")
    vector = resolve_vector(tiny_llama, f"edit:{folder}")
    assert vector.hook == mlp_out(1) and vector.behaviour.name == "tokens"
    tokens = tokens_of(tiny_llama, "The Eiffel Tower is located in the city of")
    last_subject = tokens_of(tiny_llama, "The Eiffel Tower").shape[1] - 1
    _, base = tiny_llama.run_with_cache(tokens, names_filter=[mlp_out(1)])
    _, edited = load_model(str(folder)).run_with_cache(tokens, names_filter=[mlp_out(1)])
    change = edited[mlp_out(1)][0, last_subject] - base[mlp_out(1)][0, last_subject]
    torch.testing.assert_close(vector.vector, change, rtol=1e-4, atol=1e-5)


def test_steer_result_columns_saves_and_plots(tiny_llama, tmp_path):
    csv = write_dataset(tmp_path / "d.csv", POS, NEG)
    result = steer(tiny_llama, f"dataset:{csv}", layer=1, coefs=[0, 20], prompt=PROMPT, max_new_tokens=3,
                   samples=2, neutral=2, progress=False)
    frame = result.to_frame()
    assert list(frame.columns) == ["coef", "condition", "p_positive", "p_positive_text", "logit_diff", "kl", "fluency"]
    assert list(zip(frame.coef, frame.condition)) == [(0, "vector"), (0, "random"), (20, "vector"), (20, "random")]
    assert frame.loc[frame.coef == 0, "kl"].abs().max() < 1e-6 and (frame.loc[frame.coef == 20, "kl"] > 0).all()
    assert len(result.generations) == 2 * 2 * 2 and len(result.side_by_side()) == 2 * 2
    torch.testing.assert_close(random_control(result.vector, 0).norm(), result.vector.norm())
    fig = result.figure()
    assert len(fig.data) == 2 * len(result.measures)  # vector and control per measure
    loaded = Result.read(result.save(tmp_path / "ws"))
    pd.testing.assert_frame_equal(loaded.to_frame(), frame)
    assert torch.equal(loaded.vector, result.vector) and loaded.behaviour_info == result.behaviour_info
    assert "coef 20" in loaded.summary()


def test_steering_a_tensor_through_the_api(tiny_llama):
    with pytest.raises(InterpError, match="layer or a hook"):
        steer(tiny_llama, unit(tiny_llama), prompt=PROMPT)
    result = steer(tiny_llama, SteeringVector(unit(tiny_llama), HOOK, "tensor"), coefs=[5], prompt=PROMPT,
                   max_new_tokens=2, neutral=1, progress=False)
    assert result.behaviour == "" and list(result.to_frame().columns) == ["coef", "condition", "kl", "fluency"]


# -- bad input: one line, exit 2, before the model loads where nothing needs it ---------------------
def run_bad(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line]
    assert code == 2 and not out, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")
    monkeypatch.setattr("interp.models.load_model", refuse)


@pytest.mark.parametrize("extra, words", [
    (["--vector", "dataset:sentiment", "--coef", "1,x"], "--coef"),
    (["--vector", "dataset:sentiment", "--coef", "0,inf"], "finite"),
    (["--vector", "dataset:sentiment", "--coef", "nan"], "finite"),
    (["--vector", "dataset:sentiment", "--coef", "1,,2"], "--coef"),
    (["--vector", "nonsense"], "KIND:WHAT"),
    (["--vector", "dataset:no_such_dataset"], "unknown dataset"),
    (["--vector", "contrast:only_one.txt"], "two files"),
    (["--vector", "file:/nonexistent/v.safetensors"], "check the path"),
    (["--vector", "dataset:sentiment", "--positions", "middle"], "--positions"),
    (["--vector", "dataset:sentiment", "--save-vector", "v.pt"], ".safetensors"),
])
def test_bad_options_are_refused_before_the_model_loads(capsys, no_model, tmp_path, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    assert words in run_bad(capsys, ["steer", PROMPT, *M, "--layer", "1", *extra])


def test_bad_sources_are_one_line(capsys, tmp_path, tiny_llama, no_model):
    one_class = write_dataset(tmp_path / "one.csv", POS, [])
    assert "only class" in run_bad(capsys, ["steer", PROMPT, *M, "--vector", f"dataset:{one_class}", "--layer", "1"])
    (tmp_path / "pos.txt").write_text("good\n")
    (tmp_path / "neg.txt").write_text("\n")
    line = run_bad(capsys, ["steer", PROMPT, *M, "--vector", f"contrast:{tmp_path}/pos.txt,{tmp_path}/neg.txt"])
    assert "one class" in line
    sae_dir = write_sae(tiny_llama, tmp_path / "sae", HOOK)
    line = run_bad(capsys, ["steer", PROMPT, *M, "--vector", f"feature:{sae_dir}:999"])
    assert "out of range" in line and "0..127" in line


@pytest.fixture(scope="module")
def sae_other_model(tiny_llama, tmp_path_factory):
    """An SAE of the same width trained (by its metadata) on tiny-gpt2."""
    return write_sae(tiny_llama, tmp_path_factory.mktemp("other") / "sae", HOOK, model_name="tiny-gpt2")


def test_bad_input_that_needs_the_model_is_one_line(capsys, tmp_path, tiny_llama, sae_other_model):
    narrow = tmp_path / "narrow.safetensors"
    from safetensors.torch import save_file

    save_file({"vector": torch.ones(10)}, str(narrow), metadata={"hook_name": HOOK})
    assert "10 wide" in run_bad(capsys, ["steer", PROMPT, *M, "--vector", f"file:{narrow}"])
    line = run_bad(capsys, ["steer", PROMPT, *M, "--vector", "dataset:sentiment", "--layer", "1",
                            "--hook", "blocks.1.hook_nope"])
    assert "unknown hook" in line
    assert "need --layer" in run_bad(capsys, ["steer", PROMPT, *M, "--vector", "dataset:sentiment"])
    assert "out of range" in run_bad(capsys, ["steer", PROMPT, *M, "--vector", "dataset:sentiment", "--layer", "9"])
    assert "--model tiny-gpt2" in run_bad(capsys, ["steer", PROMPT, *M, "--vector", f"feature:{sae_other_model}:1"])


@pytest.mark.real
def test_sentiment_vector_moves_the_behaviour_more_than_the_control(smollm):
    from probes.datasets import load_dataset

    from interp.steering.vectors import caa_vector

    data = load_dataset("sentiment")
    rows = np.r_[np.flatnonzero(data.labels == 1)[:30], np.flatnonzero(data.labels == 0)[:30]]
    vector, behaviour = caa_vector(smollm, data.subset(rows), 15)
    result = steer(smollm, SteeringVector(vector, resid_post(15), "dataset:sentiment (60 rows)", behaviour),
                   coefs=[0, 2], prompt="I watched the film yesterday. Honestly, it was", max_new_tokens=8,
                   neutral=2, progress=False)
    frame = result.to_frame().set_index(["coef", "condition"])
    base = frame.loc[(0.0, "vector"), "logit_diff"]
    moved = frame.loc[(2.0, "vector"), "logit_diff"] - base
    control = frame.loc[(2.0, "random"), "logit_diff"] - base
    assert moved > 0 and moved > abs(control), frame


def test_dashboard_page_and_live_box(tiny_llama, tmp_path):
    from dashboards.app import render
    from dashboards.context import Context
    from dashboards.steering import LIVE_TOKENS, live_generations
    from interp.steering.run import continuation, generate

    result = steer(tiny_llama, SteeringVector(unit(tiny_llama, norm=40.0), HOOK, "tensor"), coefs=[0, 1],
                   prompt="<b>bold</b> and", max_new_tokens=3, neutral=1, progress=False)
    result.save(tmp_path, "s")
    ctx = Context(tmp_path, "tiny-llama")
    page = json.dumps(render(ctx, "/result/steer/s", ""),
                      default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))
    assert "Generations per coefficient" in page and "steer-run" in page and '"type": "fig"' in page
    plain, steered = live_generations(ctx, "s", PROMPT, 1.0, "all")
    tokens = tokens_of(tiny_llama, PROMPT)
    assert plain == continuation(tiny_llama, generate(tiny_llama, tokens, LIVE_TOKENS, 1, 0)[0], tokens.shape[1])
    assert steered != plain
    with pytest.raises(InterpError, match="finite"):
        live_generations(ctx, "s", PROMPT, float("nan"), "all")
    with pytest.raises(InterpError, match="--model tiny-llama"):
        live_generations(Context(tmp_path, "tiny-gpt2"), "s", PROMPT, 1.0, "all")

"""Outliers: planted massive values, sinks and alignments on the tiny model are found (and only they);
on the default model the known dim-507 first-token activation, the token-0 sink, the value drains and
the zero-vs-mean perplexity gap are rediscovered."""

from __future__ import annotations

import json

import pytest
import torch

from interp.errors import InterpError
from interp.outliers import (analyze_outliers, attention_sinks, massive_activations, massive_intervention,
                             secondary_sinks, value_drains)
from interp.outliers.drains import value_norms
from interp.outliers.secondary import runs
from interp.outliers.sinks import token_importance
from interp.results import Result

# bytes; its first character does not recur, so no later token starts out identical to the first
PROMPT = "Quietly, the small cat sat on a warm mat; then it slept until noon."
DIM, BIG = 17, 5000.0


def plant(value: float, dim: int = DIM, positions=(0,), block: int = 0):
    """A hook adding `value` at `dim` on `positions` to the output of `block` (hidden state block+1)."""
    def fn(act, hook):
        act[:, list(positions), dim] += value
        return act
    return (f"blocks.{block}.hook_resid_post", fn)


@pytest.fixture()
def text_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(200)))
    return str(path)


# -- massive activations ------------------------------------------------------------------------------

def test_tiny_model_has_no_massive_activations(tiny_llama):
    result = massive_activations(tiny_llama, [PROMPT])
    assert result.flags.empty and result.dims().empty
    assert len(result.median) == tiny_llama.cfg.n_layers + 1


def test_planted_value_is_found_and_only_it(tiny_llama):
    with tiny_llama.hooks(fwd_hooks=[plant(BIG)]):
        result = massive_activations(tiny_llama, [PROMPT, PROMPT[::-1]])
    dims = result.dims()
    assert dims["dim"].tolist() == [DIM]
    assert (dims.iloc[0]["first_layer"], dims.iloc[0]["last_layer"]) == (1, tiny_llama.cfg.n_layers)
    assert dims.iloc[0]["first_token_share"] == 1.0
    assert set(result.flags["layer"]) == {1, 2, 3} and result.flags["first"].all()
    assert result.flags["count"].sum() == 2 * 3  # two prompts x three hidden states
    frame = result.to_frame().set_index("layer")
    assert (frame.loc[1:, "dim"] == DIM).all() and (frame.loc[1:, "position"] == 0).all()
    assert (frame.loc[1:, "top"] > BIG * 0.99).all() and frame.loc[0, "flagged"] == 0


def test_first_token_and_delimiter_are_told_apart(tiny_llama):
    dot = PROMPT.index(";")
    with tiny_llama.hooks(fwd_hooks=[plant(BIG), plant(800.0, positions=(dot,))]):
        result = massive_activations(tiny_llama, [PROMPT])
    row = result.dims().iloc[0]
    assert row["first_token_share"] == 0.5 and "';'" in row["other_tokens"]
    means = result.means().set_index(["layer", "first"])["mean"]
    assert means[(1, True)] == pytest.approx(BIG, rel=0.01) and means[(1, False)] == pytest.approx(800, rel=0.01)


def test_thresholds_change_what_is_flagged(tiny_llama):
    with tiny_llama.hooks(fwd_hooks=[plant(BIG)]):
        assert massive_activations(tiny_llama, [PROMPT], abs_threshold=10 * BIG).flags.empty
        assert massive_activations(tiny_llama, [PROMPT], ratio_threshold=1e9).flags.empty


@pytest.mark.parametrize("kwargs, message", [
    ({"abs_threshold": 0}, "magnitude threshold"), ({"ratio_threshold": 0.5}, "ratio-to-median"),
    ({"top_k": 0}, "top-k"),
])
def test_bad_massive_thresholds(tiny_llama, kwargs, message):
    with pytest.raises(InterpError, match=message):
        massive_activations(tiny_llama, [PROMPT], **kwargs)


def test_bad_inputs(tiny_llama, tmp_path):
    with pytest.raises(InterpError, match="one token"):
        attention_sinks(tiny_llama, ["Q"])
    with pytest.raises(InterpError, match="between 0 and 1"):
        attention_sinks(tiny_llama, [PROMPT], threshold=1.2)
    with pytest.raises(InterpError, match="between 0 and 1"):
        secondary_sinks(tiny_llama, [PROMPT], threshold=0)
    with pytest.raises(InterpError, match="layers must lie"):
        secondary_sinks(tiny_llama, [PROMPT], layers=[0])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InterpError, match="fewer than"):
        massive_activations(tiny_llama, corpus=str(tmp_path / "empty.txt"))


# -- intervention -------------------------------------------------------------------------------------

def test_zeroing_a_planted_value_changes_the_loss_and_the_mean_does_not(tiny_llama, text_corpus):
    with tiny_llama.hooks(fwd_hooks=[plant(BIG)]):
        massive = massive_activations(tiny_llama, corpus=text_corpus, max_tokens=256, seq_len=64)
        result = massive_intervention(tiny_llama, massive, text_corpus, max_tokens=256, seq_len=64)
    assert result.sites[["layer", "dim"]].values.tolist() == [[1, DIM], [2, DIM], [3, DIM]]
    assert result.replaced["zero"] == 4  # once per sequence: the zeroed value is no longer flagged later
    assert result.replaced["mean"] == 4 * 3
    # a random model barely uses token 0, yet only zeroing moves its loss at all
    assert abs(result.nll["mean"] - result.nll["original"]) < 1e-5
    assert abs(result.nll["zero"] - result.nll["original"]) > 1e-4


def test_nothing_flagged_runs_only_the_original(tiny_llama, text_corpus):
    massive = massive_activations(tiny_llama, corpus=text_corpus, max_tokens=128, seq_len=64)
    result = massive_intervention(tiny_llama, massive, text_corpus, max_tokens=128, seq_len=64)
    assert list(result.nll) == ["original"]


# -- sinks, drains, secondary sinks --------------------------------------------------------------------

def test_token_importance_averages_over_the_queries_that_see_each_token():
    pattern = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.2, 0.6]])[None, None]
    assert token_importance(pattern)[0, 0].tolist() == pytest.approx([1.7 / 3, 0.7 / 2, 0.6])


def test_planted_sink_layer_is_found(tiny_llama):
    def to_first(scores, hook):
        scores[..., 0] += 12.0
        return scores

    with tiny_llama.hooks(fwd_hooks=[("blocks.1.attn.hook_attn_scores", to_first)]):
        result = attention_sinks(tiny_llama, [PROMPT])
    frame = result.to_frame()
    assert frame["sink_heads"].tolist() == [0, tiny_llama.cfg.n_heads, 0]
    assert frame.loc[1, "first_attention"] > 0.99 and frame.loc[1, "sink_score"] == 1.0
    assert result.sink_rate == pytest.approx(1 / 3)
    assert result.heads()["sink_head"].sum() == tiny_llama.cfg.n_heads


def test_value_and_residual_norms_match_a_direct_computation(tiny_llama):
    result = value_drains(tiny_llama, [PROMPT])
    tokens = tiny_llama.to_tokens(PROMPT, prepend_bos=False)
    _, cache = tiny_llama.run_with_cache(tokens)
    group = tiny_llama.cfg.n_heads // tiny_llama.cfg.n_key_value_heads
    for layer in range(tiny_llama.cfg.n_layers):
        v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [T, kv_heads, d_head]
        direct = torch.stack([(v[:, h // group] @ tiny_llama.W_O[layer, h]).norm(dim=-1)
                              for h in range(tiny_llama.cfg.n_heads)])
        torch.testing.assert_close(result.value_norm[layer], direct, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.resid_norm[-1], cache["blocks.2.hook_resid_post"][0].norm(dim=-1))
    gram = tiny_llama.W_O[0] @ tiny_llama.W_O[0].transpose(-1, -2)
    assert value_norms(cache["blocks.0.attn.hook_v"], gram).shape == (1, tiny_llama.cfg.n_heads, tokens.shape[1])


def test_runs():
    assert runs([False, True, True, False, True]) == [(1, 2), (4, 4)]
    assert runs([False, False]) == []


def sink_on_first(block: int, boost: float = 3.0):
    """A hook raising the attention score of key 0 in `block`, so that its heads sink on the first token."""
    def fn(scores, hook):
        scores[..., 0] += boost
        return scores
    return (f"blocks.{block}.attn.hook_attn_scores", fn)


def test_planted_secondary_sink_is_found_and_only_it(tiny_llama):
    spot = PROMPT.index("cat")
    planted = [plant(1000.0, positions=(0, spot)), sink_on_first(1), sink_on_first(2)]
    with tiny_llama.hooks(fwd_hooks=planted):
        result = secondary_sinks(tiny_llama, [PROMPT])
    events = result.to_frame()
    assert events[["position", "start_layer", "end_layer", "n_layers"]].values.tolist() == [[spot, 1, 2, 2]]
    assert events.iloc[0]["token"] == "c" and events.iloc[0]["mean_cos"] > 0.99
    assert result.typical_cos.shape == (2,) and (result.typical_cos < 0.5).all()  # the others stay unaligned
    with tiny_llama.hooks(fwd_hooks=planted):
        assert secondary_sinks(tiny_llama, [PROMPT], layers=[2]).to_frame()["start_layer"].tolist() == [2]
    with tiny_llama.hooks(fwd_hooks=planted[:1]):  # aligned, but no head sinks on the first token
        assert secondary_sinks(tiny_llama, [PROMPT]).to_frame().empty


# -- results, CLI ---------------------------------------------------------------------------------------

def test_results_save_load_and_draw(tiny_llama, tmp_path):
    with tiny_llama.hooks(fwd_hooks=[plant(BIG)]):
        analysis = analyze_outliers(tiny_llama, ["A shorter prompt.", PROMPT],
                                    ppl_tokens=128, seq_len=64)
    results = analysis.results()
    assert [r.kind for r in results] == ["massive_activations", "attention_sinks", "value_drains",
                                         "secondary_sinks", "massive_intervention"]
    for result in results:
        back = Result.read(result.save(tmp_path))
        assert type(back) is type(result)
        assert back.to_frame().shape == result.to_frame().shape
        assert result.figure().data and result.summary()
        json.dumps(result.to_dict())
    assert analysis.sinks.importance.shape[-1] == len(PROMPT)  # the longest prompt, in bytes
    assert len(analysis.sinks.example_tokens) == len("A shorter prompt.")
    assert "dim 17: layers 1-3" in analysis.massive.summary()


def test_cli_json_and_errors(tiny_llama, capsys, text_corpus):
    from interp.cli import main

    assert main(["outliers", "--model", "tiny-llama", "--corpus", text_corpus, "--tokens", "128",
                 "--seq-len", "64", "--ppl-tokens", "0", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in payload["results"]] == ["massive_activations", "attention_sinks", "value_drains",
                                                       "secondary_sinks"]
    assert payload["results"][0]["n_tokens"] == 128
    for bad in (["Q"], ["--ratio-threshold", "0.5", PROMPT], ["--secondary-layers", "0", PROMPT],
                ["--cos-threshold", "2", PROMPT]):
        assert main(["outliers", "--model", "tiny-llama", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")


# -- checkpoints ----------------------------------------------------------------------------------------

def test_train_and_compare_checkpoints(tmp_path, text_corpus):
    from interp.models import load_model
    from interp.outliers.checkpoints import TrainConfig, across_checkpoints, train_checkpoints

    cfg = TrainConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, seq_len=32, batch_size=2,
                      lr=1e-2, warmup=1)
    saved = train_checkpoints(tmp_path / "ckpt", steps=3, save_every=2, corpus=text_corpus, config=cfg)
    assert [p.name for p in saved] == ["step-000000", "step-000002", "step-000003"]
    model = load_model(str(saved[-1]))
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    with pytest.raises(InterpError, match="already holds"):
        train_checkpoints(tmp_path / "ckpt", steps=1, corpus=text_corpus, config=cfg)

    result = across_checkpoints(str(tmp_path / "ckpt"), text_corpus, max_tokens=64, batch_size=2, seq_len=32,
                                ppl_tokens=64)
    frame = result.to_frame()
    assert frame["step"].tolist() == [0, 2, 3]
    assert frame["ppl_original"].iloc[-1] < frame["ppl_original"].iloc[0]  # it learns something
    assert len(result.layers) == 3 * 3 and result.figure().data and "step" in result.summary()
    back = Result.read(result.save(tmp_path / "ws"))
    assert back.to_frame()["step"].tolist() == [0, 2, 3]


# -- the default model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm_outliers(smollm):
    return analyze_outliers(smollm, max_tokens=512, ppl_tokens=512)


@pytest.mark.real
def test_default_model_massive_activation_dim_507(smollm_outliers):
    massive = smollm_outliers.massive
    first = massive.flags[massive.flags["first"] & (massive.flags["dim"] == 507)]
    assert first["layer"].min() == 12 and first["layer"].max() >= 28
    assert first.groupby("layer")["count"].sum().loc[12:28].eq(massive.n_sequences).all()  # every sequence
    frame = massive.to_frame().set_index("layer").loc[12:28]
    assert (frame["dim"] == 507).all() and (frame["position"] == 0).all()
    assert (frame["top"] > 15_000).all() and (frame["ratio"] > 1000).all()
    assert massive.to_frame().loc[:11, "top"].max() < 2000  # nothing of that size before layer 12


@pytest.mark.real
def test_default_model_first_token_sink_drain_and_peak(smollm_outliers):
    sinks = smollm_outliers.sinks.to_frame().set_index("layer")
    assert sinks.loc[12:28, "first_attention"].mean() > 0.45 and smollm_outliers.sinks.sink_rate > 0.5
    drains = smollm_outliers.drains.to_frame().set_index("layer")
    assert drains.loc[12:28, "value_ratio"].median() < 0.5  # the sink writes little through attention
    assert drains.loc[12:28, "resid_ratio"].min() > 20  # and its residual stream is huge


@pytest.mark.real
def test_default_model_zero_breaks_it_and_mean_does_not(smollm_outliers):
    ppl = smollm_outliers.intervention.perplexity
    assert ppl["zero"] > 100 * ppl["original"]
    assert ppl["mean"] < 1.1 * ppl["original"]


@pytest.mark.real
def test_default_model_secondary_sinks_come_from_mlp_2(smollm_outliers):
    """Counted only where a head sinks on the first token and only for other token ids, they appear
    from hidden state 3 on, written by MLP block 2 at 10-35x the norm it writes into other tokens.

    Measured over 2,048 tokens: 52 sinks, 45 from MLP 2; Spearman(norm, score) 0.79.
    """
    events = smollm_outliers.secondary.to_frame()
    assert len(events) > 0 and events["start_layer"].min() >= 2
    assert (events["mlp_layer"] == 2).mean() > 0.5
    assert events.loc[events["mlp_layer"] == 2, "mlp_ratio"].median() > 10
    assert (events["attention"] < events["first_attention"]).mean() > 0.5  # weaker than the primary sink

"""`interp ffn` (Geva et al. 2022): sub-updates, vocabulary readings and the neuron table, each pinned against
a plain computation from the weights (einsum over W_out, the final norm's parameters and W_U)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interp.cli import main
from interp.errors import InterpError
from interp.ffn import ffn_updates, neuron_table, neurons_promoting, search_table
from interp.ffn.table import TABLE_TOKENS, saved_table, table_path
from test_cli_errors import run_bad

PROMPT = "The Eiffel Tower is in"
MODELS = ["tiny_llama", "tiny_gpt2"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Neuron tables go to a fresh cache folder per test."""
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def reference_readout(model, vectors: torch.Tensor) -> torch.Tensor:
    """[n, d_model] -> [n, d_vocab] written out: centre (LayerNorm only), times the final norm's gain, times W_U."""
    if model.cfg.normalization_type == "LN":
        vectors = vectors - vectors.mean(-1, keepdim=True)
    return torch.einsum("nd,d,dv->nv", vectors, model.ln_final.w, model.W_U)


def cached(model, names):
    _, cache = model.run_with_cache(model.to_tokens(PROMPT, prepend_bos=False), names_filter=names)
    return cache


def test_gated_coefficients_are_act_gate_times_up(tiny_llama):
    """SwiGLU: hook_post, the coefficient of each value vector, is silu(x W_gate) * (x W_up) (b_in is zero)."""
    cache = cached(tiny_llama, lambda n: "mlp.hook" in n)
    for layer in range(tiny_llama.cfg.n_layers):
        pre, linear, post = (cache[f"blocks.{layer}.mlp.{h}"] for h in ("hook_pre", "hook_pre_linear", "hook_post"))
        assert torch.equal(tiny_llama.blocks[layer].mlp.b_in, torch.zeros_like(tiny_llama.blocks[layer].mlp.b_in))
        torch.testing.assert_close(post, F.silu(pre) * linear, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_sub_updates_sum_to_the_mlp_output(request, name):
    model = request.getfixturevalue(name)
    cache = cached(model, lambda n: n.endswith(("mlp.hook_post", "hook_mlp_out")))
    result = ffn_updates(model, PROMPT, top=3)
    for layer in range(model.cfg.n_layers):
        m = cache[f"blocks.{layer}.mlp.hook_post"][0, -1].double()
        W_out, b_out = model.blocks[layer].mlp.W_out.double(), model.blocks[layer].mlp.b_out.double()
        total = torch.einsum("i,id->d", m, W_out) + b_out  # the sum of all sub-updates, in float64
        torch.testing.assert_close(total, cache[f"blocks.{layer}.hook_mlp_out"][0, -1].double(), rtol=0, atol=1e-6)
    assert result.per_layer["identity_error"].max() < 1e-6


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("position", [-1, 2])
def test_rows_match_a_plain_computation(request, name, position):
    model = request.getfixturevalue(name)
    cache = cached(model, lambda n: n.endswith("mlp.hook_post"))
    result = ffn_updates(model, PROMPT, top=5, n_tokens=4, position=position, target=" P")
    answer = model.to_tokens(" P", prepend_bos=False)[0, 0]
    assert result.answer_id == int(answer) and result.position == position % len(result.tokens)
    for layer in range(model.cfg.n_layers):
        m = cache[f"blocks.{layer}.mlp.hook_post"][0, position]
        W_out = model.blocks[layer].mlp.W_out
        size = (m * torch.linalg.vector_norm(W_out, dim=1)).abs()
        neurons = size.argsort(descending=True)[:5]
        rows = result.updates[result.updates.layer == layer]
        assert rows["neuron"].tolist() == neurons.tolist() and rows["rank"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(rows["coefficient"], m[neurons].numpy(), rtol=1e-6)
        np.testing.assert_allclose(rows["contribution"].abs(), size[neurons].numpy(), rtol=1e-5)
        assert (np.sign(rows["contribution"]) == np.sign(rows["coefficient"])).all()
        scores = reference_readout(model, W_out[neurons])
        for row, s, coef in zip(rows.itertuples(), scores, m[neurons]):
            top = [model.tokenizer.decode([i]) for i in s.topk(4).indices.tolist()]
            bottom = [model.tokenizer.decode([i]) for i in (-s).topk(4).indices.tolist()]
            assert row.top_tokens == top and row.bottom_tokens == bottom
            assert row.promotes == (top if coef >= 0 else bottom)
            assert row.answer_score == pytest.approx(float(coef * s[answer]), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_answer_readings_before_after_and_top_sub_updates(request, name):
    model = request.getfixturevalue(name)
    tokens = model.to_tokens(PROMPT, prepend_bos=False)
    logits, cache = model.run_with_cache(tokens)
    result = ffn_updates(model, PROMPT, top=2, promote_k=3)
    answer = int(logits[0, -1].argmax())
    assert result.answer_id == answer

    def read(resid):
        probs = model.unembed(model.ln_final(resid[None, None]))[0, 0].softmax(-1)
        return int((probs > probs[answer]).sum()), float(probs[answer])

    for row in result.per_layer.itertuples():
        L = row.layer
        mid = cache[f"blocks.{L}.hook_resid_mid"][0, -1]
        m, W_out = cache[f"blocks.{L}.mlp.hook_post"][0, -1], model.blocks[L].mlp.W_out
        top3 = (m * W_out.norm(dim=1)).abs().argsort(descending=True)[:3]
        expected = [read(mid), read(cache[f"blocks.{L}.hook_resid_post"][0, -1]),
                    read(mid + torch.einsum("i,id->d", m[top3], W_out[top3]))]
        got = [(row.rank_before, row.prob_before), (row.rank_after, row.prob_after), (row.rank_top, row.prob_top)]
        for (rank, prob), (want_rank, want_prob) in zip(got, expected):
            assert rank == want_rank and prob == pytest.approx(want_prob, rel=1e-5)
    final = logits[0, -1].softmax(-1)[answer]
    assert result.per_layer["prob_after"].iloc[-1] == pytest.approx(float(final), rel=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_neuron_table_matches_a_direct_computation(request, name):
    model = request.getfixturevalue(name)
    result = neuron_table(model, progress=False)
    table = result.table
    assert len(table) == model.cfg.n_layers * model.cfg.d_mlp and result.seconds > 0
    for layer in range(model.cfg.n_layers):
        scores = reference_readout(model, model.blocks[layer].mlp.W_out)
        rows = table[table.layer == layer]
        top, bottom = scores.topk(TABLE_TOKENS, dim=1), scores.topk(TABLE_TOKENS, dim=1, largest=False)
        assert np.array_equal(np.stack(rows["top_ids"].to_numpy()), top.indices.numpy())
        assert np.array_equal(np.stack(rows["bottom_ids"].to_numpy()), bottom.indices.numpy())
        np.testing.assert_allclose(np.stack(rows["top_scores"].to_numpy()), top.values.numpy(), rtol=1e-4, atol=1e-7)
        assert list(rows["top_tokens"].iloc[3]) == [model.tokenizer.decode([i]) for i in top.indices[3].tolist()]
    # the search finds exactly the rows holding the token, on either side, strongest first
    token = int(model.to_tokens("e", prepend_bos=False)[0, 0])
    found = neurons_promoting(model, "e", top=10_000)
    expected = {(int(r.layer), int(r.neuron), s) for r in table.itertuples() for side, s in (("top", 1), ("bottom", -1))
                if token in getattr(r, f"{side}_ids")}
    assert {(int(r.layer), int(r.neuron), int(r.side)) for r in found.itertuples()} == expected
    assert (found["score"].abs().diff().dropna() <= 0).all() and (np.sign(found["score"]) == found["side"]).all()
    assert len(expected) > 2 and len(neurons_promoting(model, "e", top=2)) == 2
    assert found.equals(search_table(table, token, top=10_000))


def test_loose_search_ignores_case_and_spaces(tiny_llama):
    table = neuron_table(tiny_llama, progress=False)
    exact = search_table(table.table, "a", top=10_000)
    loose = search_table(table.table, " A ", top=10_000, loose=True)
    assert set(exact["token"]) == {"a"} and set(loose["token"]) == {"a", "A"} and len(loose) > len(exact)
    assert search_table(table.table, "no such token", loose=True).empty


def test_table_is_cached_and_rebuilt_when_its_weights_change():
    from interp.models import load_model

    model = load_model("tiny-llama")  # its own copy: the weights are changed below
    first = neuron_table(model, progress=False)
    path = table_path(first.weights)
    assert path.is_file() and first.seconds > 0
    again = neuron_table(model, progress=False)
    assert again.seconds == 0 and again.weights == first.weights and again.table.equals(first.table)
    path.write_bytes(b"not parquet")  # a damaged cache file is built again
    rebuilt = neuron_table(model, progress=False)
    assert rebuilt.seconds > 0 and rebuilt.table.equals(first.table) and neuron_table(model).seconds == 0

    with torch.no_grad():
        model.blocks[0].attn.W_Q.data.mul_(2)  # not read by the table: the cached one still holds
    assert neuron_table(model, progress=False).seconds == 0
    with torch.no_grad():
        model.blocks[1].mlp.W_out.data[5] *= -1  # neuron 5 of layer 1 now promotes its old bottom tokens
    changed = neuron_table(model, progress=False)
    assert changed.weights != first.weights and changed.seconds > 0 and table_path(changed.weights).is_file()
    old, new = (t.set_index(["layer", "neuron"]) for t in (first.table, changed.table))
    assert np.array_equal(new.loc[(1, 5), "top_ids"], old.loc[(1, 5), "bottom_ids"])
    assert new.drop(index=(1, 5)).equals(old.drop(index=(1, 5)))


def test_result_and_table_round_trip_through_a_workspace(tiny_llama, tmp_path):
    from interp.results import Result

    result = ffn_updates(tiny_llama, PROMPT, layers=[2], top=3)
    table = neuron_table(tiny_llama, progress=False)
    assert result.weights == table.weights and saved_table(tmp_path, result.weights) is None
    back = Result.read(result.save(tmp_path))
    assert back.updates["top_tokens"].map(list).tolist() == result.updates["top_tokens"].tolist()
    assert back.per_layer.equals(result.per_layer) and back.figure().data
    folder = table.save(tmp_path)
    assert saved_table(tmp_path, result.weights).path == folder
    assert search_table(Result.read(folder).table, 65).equals(search_table(table.table, 65))


def test_cli_json_rows_and_the_table_saved_once(capsys, tmp_path):
    ws = tmp_path / "ws"
    argv = ["ffn", PROMPT, "--model", "tiny-llama", "--layers", "1-2", "--top", "3", "--json", "--workspace", str(ws)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    ffn, table = out["results"]
    rows = ffn["updates"]
    assert len(rows) == 6 and {r["layer"] for r in rows} == {1, 2}
    assert {"layer", "neuron", "coefficient", "contribution", "top_tokens", "bottom_tokens"} <= set(rows[0])
    assert table["kind"] == "neurons" and table["rows"] == 3 * 128 and "table" not in table
    assert main(["ffn", PROMPT, "--model", "tiny-llama", "--layer", "-1", "--json", "--workspace", str(ws)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["kind"] == "ffn" and {r["layer"] for r in again["updates"]} == {2}
    assert len(list((ws / "neurons").iterdir())) == 1 and len(list((ws / "ffn").iterdir())) == 2


@pytest.mark.parametrize("args, words", [
    (["--layer", "3"], "layer 3 is out of range"),
    (["--layers", "1-7"], "layer 3 is out of range"),
    (["--layers", "two"], "cannot read layers"),
    (["--position", "22"], "the prompt has 22 token"),
    (["--position", "-23"], "--position -23 is out of range"),
    (["--top", "0"], "--top"),
    (["--tokens", "0"], "--tokens"),
    (["--layer", "1", "--layers", "2"], "not allowed with"),
])
def test_cli_bad_input_is_one_line(capsys, args, words):
    assert words in run_bad(capsys, ["ffn", PROMPT, "--model", "tiny-llama", *args])


def test_cli_one_token_prompt_and_empty_prompt(capsys):
    assert "the prompt has 1 token" in run_bad(capsys, ["ffn", "x", "--model", "tiny-llama", "--position", "1"])
    assert "prompt is empty" in run_bad(capsys, ["ffn", " ", "--model", "tiny-llama"])


def test_api_refuses_bad_counts(tiny_llama):
    for kwargs in ({"top": 0}, {"n_tokens": 0}, {"promote_k": 0}, {"layers": [9]}):
        with pytest.raises(InterpError):
            ffn_updates(tiny_llama, PROMPT, **kwargs)
    with pytest.raises(InterpError):
        search_table(neuron_table(tiny_llama, progress=False).table, "a", top=0)


def test_dashboard_pages_search_the_table_of_their_own_weights(tiny_llama, tmp_path):
    from dashboards.app import render
    from dashboards.context import Context
    from dashboards.ffn import search_results

    def page(kind, name):
        return json.dumps(render(ctx, f"/result/{kind}/{name}", ""),
                          default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))

    ctx = Context(tmp_path)
    result = ffn_updates(tiny_llama, PROMPT, top=3, target="e")
    ffn = result.save(tmp_path, "run").name
    assert "no neuron table for these weights" in page("ffn", ffn)
    other = dataclasses.replace(neuron_table(tiny_llama, progress=False), weights="0" * 32)
    other.save(tmp_path, "other-model")
    assert "no neuron table for these weights" in page("ffn", ffn)  # another model's table is not searched
    name = neuron_table(tiny_llama, progress=False).save(tmp_path, "table").name
    shown = page("ffn", ffn)
    assert "Which neurons promote a token?" in shown and '"neuron-table"' in shown and '"type": "DataTable"' in shown
    found = search_results(ctx, name, " E ")
    assert set(found["token"]) == {"e", "E"} and found.equals(search_table(other.table, "e", top=50, loose=True))
    assert "Which neurons promote a token?" in page("neurons", name)
    for bad in ("", "x" * 101, None):
        with pytest.raises(InterpError):
            search_results(ctx, name, bad)


@pytest.mark.real
def test_paris_rises_through_the_late_layers(smollm):
    """SmolLM2 answers ' Paris'. Read from the residual, the answer is thousands of ranks down until layer 22;
    every MLP from 23 on raises its probability, and the top one by layer 27; layer 22's largest sub-update
    promotes ' city' (numbers in the README)."""
    result = ffn_updates(smollm, "The Eiffel Tower is located in the city of", layers=list(range(20, 30)), top=10)
    assert result.answer == " Paris"
    layers = result.per_layer.set_index("layer")
    assert (layers.loc[20:22, "rank_before"] > 1000).all() and (layers.loc[20:22, "rank_after"] > 1000).all()
    late = layers.loc[23:29]
    assert (late["prob_after"] > late["prob_before"]).all() and (late["rank_after"] <= late["rank_before"]).all()
    assert layers.loc[26, "rank_before"] > 0 and (layers.loc[27:29, "rank_after"] == 0).all()
    assert layers.loc[29, "prob_after"] > 0.5 and layers["identity_error"].max() < 1e-3
    city = result.updates[(result.updates.layer == 22) & (result.updates["rank"] == 1)].iloc[0]
    assert " city" in city.promotes and city.answer_score > 0

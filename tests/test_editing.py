"""Fact editing: exact rank-one writes, bit-exact undo, statistics cache, scoring, saving, CLI, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from interp.errors import InterpError

from circuits.editing import (
    EditRequest, MEMITSettings, PMETSettings, ROMESettings, edit_stack, make_request, memit, ngram_entropy,
    pmet, rome, save_model, second_moments,
)
from circuits.editing.evaluate import prompt_nlls
from circuits.editing.handle import w_out
from circuits.editing.memit import spread_update
from circuits.editing.optimize import ValueSettings
from circuits.editing.requests import load_records
from circuits.editing.stats import key_hook

TOKENS = 20_000  # statistics size for the tiny model (d_mlp 128)
FAST = ValueSettings(steps=5)
ROME_FAST = ROMESettings(values=FAST, context_lengths=((5, 5),), stats_tokens=TOKENS)
MEMIT_FAST = MEMITSettings(values=ValueSettings(steps=5, clamp=0.75), stats_tokens=TOKENS)
PMET_FAST = PMETSettings(values=ValueSettings(lr=0.2, steps=5, kl_factor=1.0, clamp=0.75), stats_tokens=TOKENS)
EIFFEL = {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome"}
LOUVRE = {"prompt": "{} is in", "subject": "The Louvre", "target_new": "Berlin"}


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights changed"


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """The tiny model with its key statistics ready; one thread (tiny matmuls only lose from more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    second_moments(tiny_llama, [0, 1, 2], n_tokens=TOKENS, progress=False)
    assert not edit_stack(tiny_llama)
    yield tiny_llama
    torch.set_num_threads(threads)
    assert not edit_stack(tiny_llama), "a test left an edit applied"


def test_rome_rank_one_update_maps_key_to_value_exactly(tiny):
    before = w_out(tiny, 1).detach().clone()
    with rome(tiny, EIFFEL, layer=1, settings=ROME_FAST) as handle:
        info = handle.info["edits"][0]
        delta = (w_out(tiny, 1) - before).double()
        assert torch.linalg.matrix_rank(delta, atol=1e-5 * delta.abs().max()) == 1
        out = info["key"] @ w_out(tiny, 1) + tiny.blocks[1].mlp.b_out
        torch.testing.assert_close(out, info["value"], rtol=1e-5, atol=1e-5)
        # and the model really computes that value at the subject's last token
        _, cache = tiny.run_with_cache(tiny.to_tokens("The Eiffel Tower is located in the city of", prepend_bos=False),
                                       names_filter="blocks.1.hook_mlp_out")
        last = len("The Eiffel Tower") - 1  # byte-level tokenizer: one token per character
        torch.testing.assert_close(cache["blocks.1.hook_mlp_out"][0, last], info["value"], rtol=1e-4, atol=1e-4)
        assert torch.isclose(info["u"].norm(), torch.tensor(1.0))


def test_value_optimisation_lowers_target_nll_with_clamp_and_early_stop(tiny):
    from circuits.editing.optimize import optimize_values

    # the subject ends the prompt, so the delta reaches the first target token directly
    requests = [make_request("The city of {}", "Paris", "Q"), make_request("A {}", "cat", "Z")]
    sites = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    free = ValueSettings(steps=6, kl_factor=0.0, weight_decay=0.0, clamp=1e6)
    values = optimize_values(tiny, requests, sites, ["{}", "Hi. {}"], free, progress=False)
    assert values.target.shape == (2, 2, tiny.cfg.d_model)
    # a random model's logits are nearly flat (|W_U| ~ 0.02 after RMSNorm), so the reachable drop is small
    assert all(n[-1] < n[0] - 0.1 for n in values.nlls)
    tight = optimize_values(tiny, requests, sites, ["{}"], ValueSettings(steps=6, clamp=0.5), progress=False)
    norms = (tight.target - tight.init).norm(dim=-1) / tight.init.norm(dim=-1)
    assert (norms <= 0.5 + 1e-5).all()
    stopped = optimize_values(tiny, requests[:1], sites, ["{}"], dataclasses.replace(free, stop_loss=1e9),
                              progress=False)
    assert len(stopped.losses[0]) == 1 and torch.equal(stopped.target, stopped.init)


def test_stacked_edits_undo_bit_for_bit_in_reverse_only(tiny):
    before = state(tiny)
    first = rome(tiny, EIFFEL, layer=1, settings=ROME_FAST)
    after_first = state(tiny)
    second = memit(tiny, [EIFFEL, LOUVRE], layers=[0, 1], settings=MEMIT_FAST)
    third = pmet(tiny, [LOUVRE], layers="1-2", settings=PMET_FAST)
    assert [h.method for h in edit_stack(tiny)] == ["rome", "memit", "pmet"]
    with pytest.raises(InterpError, match="later edit"):
        first.undo()
    third.undo()
    second.undo()
    assert_same(tiny, after_first)
    first.undo()
    assert_same(tiny, before)
    with pytest.raises(InterpError, match="already undone"):
        first.undo()


def test_memit_spread_writes_targets_into_one_layer(tiny):
    """With one layer, plain-prompt keys and lambda ~ 0, the update maps every key onto its target."""
    requests = [make_request(**EIFFEL), make_request(**LOUVRE)]
    hook = "blocks.1.hook_resid_post"
    from circuits.editing.keys import plain

    current = plain(tiny, hook, requests)
    z = current + torch.randn(current.shape, generator=torch.Generator().manual_seed(0))
    covs = second_moments(tiny, [1], n_tokens=TOKENS, progress=False)
    before = w_out(tiny, 1).detach().clone()
    try:
        spread_update(tiny, requests, [1], [["{}"]], z, hook, 1e-6, float, covs)
        torch.testing.assert_close(plain(tiny, hook, requests), z, rtol=1e-3, atol=1e-3)
    finally:
        with torch.no_grad():
            w_out(tiny, 1).copy_(before)


def test_lambda_keeps_the_reference_ratio_to_the_mlp_width_unless_given(tiny):
    from circuits.editing.memit import REFERENCE_D_MLP, update_weight

    assert update_weight(tiny, None, 15_000.0) == pytest.approx(15_000.0 * tiny.cfg.d_mlp / REFERENCE_D_MLP)
    assert update_weight(tiny, 20_000.0, 15_000.0) == 20_000.0
    handle = memit(tiny, [make_request(**EIFFEL)], [1, 2], settings=MEMIT_FAST, progress=False)
    try:
        assert handle.info["mom2_update_weight"] == pytest.approx(15_000.0 * tiny.cfg.d_mlp / REFERENCE_D_MLP)
    finally:
        handle.undo()


def test_statistics_match_direct_computation_cache_and_resume(tiny, tmp_path, monkeypatch):
    from interp.corpus import load_corpus
    from interp.fingerprint import corpus_fingerprint
    from interp.streaming import stream_activations

    from circuits.editing import stats

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    n = 8192
    keys = torch.cat([a[key_hook(2)].reshape(-1, 128).double() for _, a in stream_activations(
        tiny, [key_hook(2)], load_corpus(), stats.BATCH_SIZE, stats.SEQ_LEN, n, progress=False)])
    expected = keys.T @ keys / len(keys)

    # interrupt after two batches (partial sums saved after each), then resume
    monkeypatch.setattr(stats, "SAVE_EVERY", 1)
    real = stats.stream_activations

    def interrupted(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(stats, "stream_activations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        second_moments(tiny, 2, n_tokens=n, progress=False)
    path = stats.stats_path(tiny, 2, corpus_fingerprint(load_corpus()), n)
    assert path.with_suffix(".partial").is_file() and not path.is_file()
    monkeypatch.setattr(stats, "stream_activations", real)
    got = second_moments(tiny, 2, n_tokens=n, progress=False)[2]
    assert got.dtype == torch.float64 and path.is_file()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)

    def fail(*args, **kwargs):
        raise AssertionError("cached statistics were recomputed")

    monkeypatch.setattr(stats, "stream_activations", fail)
    torch.testing.assert_close(second_moments(tiny, 2, n_tokens=n, progress=False)[2], got)


def test_bad_input_is_one_line_error_and_changes_nothing(tiny, tmp_path):
    before = state(tiny)
    cases = [
        ({**EIFFEL, "prompt": "The Eiffel Tower is in"}, "no {}"),
        ({**EIFFEL, "prompt": "The Louvre is in"}, "not in the prompt"),
        ({**EIFFEL, "prompt": "{} and {} are in"}, "placeholders"),
        ({**EIFFEL, "target_new": " "}, "target is empty"),
    ]
    for request, message in cases:
        with pytest.raises(InterpError, match=message) as err:
            rome(tiny, request, layer=1, settings=ROME_FAST)
        assert "\n" not in str(err.value)
    with pytest.raises(InterpError, match="out of range"):
        rome(tiny, EIFFEL, layer=7, settings=ROME_FAST)
    with pytest.raises(InterpError, match="out of range"):
        memit(tiny, [EIFFEL], layers="1-5", settings=MEMIT_FAST)
    with pytest.raises(InterpError, match="equals the true one"):
        rome(tiny, {**EIFFEL, "target_true": " Rome"}, layer=1, settings=ROME_FAST)
    # an eval file that is not CounterFact-shaped names the first bad record
    good = make_request(**EIFFEL, target_true="Paris", case_id=7).to_record()
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, {"case_id": 8, "requested_rewrite": {"prompt": "{} x"}}]))
    with pytest.raises(InterpError, match=r"record 1 \(case_id 8\).*subject"):
        load_records(path)
    assert_same(tiny, before)


def test_failure_during_edit_restores_weights(tiny, monkeypatch):
    import importlib

    memit_module = importlib.import_module("circuits.editing.memit")
    before = state(tiny)

    def broken(*args, **kwargs):
        with torch.no_grad():
            w_out(tiny, 1).add_(1.0)  # a partial write, then a crash
        raise RuntimeError("boom")

    monkeypatch.setattr(memit_module, "spread_update", broken)
    with pytest.raises(RuntimeError, match="boom"):
        memit(tiny, [EIFFEL], layers=[1], settings=MEMIT_FAST, progress=False)
    assert_same(tiny, before)
    assert not edit_stack(tiny)


def test_records_round_trip_and_target_spacing():
    request = make_request("{} plays", "Messi", "basketball", "soccer", case_id=3, paraphrase_prompts=["Messi is a"])
    assert request.target_new == " basketball" and request.target_true == " soccer"
    record = request.to_record()
    assert record["requested_rewrite"]["target_new"] == {"str": " basketball"}
    from circuits.editing.requests import from_record

    assert from_record(record) == request
    assert isinstance(request, EditRequest)


def test_scores_and_fluency(tiny):
    nll_new, nll_true, _, _ = prompt_nlls(tiny, ["ab"], " c", " d")
    tokens = tiny.to_tokens("ab c", prepend_bos=False)
    lp = tiny(tokens).log_softmax(-1)[0]
    target = tiny.to_tokens(" c", prepend_bos=False)[0]
    manual = -lp[torch.arange(1, 1 + len(target)), target].mean()
    assert nll_new[0] == pytest.approx(float(manual), rel=1e-5)
    # bigrams of "a b a b": {ab: 2, ba: 1}; trigrams: {aba: 1, bab: 1}
    h2 = -(2 / 3 * torch.log2(torch.tensor(2 / 3)) + 1 / 3 * torch.log2(torch.tensor(1 / 3)))
    assert ngram_entropy("a b a b") == pytest.approx(float((2 / 3 * h2 + 4 / 3 * 1.0) / 2), rel=1e-6)


def test_save_loads_back_with_the_edit(tiny, tmp_path):
    from interp.models import load_model

    with rome(tiny, EIFFEL, layer=1, settings=ROME_FAST):
        folder = save_model(tiny, tmp_path / "edited")
        edited = w_out(tiny, 1).detach().clone()
        tokens = tiny.to_tokens("The Eiffel Tower is located in", prepend_bos=False)
        logits = tiny(tokens)
    reloaded = load_model(str(folder))
    assert torch.equal(w_out(reloaded, 1), edited)
    torch.testing.assert_close(reloaded(tokens), logits)
    assert json.loads((folder / "interp_edits.json").read_text())["edits"][0]["method"] == "rome"
    with pytest.raises(InterpError, match="not empty"):
        save_model(tiny, folder)


def test_gpt2_architecture_edits_and_saves(tiny_gpt2, tmp_path):
    """GPT-2's MLP output weight is stored untransposed (Conv1D); saving must still round-trip."""
    from interp.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with rome(tiny_gpt2, EIFFEL, layer=2, settings=ROME_FAST, progress=False) as handle:
            info = handle.info["edits"][0]
            out = info["key"] @ w_out(tiny_gpt2, 2) + tiny_gpt2.blocks[2].mlp.b_out
            torch.testing.assert_close(out, info["value"], rtol=1e-5, atol=1e-5)
            folder = save_model(tiny_gpt2, tmp_path / "gpt2-edited")
            edited = w_out(tiny_gpt2, 2).detach().clone()
        assert torch.equal(w_out(load_model(str(folder)), 2), edited)
    finally:
        torch.set_num_threads(threads)


def test_cli_edit_json(tiny, capsys, tmp_path):
    from interp.cli import main

    code = main(["edit", "--model", "tiny-llama", "--subject", "The Eiffel Tower", "--prompt",
                 "{} is located in the city of", "--target", " Rome", "--layers", "1", "--stats-tokens",
                 str(TOKENS), "--generations", "1", "--gen-tokens", "5", "--json", "--workspace", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["kind"] == "edit" and out["layers"] == [1]
    assert set(out["scores"]) == {"pre", "post"} and out["scores"]["pre"]["efficacy"] == 0.0
    assert "saved" in out
    code = main(["edit", "--model", "tiny-llama", "--subject", "Louvre", "--prompt", "The Eiffel Tower is in",
                 "--target", " Rome"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the prompt" in err


@pytest.mark.real
def test_rome_moves_the_eiffel_tower_to_rome(smollm):
    """Default layer (4); 5 context prefixes instead of 20 and 20k-token statistics keep it fast."""
    prompt = "The Eiffel Tower is located in the city of"
    neighbors = ["The Louvre is located in the city of", "The capital of France is", "The Colosseum is located in the city of"]

    def top(text: str) -> str:
        return smollm.tokenizer.decode([int(smollm(smollm.to_tokens(text, prepend_bos=False))[0, -1].argmax())])

    before = [top(p) for p in [prompt, *neighbors]]
    assert before[0] == " Paris"
    weights = state(smollm)
    with pytest.raises(InterpError, match="already answers"):
        rome(smollm, {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Paris"})
    with rome(smollm, {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": " Rome"},
              settings=ROMESettings(context_lengths=((5, 5),), stats_tokens=TOKENS)):
        assert top(prompt) == " Rome"
        assert top("Where is the Eiffel Tower? It is in the city of") == " Rome"
        assert [top(p) for p in neighbors] == before[1:]
    assert_same(smollm, weights)

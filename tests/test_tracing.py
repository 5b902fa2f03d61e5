"""Causal tracing: exactness against the one-pass-per-cell reference, semantics, results, CLI, knockout."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.knockout import knockout
from circuits.reference import trace_reference
from circuits.trace_study import trace_facts
from circuits.tracing import GROUPS, TraceResult, check_answer_prob, embedding_noise_std, trace, window_layers
from interp.cli import main
from interp.errors import InterpError

PROMPT, SUBJECT = "The Eiffel Tower is in Paris", "Eiffel"


@pytest.mark.parametrize(("fixture", "window"), [("tiny_llama", 2), ("tiny_gpt2", 1)])
def test_fast_trace_equals_the_reference_loop(fixture, window, request):
    model = request.getfixturevalue(fixture)
    prompt, subject = "An Eiffel is in", "Eiffel"
    fast = trace(model, prompt, subject, samples=3, noise_std=1.0, window=window, seed=4)
    ref, high, low = trace_reference(model, prompt, subject, noise_std=1.0, samples=3, window=window, seed=4,
                                     progress=False)
    assert fast.high == pytest.approx(high, abs=1e-7) and fast.low == pytest.approx(low, abs=1e-7)
    for kind in ("hidden", "mlp", "attn"):
        assert fast.scores[kind].shape == (len(fast.tokens), model.cfg.n_layers)
        assert float(fast.scores[kind].std()) > 1e-6  # the restorations do move the score
        torch.testing.assert_close(fast.scores[kind], ref[kind], atol=1e-7, rtol=1e-5)


def test_chunking_does_not_change_the_scores(tiny_llama, monkeypatch):
    import functools

    import circuits.restore
    import circuits.tracing

    whole = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, window=3)
    one_patch_per_chunk = functools.partial(circuits.restore.run_patches, max_tokens=1)
    monkeypatch.setattr(circuits.tracing, "run_patches", one_patch_per_chunk)
    chunked = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, window=3)
    for kind in whole.scores:
        torch.testing.assert_close(chunked.scores[kind], whole.scores[kind], atol=1e-6, rtol=1e-5)


def test_windows_clipped_at_layer_0_share_their_first_layers(tiny_llama):
    from circuits.restore import Patch, _joins
    from circuits.tracing import _restore_writes

    _, clean = tiny_llama.run_with_cache(tiny_llama.to_tokens(PROMPT, prepend_bos=False))
    patches = [Patch(_restore_writes("mlp", 2, layer, clean, 3, 3)) for layer in range(3)]  # windows [0,2) [0,3) [1,3)
    # the second window restores what the first does in layer 0-1, so it forks from it at layer 2
    assert _joins(patches) == [(0, None), (2, 0), (1, None)]


def test_window_layers_match_the_reference_code():
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(12, 10, 30)) == list(range(7, 17))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(window_layers(4, 1, 30)) == [4] and list(window_layers(4, 3, 30)) == [3, 4, 5]


def test_semantics(tiny_llama):
    result = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, kinds=("hidden",))
    start, end = result.subject_range
    assert result.tokens[start:end] == list("Eiffel") and start == 4
    hidden = result.scores["hidden"]
    assert torch.all(hidden[:start] == result.low)  # the noise never reaches earlier positions
    # restoring the last block output at the last position gives back the clean output
    assert float(hidden[-1, -1]) == pytest.approx(result.high, abs=1e-6)
    assert torch.allclose(hidden[start:-1, -1], torch.tensor(result.low), atol=1e-6)
    again = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, kinds=("hidden",))
    assert torch.equal(again.scores["hidden"], hidden)  # one seeded draw
    other = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, kinds=("hidden",), seed=2)
    assert not torch.equal(other.scores["hidden"], hidden)


def test_target_and_multi_token_target(tiny_llama):
    result = trace(tiny_llama, PROMPT, SUBJECT, target="Xyz", samples=1, noise_std=1.0, kinds=("mlp",))
    assert result.answer == "X" and result.target_multi_token
    assert "several tokens" in result.summary()
    probs = tiny_llama(tiny_llama.to_tokens(PROMPT, prepend_bos=False))[0, -1].softmax(-1)
    assert result.high == pytest.approx(float(probs[result.answer_id]), abs=1e-7)


def test_default_noise_is_three_embedding_stds_and_cached(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    std = embedding_noise_std(tiny_llama)
    assert std == pytest.approx(float(tiny_llama.W_E.std()), rel=0.2)  # subject bytes of a random embedding
    assert len(list((tmp_path / "tracing").iterdir())) == 1
    result = trace(tiny_llama, PROMPT, SUBJECT, samples=1, kinds=("hidden",))
    assert result.noise_std == pytest.approx(3 * std)
    halved = trace(tiny_llama, PROMPT, SUBJECT, samples=1, kinds=("hidden",), noise=2.0)
    assert halved.noise_std == pytest.approx(2 * std)


def test_bad_input(tiny_llama):
    with pytest.raises(InterpError, match="not in the prompt"):
        trace(tiny_llama, PROMPT, "Louvre")
    with pytest.raises(InterpError, match="last token"):
        trace(tiny_llama, PROMPT, "Paris")
    with pytest.raises(InterpError, match="samples"):
        trace(tiny_llama, PROMPT, SUBJECT, samples=0)
    with pytest.raises(InterpError, match="window"):
        trace(tiny_llama, PROMPT, SUBJECT, window=0)
    with pytest.raises(InterpError, match="kind"):
        trace(tiny_llama, PROMPT, SUBJECT, kinds=("mlps",))
    with pytest.raises(InterpError, match="--noise-std must be a finite number above 0"):
        trace(tiny_llama, PROMPT, SUBJECT, noise_std=0.0)
    with pytest.raises(InterpError, match="no probability"):
        check_answer_prob(tiny_llama, 5, 0.0)


def test_result_contract_and_round_trip(tiny_llama, tmp_path):
    result = trace(tiny_llama, PROMPT, SUBJECT, samples=2, noise_std=1.0, window=2)
    payload = json.loads(json.dumps(result.to_dict()))
    for key in ("tokens", "subject_range", "answer", "high", "low", "kinds", "seconds"):
        assert key in payload
    T, L = len(result.tokens), tiny_llama.cfg.n_layers
    for kind in ("hidden", "mlp", "attn"):
        scores = payload["kinds"][kind]["scores"]
        assert len(scores) == T and len(scores[0]) == L
        assert list(payload["kinds"][kind]["group_effects"]) == list(GROUPS)
    back = TraceResult.read(result.save(tmp_path))
    assert torch.equal(back.scores["mlp"], result.scores["mlp"]) and back.subject_range == result.subject_range
    assert len(result.to_frame()) == 3 * T * L
    fig = result.figure()
    assert len(fig.data) == 3 and any(label.endswith("*") for label in fig.data[0].y)
    groups = result.group_effects("hidden")
    assert groups.shape == (len(GROUPS), L)
    # first subject token, middle subject tokens (mean of 'iffe'), last subject token ... last token
    ie = result.indirect_effect("hidden")
    torch.testing.assert_close(groups[1], ie[5:9].mean(0))
    torch.testing.assert_close(groups[5], ie[-1])
    assert "mlp effect peaks at token" in result.summary()


def test_study_averages_the_groups(tiny_llama, monkeypatch):
    """Each token of a group counts once, over all facts the model knows (ROME's notebook)."""
    records, traces = [], []
    for i, prompt in enumerate(["{} is in Paris", "I saw {} in the"]):
        records.append({"case_id": i, "requested_rewrite": {"prompt": prompt, "subject": "the Eiffel"}})
        traces.append(trace(tiny_llama, prompt.replace("{}", "the Eiffel"), "the Eiffel", kinds=("hidden",),
                            samples=2, noise_std=1.0))
    monkeypatch.setattr("circuits.trace_study.load_facts", lambda **kw: records)  # as if both were verified
    study = trace_facts(tiny_llama, "builtin", limit=5, kinds=("hidden",), samples=2, noise_std=1.0)
    assert study.case_ids == [0, 1] and study.effects["hidden"].shape == (len(GROUPS), tiny_llama.cfg.n_layers)
    middle = [t.indirect_effect("hidden")[t.subject_range[0] + 1:t.subject_range[1] - 1] for t in traces]
    torch.testing.assert_close(study.effects["hidden"][1], torch.cat(middle).mean(0))
    torch.testing.assert_close(study.effects["hidden"][5], (traces[0].indirect_effect("hidden")[-1]
                                                            + traces[1].indirect_effect("hidden")[-1]) / 2)
    assert study.high == pytest.approx((traces[0].high + traces[1].high) / 2)
    assert "average indirect effect" in study.summary() and len(study.figure().data) == 1


def test_study_needs_known_facts(tiny_llama):
    with pytest.raises(InterpError, match="none of the facts"):
        trace_facts(tiny_llama, "builtin", limit=2)


def test_knockout_matches_a_plain_hook(tiny_llama):
    result = knockout(tiny_llama, PROMPT, SUBJECT, window=3)
    L = tiny_llama.cfg.n_layers
    assert set(result.change) == {"subject", "non-subject", "last"} and result.change["subject"].shape == (L,)
    start, end = result.subject_range

    def block(scores, hook):
        scores[:, :, -1, start:end] = float("-inf")
        return scores

    tokens = tiny_llama.to_tokens(PROMPT, prepend_bos=False)
    hooks = [(f"blocks.{layer}.attn.hook_attn_scores", block) for layer in range(3)]  # window of 3 around layer 1
    knocked = float(tiny_llama.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1].softmax(-1)[result.answer_id])
    expected = (knocked - result.prob) / result.prob * 100
    assert float(result.change["subject"][1]) == pytest.approx(expected, abs=1e-4)
    assert "largest drop" in result.summary()


def test_cli_trace_json_and_errors(capsys):
    code = main(["trace", PROMPT, "--subject", SUBJECT, "--model", "tiny-llama", "--samples", "2",
                 "--noise-std", "1.0", "--kind", "mlp", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload["kinds"]) == ["mlp"] and payload["subject_range"] == [4, 10]
    assert main(["trace", PROMPT, "--model", "tiny-llama"]) == 2
    assert "--subject" in capsys.readouterr().err
    assert main(["trace", PROMPT, "--subject", SUBJECT, "--model", "tiny-llama", "--samples", "0"]) == 2
    assert main(["trace", PROMPT, "--subject", "Paris", "--model", "tiny-llama"]) == 2
    assert "last token" in capsys.readouterr().err


def test_cli_trace_with_knockout_saves_both(tmp_path, capsys):
    code = main(["trace", PROMPT, "--subject", SUBJECT, "--model", "tiny-gpt2", "--samples", "1",
                 "--noise-std", "1.0", "--kind", "hidden", "--knockout", "--workspace", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "hidden effect peaks" in out and "attention knockout" in out
    assert len([p for p in tmp_path.rglob("result.json")]) == 2


@pytest.mark.real
def test_eiffel_tower_mlp_effect_peaks_on_the_subject(smollm):
    """The paper's setting (10 noise samples): the MLP effect peaks on a subject token and every cell lies
    between the corrupted and the clean score, up to the overshoot restoration is known for.

    Measured on SmolLM2-135M: high 0.702, low 0.0163; MLP peak 'iffel' layer 2 (0.377); cells range
    0.0002 (MLP window at the last token, layers 24-29) to 0.763 (hidden state of ' Tower', layer 3).
    With 3 samples the peak moves and more cells leave the band, so the test uses the paper's 10.
    """
    result = trace(smollm, "The Eiffel Tower is located in the city of", "Eiffel Tower", kinds=("mlp", "hidden"),
                   samples=10, progress=False)
    assert result.answer == " Paris" and result.high > 0.5 and result.low < 0.1
    peak = result.peak("mlp")
    assert peak["in_subject"] and peak["indirect_effect"] > 0.2
    for kind in ("mlp", "hidden"):
        scores = result.scores[kind]
        assert float(scores.max()) <= result.high + 0.1, kind
        assert float(scores.min()) >= result.low - 0.02, kind
        assert float(scores.median()) < result.high / 2, kind  # most single restorations do not recover it

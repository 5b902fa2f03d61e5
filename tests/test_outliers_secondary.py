"""Secondary sinks: the first-token-id rule, the primary-sink requirement, the creating MLP and the
norm relations, each checked against a plain computation from `run_with_cache` on tiny-llama."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interp.outliers import secondary_sinks
from interp.outliers.secondary import SecondaryResult, creating_mlp, sink_head_attention

# bytes; 'a' (the first token) comes back at positions 6 and 13, 'c' at 2
PROMPT = "a cat sat on a mat in the sun"
DIM = 17


def plant_mlp(value: float, positions, block: int = 0):
    """Add `value` at DIM on `positions` to block `block`'s MLP output (so that MLP creates the sink)."""
    def fn(act, hook):
        act[:, list(positions), DIM] += value
        return act
    return (f"blocks.{block}.hook_mlp_out", fn)


def sink_on_first(block: int, boost: float = 3.0):
    def fn(scores, hook):
        scores[..., 0] += boost
        return scores
    return (f"blocks.{block}.attn.hook_attn_scores", fn)


SINKS = [sink_on_first(1), sink_on_first(2)]


def test_copies_of_the_first_token_are_not_secondary_sinks(tiny_llama):
    again = PROMPT.index("a", 1)
    with tiny_llama.hooks(fwd_hooks=[plant_mlp(1000.0, (0, again)), *SINKS]):
        assert secondary_sinks(tiny_llama, [PROMPT]).to_frame().empty
    with tiny_llama.hooks(fwd_hooks=[plant_mlp(1000.0, (0, again, 2)), *SINKS]):
        events = secondary_sinks(tiny_llama, [PROMPT]).to_frame()
    assert events["position"].unique().tolist() == [2] and set(events["token"]) == {"c"}


def test_events_match_a_direct_computation(tiny_llama):
    spot = PROMPT.index("sun")
    hooks = [plant_mlp(400.0, (0, spot)), plant_mlp(900.0, (0,), block=1), *SINKS]
    with tiny_llama.hooks(fwd_hooks=hooks):
        result = secondary_sinks(tiny_llama, [PROMPT], sink_threshold=0.3)
        _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens(PROMPT, prepend_bos=False))
    event = result.to_frame().set_index("position").loc[spot]
    assert (event["start_layer"], event["end_layer"]) == (1, 2)

    # attention: mean over heads where alpha[h, 0] > 0.3 of the attention each query gives the token
    T = cache["blocks.1.attn.hook_pattern"].shape[-1]
    scores, firsts = [], []
    for layer in (1, 2):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [H, T, T]
        alpha = torch.stack([p[:, j:, j].sum(-1) / (T - j) for j in range(T)], -1)  # [H, T]
        heads = alpha[:, 0] > 0.3
        assert heads.any()
        scores.append(alpha[heads, spot].mean())
        firsts.append(alpha[heads, 0].mean())
    assert event["attention"] == pytest.approx(float(sum(scores) / 2), rel=1e-5)
    assert event["first_attention"] == pytest.approx(float(sum(firsts) / 2), rel=1e-5)

    # creating MLP: the block before hidden state 1 (block 0) with the largest output norm on the token
    norms = torch.stack([cache[f"blocks.{b}.hook_mlp_out"][0].norm(dim=-1) for b in range(2)])  # [blocks, T]
    assert event["mlp_layer"] == 0
    assert event["mlp_norm"] == pytest.approx(float(norms[0, spot]), rel=1e-5)
    others = torch.cat([norms[0, 1:spot], norms[0, spot + 1:]])
    assert event["mlp_ratio"] == pytest.approx(float(norms[0, spot] / others.median()), rel=1e-5)


def test_creating_mlp_looks_only_before_the_sink():
    norms = torch.tensor([[1.0, 2.0, 3.0, 1.0], [1.0, 1.0, 9.0, 1.0], [1.0, 50.0, 1.0, 1.0]])
    assert creating_mlp(norms, 2, 1) == (0, 3.0, pytest.approx(3.0 / 1.0))  # others at block 0: 2, 1
    assert creating_mlp(norms, 2, 3)[:2] == (1, 9.0)  # block 2 writes more elsewhere, not here


def test_sink_head_attention_averages_only_primary_sink_heads():
    alpha = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.5, 0.3, 0.2]])[None, None]  # [1, 1, H=3, T=3]
    mean, has = sink_head_attention(alpha, 0.4)
    torch.testing.assert_close(mean[0, 0], torch.tensor([0.7, 0.2, 0.1]))
    assert has.tolist() == [[True]]
    mean, has = sink_head_attention(alpha, 0.95)
    assert has.tolist() == [[False]] and mean.abs().sum() == 0


def test_relations_match_numpy():
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"seq": range(12), "mlp_norm": rng.uniform(1, 10, 12), "attention": rng.uniform(0, 1, 12),
                           "n_layers": rng.integers(1, 6, 12)})
    result = SecondaryResult(model="m", source="s", n_sequences=1, n_tokens=1, threshold=0.9, layers=[1],
                             events=events, typical_cos=torch.zeros(1), example_tokens=[], example_cos=torch.zeros(1, 1))
    rel = result.relations().set_index("y")
    for y in ("attention", "n_layers"):
        x, v = events["mlp_norm"].to_numpy(), events[y].to_numpy(float)
        assert rel.loc[y, "pearson"] == pytest.approx(np.corrcoef(x, v)[0, 1])
        ranks = [pd.Series(a).rank().to_numpy() for a in (x, v)]
        assert rel.loc[y, "spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1])
    few = SecondaryResult(**{**result.__dict__, "events": events.head(2)})
    assert few.relations()["pearson"].isna().all()  # None, never a NaN from two points

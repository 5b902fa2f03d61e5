"""Attention-output SAEs (Kissane et al. 2024) on `blocks.L.attn.hook_z`: training on the 4-d hook and
splicing back, head shares of the weights, the exact split of a pre-activation into (head, source)
terms (grouped-query attention on tiny-llama, plain heads on tiny-gpt2), feature tables, CLI and pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens.saes.sae import SAEMetadata

from interp.cli import main
from interp.errors import InterpError
from interp.sae import TrainConfig, load_sae, train
from interp.sae.attention import attribute_feature, encoder_scale, head_shares
from interp.tokens import encode

Z = "blocks.1.attn.hook_z"
PROMPT = "The cat sat on the mat because it was warm."


def random_sae(arch: str, d_in: int, hook: str = Z, seed: int = 0):
    """An sae-lens inference SAE with random weights and biases (decoder rows not unit norm, so that a
    TopK SAE's rescaling by them counts)."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    common = dict(d_in=d_in, d_sae=48, apply_b_dec_to_input=True, metadata=SAEMetadata(hook_name=hook))
    sae = (TopKSAE(TopKSAEConfig(k=6, rescale_acts_by_decoder_norm=True, **common)) if arch == "topk"
           else StandardSAE(StandardSAEConfig(**common)))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(48, 1) + 0.5)
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.1)
    sae.turn_off_forward_pass_hook_z_reshaping()
    return sae.eval()


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(hook=Z, arch="topk", k=8, width=256, tokens=4096, batch_tokens=128, lm_batch_size=8, seq_len=64,
                buffer_tokens=1024, norm_tokens=512, lr=1e-2, checkpoint_every=0, progress=False, model="tiny-llama")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def z_sae(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("attn") / "z"
    train(tiny_llama, tiny_cfg(), out)
    return out


def plain_terms(model, sae, prompt: str, layer: int, feature: int, position: int) -> np.ndarray:
    """[heads, sources] pattern[h, d, s] * (v[s, h // group] . W_enc[h block, f]) * c_f by explicit loops."""
    _, cache = model.run_with_cache(encode(model, prompt))
    pattern, v = cache[f"blocks.{layer}.attn.hook_pattern"][0], cache[f"blocks.{layer}.attn.hook_v"][0]
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    group = n_heads // v.shape[1]
    c = float(encoder_scale(sae)[feature])
    out = np.zeros((n_heads, position + 1))
    for h in range(n_heads):
        w = sae.W_enc[h * d_head:(h + 1) * d_head, feature].detach()
        for s in range(position + 1):
            out[h, s] = float(pattern[h, position, s]) * float(v[s, h // group] @ w) * c
    return out


@pytest.mark.parametrize("arch", ["topk", "relu"])
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2"])
def test_pre_activation_is_the_exact_sum_of_head_source_terms(request, model_name, arch):
    model = request.getfixturevalue(model_name)
    sae = random_sae("topk" if arch == "topk" else "standard", model.cfg.n_heads * model.cfg.d_head)
    for feature, position in ((3, -1), (17, 5)):
        r = attribute_feature(model, sae, PROMPT, feature, position=position)
        total = r.terms["attribution"].sum() + r.decoder_bias + r.encoder_bias
        assert total == pytest.approx(r.pre_activation, abs=1e-5)
        # the pre-activation itself, from the cached hook_z as the SAE reads it
        _, cache = model.run_with_cache(encode(model, PROMPT), names_filter=Z)
        x = cache[Z][0, r.position].reshape(1, -1)
        c = float(encoder_scale(sae)[feature])
        expected = float(((x - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature]) * c)
        assert r.pre_activation == pytest.approx(expected, abs=1e-5)
        assert r.activation == pytest.approx(float(sae.encode(x)[0, feature]), abs=1e-6)
        grid = r.terms.pivot(index="head", columns="source", values="attribution").to_numpy()
        np.testing.assert_allclose(grid, plain_terms(model, sae, PROMPT, 1, feature, r.position), atol=1e-6)
        assert r.heads["attribution"].sum() == pytest.approx(r.terms["attribution"].sum(), abs=1e-6)
        assert r.by_source()["attribution"].sum() == pytest.approx(r.terms["attribution"].sum(), abs=1e-6)
    groups = r.heads.groupby("kv_head")["head"].apply(list).tolist()
    assert groups == ([[0, 1], [2, 3]] if model_name == "tiny_llama" else [[0], [1], [2], [3]])  # GQA shares KV heads


def test_head_shares_match_a_plain_computation():
    sae = random_sae("topk", 64)
    shares = head_shares(sae, n_heads=4)
    w_enc, w_dec = sae.W_enc.detach().numpy(), sae.W_dec.detach().numpy()
    for f in (0, 7, 47):
        enc = np.array([np.linalg.norm(w_enc[h * 16:(h + 1) * 16, f]) for h in range(4)])
        dec = np.array([np.linalg.norm(w_dec[f, h * 16:(h + 1) * 16]) for h in range(4)])
        np.testing.assert_allclose(shares["encoder"][f].numpy(), enc / enc.sum(), rtol=1e-5)
        np.testing.assert_allclose(shares["decoder"][f].numpy(), dec / dec.sum(), rtol=1e-5)
    with torch.no_grad():  # a head that the feature does not read gets no share
        sae.W_enc[:16, 5] = 0
    assert float(head_shares(sae, 4)["encoder"][5, 0]) == 0.0


def test_other_saes_and_out_of_range_requests_are_refused(tiny_llama):
    with pytest.raises(InterpError, match="hook_z"):
        attribute_feature(tiny_llama, random_sae("topk", 64, hook="blocks.1.hook_resid_post"), PROMPT, 0)
    sae = random_sae("topk", 64)
    with pytest.raises(InterpError, match="feature 48 is out of range"):
        attribute_feature(tiny_llama, sae, PROMPT, 48)
    n = encode(tiny_llama, PROMPT).shape[1]
    with pytest.raises(InterpError, match=f"position {n} is out of range"):
        attribute_feature(tiny_llama, sae, PROMPT, 0, position=n)


def test_training_on_hook_z_evaluates_spliced_back_and_feature_pages_show_sources(tiny_llama, z_sae, tmp_path):
    from dashboards.app import render
    from dashboards.context import Context
    from interp.sae.evaluate import evaluate
    from interp.sae.features import feature_statistics

    sae = load_sae(z_sae)
    assert sae.cfg.d_in == tiny_llama.cfg.n_heads * tiny_llama.cfg.d_head  # heads flattened
    scores = evaluate(tiny_llama, sae, tokens=1024, path=str(z_sae), progress=False)
    assert scores.explained_variance > 0.3 and 0 < scores.kl_sae < scores.kl_zero  # spliced into the 4-d hook

    stats = feature_statistics(tiny_llama, sae, tmp_path, path=z_sae, tokens=2048, n_top=4, quantiles=2,
                               per_quantile=2, progress=False)
    folder = Path(stats.folder)
    meta = json.loads((folder / "sae.json").read_text())
    assert (meta["layer"], meta["n_heads"], meta["n_kv_heads"], meta["d_head"]) == (1, 4, 2, 16)
    features = pd.read_parquet(folder / "features.parquet")
    contexts = pd.read_parquet(folder / "contexts.parquet")
    shares = head_shares(sae, 4)["encoder"].numpy()
    np.testing.assert_allclose(np.stack(features["enc_head_shares"]), shares, rtol=1e-6)
    top = contexts[contexts["group"] == "top"]
    assert top["source_attr"].notna().all() and contexts.loc[contexts["group"] != "top", "source_attr"].isna().all()
    # a top context's sources and the bias terms add up to its activation at the maximum (TopK: = pre-activation)
    c = top.iloc[0]
    peak = int(np.argmax(c["acts"]))
    f = int(c["feature"])
    w = sae.W_enc[:, f].detach()
    bias = float((sae.b_enc[f] - sae.b_dec @ w) * encoder_scale(sae)[f])
    assert sum(c["source_attr"]) + c["attr_before"] + bias == pytest.approx(c["acts"][peak], rel=1e-4, abs=1e-5)
    assert sum(c["head_attr"]) == pytest.approx(sum(c["source_attr"]) + c["attr_before"], rel=1e-4, abs=1e-5)
    assert all(a == 0 for a in c["source_attr"][peak + 1:])  # causal: nothing read from later tokens

    page = json.dumps(render(Context(tmp_path, "tiny-llama"), f"/features/{folder.name}/{f}", ""),
                      default=lambda x: x.to_plotly_json() if hasattr(x, "to_plotly_json") else str(x))
    assert "reads from" in page and "weight norm per head" in page


def test_cli_attributes_one_prompt_and_refuses_bad_requests_before_the_model(capsys, monkeypatch, tiny_llama,
                                                                             z_sae, tmp_path):
    argv = ["sae", "attribute", str(z_sae), PROMPT, "--model", "tiny-llama"]
    assert main([*argv, "--feature", "3", "--position", "-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "attn_sae_attribution" and out["position"] == len(out["tokens"]) - 1
    total = sum(t["attribution"] for t in out["terms"]) + out["decoder_bias"] + out["encoder_bias"]
    assert total == pytest.approx(out["pre_activation"], abs=1e-5)

    resid = tmp_path / "resid"
    train(tiny_llama, tiny_cfg(hook="blocks.1.hook_resid_post", tokens=512, norm_tokens=256, buffer_tokens=256), resid)
    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the bad input was refused")
    for bad, words in (([str(z_sae), PROMPT], "needs --feature"),
                       ([str(resid), PROMPT, "--feature", "0"], "hook_z"),
                       ([str(z_sae), PROMPT, "--feature", "256"], "feature 256 is out of range"),
                       ([str(z_sae), PROMPT, "--feature", "0", "--position", "99"], "position 99 is out of range")):
        if "position" not in words:
            monkeypatch.setattr("interp.models.load_model", refuse)
        assert main(["sae", "attribute", *bad, "--model", "tiny-llama"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
        monkeypatch.undo()


@pytest.mark.real
def test_real_model_hook_z_sae_splits_exactly(smollm, tmp_path):
    cfg = TrainConfig(hook="blocks.5.attn.hook_z", k=16, expansion=2, tokens=4096, batch_tokens=512, lm_batch_size=8,
                      seq_len=64, buffer_tokens=2048, norm_tokens=1024, checkpoint_every=0, progress=False)
    train(smollm, cfg, tmp_path / "z")
    sae = load_sae(tmp_path / "z")
    r = attribute_feature(smollm, sae, "When Mary and John went to the store, John gave a drink to", feature=0)
    assert r.terms["attribution"].sum() + r.decoder_bias + r.encoder_bias == pytest.approx(r.pre_activation, abs=1e-4)
    assert sorted(set(r.heads["kv_head"])) == [0, 1, 2] and len(r.heads) == 9  # 9 query heads share 3 KV heads

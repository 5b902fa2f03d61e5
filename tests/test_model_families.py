"""Any Hugging Face causal LM: tiny random folders of ten families load through `load_model` (HookedTransformer
where TransformerLens converts the architecture, TransformerBridge otherwise) and match transformers' logits; the
two loaders' hooks mean the same; the analyses that do their own algebra respect each architecture (Gemma's
scaled embeddings and final soft-cap, GPT-2's LayerNorm biases, OLMo-2's post-norms), checked against the plain
Hugging Face model; every analysis runs on a bridge model; GGUF files of these families convert."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp.cli import main
from interp.errors import InterpError
from interp.models import load_hf_model, load_model
from interp.models.tiny import FAMILIES, write_family_model

TEXT = "The Eiffel Tower is in Paris, Москва is in Russia."
BRIDGED = ("gemma2", "gemma3", "olmo2")
PROMPT = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: write_family_model(name, root / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def bridged(folders):
    return {name: load_model(str(folders[name])) for name in ("gemma2", "olmo2")}


def _hf(folder):
    hf, tok = load_hf_model(str(folder))
    return hf, tok(TEXT, return_tensors="pt").input_ids


# -- loading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_family_loads_and_matches_transformers(folders, name):
    model = load_model(str(folders[name]))
    hf, ids = _hf(folders[name])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4
    assert model.loader == ("transformer-bridge" if name in BRIDGED else "hooked-transformer")
    assert model.cfg.original_architecture == hf.config.architectures[0]
    assert not model.cfg.default_prepend_bos and model.to_tokens("ab").shape == (1, 2)
    L = model.cfg.n_layers
    hooks = ["hook_embed", "ln_final.hook_scale", *(f"blocks.{L - 1}.{h}" for h in (
        "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "ln1.hook_scale",
        "ln2.hook_normalized", "ln2.hook_scale", "attn.hook_pattern", "attn.hook_z", "attn.hook_v", "mlp.hook_post"))]
    assert set(hooks) <= set(model.hook_dict)
    assert model.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)
    assert model.W_E.shape == (model.cfg.d_vocab, model.cfg.d_model)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_both_loaders_fire_the_same_hooks_with_the_same_values(folders, name):
    """The same folder through HookedTransformer and through TransformerBridge: every hook and weight the
    analyses read agrees, so an analysis means the same whichever path loaded the model."""
    hooked = load_model(str(folders[name]))
    bridge = load_model(str(folders[name]), loader="transformer-bridge")
    assert (hooked.loader, bridge.loader) == ("hooked-transformer", "transformer-bridge")
    tokens = hooked.to_tokens(TEXT)
    names = ["hook_embed", "ln_final.hook_scale"] + (["hook_pos_embed"] if name == "gpt2" else [])
    for l in range(hooked.cfg.n_layers):
        names += [f"blocks.{l}.{h}" for h in (
            "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "ln1.hook_scale",
            "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized", "attn.hook_pattern", "attn.hook_z",
            "attn.hook_v", "mlp.hook_post")]
    _, a = hooked.run_with_cache(tokens, names_filter=names)
    _, b = bridge.run_with_cache(tokens, names_filter=names)
    for n in names:
        torch.testing.assert_close(b[n], a[n], atol=2e-5, rtol=1e-4, msg=n)
    torch.testing.assert_close(bridge.W_U, hooked.W_U)
    torch.testing.assert_close(bridge.W_E, hooked.W_E)
    for l in range(hooked.cfg.n_layers):
        torch.testing.assert_close(bridge.blocks[l].mlp.W_out, hooked.blocks[l].mlp.W_out)
        torch.testing.assert_close(bridge.blocks[l].attn.W_O, hooked.blocks[l].attn.W_O)
    resid = hooked(tokens, stop_at_layer=1)  # start_at_layer, which TransformerBridge lacks, is emulated
    torch.testing.assert_close(bridge(resid, start_at_layer=1), hooked(resid, start_at_layer=1), atol=2e-5, rtol=0)
    torch.testing.assert_close(bridge(tokens, stop_at_layer=hooked.cfg.n_layers),
                               hooked(tokens, stop_at_layer=hooked.cfg.n_layers), atol=2e-5, rtol=0)


def test_restoration_gives_the_same_numbers_on_both_loaders(folders):
    """Causal tracing and activation patching restore activations in many copies of a run; on the bridge each
    copy is a whole forward pass entered at block 0 (its blocks cannot run alone), on HookedTransformer only the
    positions and layers a write can change: the same numbers."""
    from circuits.patching import patch
    from circuits.tracing import trace

    hooked = load_model(str(folders["llama"]))
    bridge = load_model(str(folders["llama"]), loader="transformer-bridge")
    a, b = (trace(m, "Eiffel Tower is in", "Eiffel", kinds=("hidden", "mlp"), samples=2, noise_std=0.5, window=1,
                  progress=False) for m in (hooked, bridge))
    for kind in a.scores:
        torch.testing.assert_close(b.scores[kind], a.scores[kind], atol=1e-5, rtol=1e-4)
    a, b = (patch(m, "The Eiffel Tower is in", "The Statue Tower is in") for m in (hooked, bridge))
    for site in a.logit_diff:
        torch.testing.assert_close(b.logit_diff[site], a.logit_diff[site], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(b.attribution[site], a.attribution[site], atol=1e-4, rtol=1e-3)


def test_info_names_the_loader_and_bridge_hooks_are_checked(folders, bridged, capsys):
    assert main(["info", "--model", str(folders["gemma2"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["loader"] == "transformer-bridge" and info["architecture"] == "Gemma2ForCausalLM"
    assert main(["info", "--model", "tiny-llama", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loader"] == "hooked-transformer"
    tokens = bridged["gemma2"].to_tokens("typo")
    with pytest.raises(InterpError, match="did you mean: blocks.0.hook_resid_post"):
        bridged["gemma2"].run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pots"])
    with pytest.raises(InterpError, match="unknown hook"):
        bridged["gemma2"].run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_outt", lambda x, hook: x)])
    with pytest.raises(InterpError, match="HookedTransformer cannot convert"):
        load_model(str(folders["olmo2"]), loader="hooked-transformer")


# -- architecture facts in the analyses' own algebra, against the plain Hugging Face model ------------------------


def test_gemma_embedding_scale_reaches_hook_embed_and_tracing_noise(folders, bridged):
    """Gemma multiplies embeddings by sqrt(d_model): `hook_embed` (where tracing adds its noise and measures its
    scale) is that product, as at the Hugging Face embedding module's output."""
    from circuits.tracing import Corruption

    model = bridged["gemma2"]
    hf, ids = _hf(folders["gemma2"])
    embed = hf.get_input_embeddings()
    raw = torch.nn.functional.embedding(ids, embed.weight)
    torch.testing.assert_close(embed(ids), raw * model.cfg.d_model ** 0.5)
    _, cache = model.run_with_cache(ids, names_filter=["hook_embed"])
    torch.testing.assert_close(cache["hook_embed"], embed(ids))
    torch.testing.assert_close(model.embed(ids), embed(ids))

    noise = Corruption.draw(model, (1, 4), samples=2, std=0.5, seed=0)
    ours = model.run_with_hooks(ids.repeat(2, 1), fwd_hooks=[noise.hook()])
    handle = embed.register_forward_hook(lambda mod, args, out: torch.cat(
        [out[:, :1], out[:, 1:4] + noise.noise, out[:, 4:]], dim=1))
    try:
        with torch.no_grad():
            theirs = hf(ids.repeat(2, 1)).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gemma2", "olmo2"])
def test_rome_keys_and_values_are_the_down_projection(folders, bridged, name):
    """ROME's key is the input of the MLP's down-projection and its value that projection's output, which under
    Gemma's and OLMo-2's norms after the MLP is not `hook_mlp_out`; a rank-one write into `W_out` moves the
    Hugging Face projection by (k . u) v."""
    from circuits.editing.handle import w_out
    from circuits.editing.stats import key_hook
    from interp.hooks import mlp_output

    model = bridged[name]
    hf, ids = _hf(folders[name])
    seen = {}
    down = hf.model.layers[1].mlp.down_proj
    handle = down.register_forward_hook(lambda mod, args, out: seen.update(key=args[0], value=out))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        handle.remove()
    assert mlp_output(model, 1) == "blocks.1.mlp.hook_out"
    _, cache = model.run_with_cache(ids, names_filter=[key_hook(1), mlp_output(model, 1), "blocks.1.hook_mlp_out"])
    torch.testing.assert_close(cache[key_hook(1)], seen["key"])
    torch.testing.assert_close(cache[mlp_output(model, 1)], seen["value"])
    assert not torch.allclose(cache["blocks.1.hook_mlp_out"], seen["value"])
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(model.cfg.d_mlp, generator=g), torch.randn(model.cfg.d_model, generator=g)
    before = w_out(model, 1).detach().clone()
    down = model.original_model.model.layers[1].mlp.down_proj  # the bridge's own Hugging Face module
    try:
        with torch.no_grad():
            w_out(model, 1).add_(torch.outer(u, v))
            torch.testing.assert_close(down(seen["key"]) - seen["value"], (seen["key"] @ u)[..., None] * v,
                                       atol=1e-4, rtol=1e-4)
    finally:
        with torch.no_grad():
            w_out(model, 1).copy_(before)


@pytest.mark.parametrize("name", ["gemma2", "gpt2", "olmo2"])
def test_logit_lens_and_dla_match_the_models_logits(folders, name):
    """The lens's last row is the model's own distribution (Gemma's soft-cap included) and the attributions sum to
    the model's answer logit (GPT-2's final LayerNorm bias as a "bias" row, the soft-cap shared out)."""
    from interp.lens import logit_lens

    model = load_model(str(folders[name]))
    hf, _ = _hf(folders[name])
    result = logit_lens(model, "The Eiffel Tower is in")
    with torch.no_grad():
        logits = hf(model.to_tokens("The Eiffel Tower is in")).logits[0, -1]
    assert abs(result.answer_logit - float(logits[result.answer_id])) < 1e-4
    assert abs(float(result.dla.sum()) - result.answer_logit) < 1e-4
    assert abs(float(result.answer_prob[-1]) - float(logits.softmax(-1)[result.answer_id])) < 1e-5
    assert ("bias" in result.dla_labels) == (name == "gpt2")
    if name == "gemma2":  # the cap bends these logits: a lens without it would be off
        final = model.run_with_cache(model.to_tokens("The Eiffel Tower is in"), names_filter=["blocks.1.hook_resid_post"])[1]
        uncapped = model.unembed(model.ln_final(final["blocks.1.hook_resid_post"]))[0, -1]
        assert (uncapped - logits).abs().max() > 0.02


@pytest.mark.parametrize("name", ["gemma2", "gpt2"])
def test_transcoder_attribution_rows_sum_to_the_pre_activation(folders, tmp_path, name):
    from interp.sae.circuits import attribute
    from interp.sae.sets import load_transcoder_set, write_random_set

    model = load_model(str(folders[name]))
    tcs = load_transcoder_set(write_random_set(model, tmp_path / "set", [0, 1], k=8, expansion=4), model)
    x = model.run_with_cache(model.to_tokens("The Eiffel Tower"), names_filter=["blocks.1.ln2.hook_normalized"])[1]
    feature = int(tcs[1].encode(x["blocks.1.ln2.hook_normalized"][0, -1:])[0].argmax())
    result = attribute(model, tcs, "The Eiffel Tower", layer=1, feature=feature)
    total = float(result.contributions["attribution"].sum()) + result.encoder_bias
    assert abs(total - result.pre_activation) < 1e-4 * max(1.0, abs(result.pre_activation))


def test_analyses_refuse_what_they_cannot_honour(folders, bridged, tmp_path):
    """One line each: the graph's frozen linearisation under norms after attention and MLP, MEMIT's linear
    spread of a residual change over MLP outputs that are normalised, and transcoder attributions where the MLP
    reads no norm (OLMo-2)."""
    from circuits.editing.memit import memit
    from circuits.graph.frozen import check_supported
    from interp.sae.circuits import attribute

    for name, model in bridged.items():
        with pytest.raises(InterpError, match="norms after attention and MLP") as err:
            check_supported(model)
        assert "\n" not in str(err.value)
        with pytest.raises(InterpError, match="use --method rome"):
            memit(model, {"prompt": "{} is in", "subject": "The Eiffel Tower", "target_new": " Rome"})
    with pytest.raises(InterpError, match="its ln2 follows the MLP"):
        attribute(bridged["olmo2"], {1: object()}, "The Eiffel Tower", layer=1, feature=0)


# -- every analysis on a bridge model ---------------------------------------------------------------------------


def _smoke_commands(runs) -> dict[str, list[str]]:
    small = ["--batch-tokens", "64", "--seq-len", "32", "--tokens", "512", "--buffer-tokens", "256"]
    return {
        "lens": ["lens", PROMPT],
        "trace": ["trace", "Eiffel Tower is in", "--subject", "Eiffel Tower", "--samples", "2", "--window", "1",
                  "--kind", "hidden",
                  "--noise-std", "0.5"],
        "patch": ["patch", "--clean", "The Eiffel Tower is in", "--corrupt", "The Statue Tower is in",
                  "--hooks", "resid,heads"],
        "edit": ["edit", "--subject", "The Eiffel Tower", "--prompt", "{} is located in the city of",
                 "--target", " Rome", "--layers", "0", "--stats-tokens", "10000", "--generations", "0"],
        "sae train": ["sae", "train", "--hook", "blocks.1.hook_resid_post", "--arch", "topk", "--k", "4",
                      "--expansion", "2", *small, "--out", str(runs / "sae")],
        "sae eval": ["sae", "eval", str(runs / "sae"), "--tokens", "256"],
        "sae features": ["sae", "features", str(runs / "sae"), "--tokens", "256", "--workspace", str(runs / "ws")],
        "probe": ["probe", "--dataset", "cities", "--layers", "1", "--method", "logistic", "--folds", "2"],
        "outliers": ["outliers", "--tokens", "256", "--seq-len", "32"],
    }


@pytest.mark.parametrize("name", ["gemma2", "olmo2"])
def test_every_analysis_runs_on_a_bridge_model(folders, tmp_path, monkeypatch, capsys, name):
    from dashboards.attention import attention_patterns

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    for command, argv in _smoke_commands(tmp_path).items():
        code = main([*argv, "--model", str(folders[name]), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}: {err.strip().splitlines()[-1:]}"
        assert isinstance(json.loads(out), dict), command
    model = load_model(str(folders[name]))
    result = attention_patterns(model, PROMPT)
    assert result.pattern.shape[:2] == (2, 4)
    torch.testing.assert_close(result.pattern.float().sum(-1), torch.ones(result.pattern.shape[:3]), atol=2e-3,
                               rtol=0)
    code = main(["graph", PROMPT, "--transcoders", str(tmp_path), "--model", str(folders[name])])
    assert code == 2 and capsys.readouterr().err.count("\n") == 1


def test_graph_on_a_bridge_model_equals_the_hooked_one(folders, tmp_path):
    """Llama through either loader: the same attribution graph (transcoders read and write the same hooks)."""
    from circuits.graph import GraphConfig
    from circuits.graph.build import attribution
    from interp.sae.sets import load_transcoder_set, write_random_set

    hooked = load_model(str(folders["llama"]))
    bridge = load_model(str(folders["llama"]), loader="transformer-bridge")
    folder = write_random_set(hooked, tmp_path / "set", [0, 1], k=8, expansion=4)
    a = attribution(hooked, PROMPT, load_transcoder_set(folder, hooked), GraphConfig())
    b = attribution(bridge, PROMPT, load_transcoder_set(folder, bridge), GraphConfig())
    assert b.n_selected == a.n_selected > 0
    scale = float(a.adjacency.abs().max())
    torch.testing.assert_close(b.adjacency, a.adjacency, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(b.values, a.values, atol=1e-5, rtol=1e-4, equal_nan=True)


# -- GGUF ---------------------------------------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for rotary (transformers' GGUF reader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(folder, path, quantize: dict[str, str], architecture: str = "llama") -> dict[str, np.ndarray]:
    """Write the Llama model in `folder` as a GGUF, as llama.cpp's converter lays it out, with the tensors named in
    `quantize` stored in that type (F16, Q8_0, ...); returns {HF name: the weights as stored, de-quantized}."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize as gguf_quantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    c = hf.config
    w = GGUFWriter(str(path), architecture)
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_scores([0.0] * len(vocab))
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in vocab])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    names |= {f"model.layers.{l}.{a}.weight": f"blk.{l}.{b}.weight"
              for l in range(c.num_hidden_layers) for a, b in parts.items()}
    stored = {}
    for hf_name, name in names.items():
        x = hf.state_dict()[hf_name].numpy()
        heads = {"attn_q": c.num_attention_heads, "attn_k": c.num_key_value_heads}.get(name.split(".")[-2])
        x = x if heads is None else _permute(x, heads)
        qtype = GGMLQuantizationType[quantize.get(name, "F32")]
        if qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, x)
            back = x
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
            back = x.astype(np.float16).astype(np.float32)
        else:
            try:
                data = gguf_quantize(x, qtype)
                back = dequantize(data, qtype).reshape(x.shape)
            except NotImplementedError:  # a type the gguf package cannot write either: zero blocks of its size
                block, size = GGML_QUANT_SIZES[qtype]
                data, back = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8), None
            w.add_tensor(name, data, raw_dtype=qtype)
        stored[hf_name] = back if heads is None or back is None else _permute_back(back, heads)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _permute_back(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_of_another_model_converts_and_loads(folders, tmp_path, monkeypatch):
    """F32 tensors, one F16 and one Q8_0: the loaded model is the source model with those weights rounded."""
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "other.gguf"
    stored = write_llama_gguf(folders["llama"], path, {"blk.1.attn_q.weight": "F16", "blk.0.ffn_down.weight": "Q8_0"})
    model = load_model(str(path))
    assert model.cfg.model_name == "other" and model.loader == "hooked-transformer"
    hf, ids = _hf(folders["llama"])
    rounded = {"model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    with torch.no_grad():
        for name in rounded:
            original = hf.state_dict()[name]
            assert 0 < (torch.from_numpy(stored[name]) - original).abs().max() < 1e-2 * original.abs().max()
            hf.state_dict()[name].copy_(torch.from_numpy(stored[name]))
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4


def test_gguf_of_an_unsupported_architecture_or_type_is_one_line(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    write_llama_gguf(folders["llama"], tmp_path / "olmo.gguf", {}, architecture="olmo2")
    write_llama_gguf(folders["llama"], tmp_path / "q81.gguf", {"blk.0.ffn_up.weight": "Q8_1"})
    for path, message in [(tmp_path / "olmo.gguf", "holds a 'olmo2' model; transformers converts GGUF files of llama"),
                          (tmp_path / "q81.gguf", "stores blk.0.ffn_up.weight as Q8_1")]:
        with pytest.raises(InterpError, match=message):
            load_model(str(path))
        assert main(["info", "--model", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.split(";")[0] in err

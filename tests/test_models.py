"""Model loading by spec, and the hooked model's mechanics."""

from __future__ import annotations

import pytest
import torch

from interp.errors import InterpError
from interp.models import HookedModel, load_hf_model, load_model, resolve_spec


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_match_huggingface(spec):
    model = load_model(spec)
    hf, tok = load_hf_model(spec)
    ids = tok("The Eiffel Tower is in Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-4)


def test_tiny_models_are_seeded():
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    assert torch.equal(a.W_E, b.W_E)
    assert isinstance(a, HookedModel)


def test_tiny_model_cache_is_keyed_on_what_draws_its_weights(monkeypatch):
    """A new transformers (its initialisers draw the weights) or another config builds a new folder."""
    import transformers

    from interp.models import tiny

    folder = resolve_spec("tiny-llama")
    assert folder.name == f"tiny-llama-{tiny.cache_key('tiny-llama')}"
    assert tiny.cache_key("tiny-llama") != tiny.cache_key("tiny-gpt2")
    monkeypatch.setattr(transformers, "__version__", transformers.__version__ + ".post1")
    assert f"tiny-llama-{tiny.cache_key('tiny-llama')}" != folder.name


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_every_hook_fires(fixture, request):
    model = request.getfixturevalue(fixture)
    model.expose_all_hooks(True)
    try:
        _, cache = model.run_with_cache(model.to_tokens("every hook fires"))
    finally:
        model.expose_all_hooks(False)
    # grouped-query attention has split q/k/v inputs instead of one attention input
    unfired = {f"blocks.{l}.hook_attn_in" for l in range(3)} if model.cfg.n_key_value_heads else set()
    assert set(cache.keys()) == set(model.hook_dict) - unfired


def test_cache_filtering_and_stop_at_layer(tiny_llama):
    tokens = tiny_llama.to_tokens("filter me")
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post"])
    assert list(cache.keys()) == ["blocks.1.hook_resid_post"]
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert sorted(cache.keys()) == [f"blocks.{l}.attn.hook_pattern" for l in range(3)]
    resid, cache = tiny_llama.run_with_cache(tokens, names_filter=lambda n: "resid_post" in n, stop_at_layer=2)
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert torch.equal(resid, cache["blocks.1.hook_resid_post"])


def test_hook_typo_suggests_close_names(tiny_llama):
    tokens = tiny_llama.to_tokens("typo")
    with pytest.raises(InterpError, match="did you mean: blocks.0.hook_resid_post"):
        tiny_llama.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pots"])
    with pytest.raises(InterpError, match="blocks.1.mlp.hook_post"):
        tiny_llama.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_psot", lambda x, hook: x)])


def test_hooks_change_output_and_are_removed_after_errors(tiny_llama):
    tokens = tiny_llama.to_tokens("remove me")
    clean = tiny_llama(tokens)

    def zero(x, hook):
        return torch.zeros_like(x)

    patched = tiny_llama.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", zero)])
    assert not torch.allclose(patched, clean)

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        with tiny_llama.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", zero), ("blocks.1.hook_mlp_out", boom)]):
            tiny_llama(tokens)
    assert torch.equal(tiny_llama(tokens), clean)
    assert all(not hp.fwd_hooks for hp in tiny_llama.hook_dict.values())


def test_unknown_spec_and_missing_folder(tmp_path):
    with pytest.raises(InterpError, match="unknown model spec"):
        resolve_spec("gpt-17")
    with pytest.raises(InterpError, match="no config.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(InterpError, match="not found"):
        resolve_spec(str(tmp_path / "missing.gguf"))


def test_bad_gguf_is_refused(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(InterpError, match="cannot read"):
        resolve_spec(str(bad))


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    from interp.models import gguf

    fake = tmp_path / gguf.DEFAULT_GGUF
    fake.write_bytes(b"x" * 10)
    with pytest.raises(InterpError, match="expected 98,362,432"):
        gguf.check_default_gguf(fake)
    monkeypatch.setattr(gguf, "DEFAULT_SIZE", 10)
    with pytest.raises(InterpError, match="fails its checksum"):
        gguf.check_default_gguf(fake)


def test_local_folder_spec_loads(tmp_path):
    """A Hugging Face folder (here the tiny model's, copied under a name with 'llama' in it) loads."""
    import shutil

    folder = tmp_path / "my-llama-model"
    shutil.copytree(resolve_spec("tiny-llama"), folder)
    model = load_model(str(folder))
    assert model.cfg.n_layers == 3
    assert torch.equal(model.W_E, load_model("tiny-llama").W_E)


@pytest.mark.real
def test_default_model_loads_offline_and_matches_huggingface(smollm):
    hf, tok = load_hf_model("smollm2-135m")
    ids = tok("The Eiffel Tower is located in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = smollm(ids), hf(ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert tok.decode(ours[0, -1].argmax()) == " Paris"
    assert (smollm.cfg.n_layers, smollm.cfg.d_model, smollm.cfg.n_heads) == (30, 576, 9)


@pytest.mark.parametrize("exposed", [False, True])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_fast_kernels_fire_the_same_hooks_with_the_same_values(fixture, exposed, request):
    from interp.models.fast import install_fast_paths, remove_fast_paths

    model = request.getfixturevalue(fixture)
    model.expose_all_hooks(exposed)

    def restore():  # fast paths installed while hooks are exposed leave attention slow: reinstall unexposed
        model.expose_all_hooks(False)
        remove_fast_paths(model)
        install_fast_paths(model)

    request.addfinalizer(restore)
    tokens = model.to_tokens("the same values either way")
    unpatterned = lambda n: "pattern" not in n and "scores" not in n  # noqa: E731
    fast_logits, fast = model.run_with_cache(tokens, names_filter=unpatterned)
    remove_fast_paths(model)
    try:
        slow_logits, slow = model.run_with_cache(tokens, names_filter=unpatterned)
    finally:
        install_fast_paths(model)
    assert sorted(fast.keys()) == sorted(slow.keys())
    assert torch.allclose(fast_logits, slow_logits, atol=1e-5)
    for name in slow.keys():
        assert torch.allclose(fast[name], slow[name], atol=1e-5), name
    _, with_pattern = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert len(with_pattern.keys()) == model.cfg.n_layers  # hooking the pattern takes the full path


@pytest.mark.parametrize("how", ["data", "copy_"])
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_fast_kernels_see_every_weight_edit_and_pass_gradients(spec, how):
    """Each parameter, edited through `.data` (no version counter sees that) or by `copy_` under
    no_grad after a call that would fill any cache, counts on the next call: the fast model matches
    TransformerLens's own code on the same weights, and so do the gradients of every parameter."""
    from interp.models.fast import remove_fast_paths

    fast, slow = load_model(spec), load_model(spec)
    remove_fast_paths(slow)
    tokens = fast.to_tokens("every edit is seen")
    slow_params = dict(slow.named_parameters())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in fast.named_parameters():
            before = fast(tokens)
            new = p + 0.5 * torch.randn(p.shape, generator=gen)
            if how == "data":
                p.data.copy_(new)
            else:
                p.copy_(new)
            slow_params[name].copy_(new)
            after = fast(tokens)
            assert not torch.allclose(after, before), f"editing {name} should change the logits"
            torch.testing.assert_close(after, slow(tokens), atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    fast(tokens).logsumexp(-1).sum().backward()
    slow(tokens).logsumexp(-1).sum().backward()
    for name, p in fast.named_parameters():
        grad = slow_params[name].grad
        torch.testing.assert_close(p.grad, grad, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_fast_paths_match_a_gated_mlp_with_a_layer_norm_activation():
    """A gated MLP with a layer-norm activation (solu_ln) normalises before W_out; the fused MLP must
    not take it over."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp.models.fast import install_fast_paths

    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_heads=4, n_layers=1, n_ctx=8, d_vocab=20, d_mlp=32,
                                  act_fn="solu_ln", gated_mlp=True, normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        slow = model(tokens)
        install_fast_paths(model)
        torch.testing.assert_close(model(tokens), slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_fast_attention_continues_from_a_key_value_cache(fixture, request):
    """The fused path also serves cached continuation (generation, restoration runs): same logits."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model = request.getfixturevalue(fixture)
    tokens = model.to_tokens("hello there general kenobi")
    with torch.no_grad():
        full = model(tokens)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
        model(tokens[:, :5], past_kv_cache=cache)
        rest = model(tokens[:, 5:], past_kv_cache=cache)
    torch.testing.assert_close(rest, full[:, 5:], atol=1e-5, rtol=1e-5)


def _one_line_cli_error(capsys, argv: list[str]) -> str:
    from interp.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "internal" not in err, err
    return err


def test_empty_model_spec_says_so_and_lists_the_specs(capsys):
    for spec in ("", "  "):
        with pytest.raises(InterpError, match="the model spec is empty; use one of smollm2-135m, tiny-llama"):
            resolve_spec(spec)
    assert "model spec is empty" in _one_line_cli_error(capsys, ["info", "--model", ""])


def test_gpt2_folder_with_transformers_5_config_matches_huggingface(tmp_path):
    """transformers 5 saves GPT-2 configs without `n_ctx`, which TransformerLens's converter reads."""
    import json

    from transformers import GPT2Config

    from interp.models.tiny import write_random_model

    folder = write_random_model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=257), tmp_path / "gpt2")
    assert "n_ctx" not in json.loads((folder / "config.json").read_text())
    model = load_model(str(folder))
    hf, tok = load_hf_model(str(folder))
    ids = tok("The Eiffel Tower is in Paris, Москва is in Russia.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4
    assert (model.cfg.n_layers, model.cfg.n_ctx) == (2, hf.config.n_positions)


def _broken_folders(root):
    """name -> a folder that cannot become a hooked model, each for a different reason."""
    import json
    import shutil

    from transformers import BioGptConfig

    from interp.models.tiny import write_random_model

    folders = {"unsupported architecture": write_random_model(BioGptConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=257), root / "bio")}
    for name, change in [("weights wider than config.json", lambda c: c | {"hidden_size": 32}),
                         ("no weights", None), ("config.json not JSON", None)]:
        folder = root / name.replace(" ", "-")
        shutil.copytree(resolve_spec("tiny-llama"), folder)
        config = folder / "config.json"
        if change is not None:
            config.write_text(json.dumps(change(json.loads(config.read_text()))))
        elif name == "no weights":
            (folder / "model.safetensors").unlink()
        else:
            config.write_text("{not json")
        folders[name] = folder
    return folders


def test_folders_that_cannot_load_are_one_line_errors(tmp_path, capsys):
    for name, folder in _broken_folders(tmp_path).items():
        with pytest.raises(InterpError, match=f"cannot load the model in {folder}.*LlamaForCausalLM") as err:
            load_model(str(folder))
        assert "\n" not in str(err.value), name
        assert "cannot load the model" in _one_line_cli_error(capsys, ["info", "--model", str(folder)])
    with pytest.raises(InterpError, match="TransformerLens supports neither BioGptForCausalLM nor its model type 'biogpt'"):
        load_model(str(tmp_path / "bio"))
    with pytest.raises(InterpError, match="unknown device 'cpux'"):
        load_model("tiny-llama", device="cpux")


def test_model_names_survive_other_paths_to_the_same_model(tmp_path):
    """An SAE names the model it was trained on by `spec_name`: the default GGUF passed by its path, a built-in
    model's cache folder and a folder copy under the same name all keep the name."""
    from interp.cache import cache_dir
    from interp.models import gguf
    from interp.models.loader import DEFAULT_MODEL, spec_name

    assert spec_name(str(gguf.default_gguf_path())) == DEFAULT_MODEL
    assert spec_name(str(tmp_path / gguf.DEFAULT_GGUF)) == DEFAULT_MODEL
    assert spec_name(str(cache_dir("models") / "tiny-llama-0123456789ab")) == "tiny-llama"
    assert spec_name(str(tmp_path / "other.gguf")) == "other"
    assert spec_name(str(tmp_path / "my-model")) == "my-model"

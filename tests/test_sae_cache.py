"""Activation caches: an SAE trained from a cache is the SAE trained from the model's stream (same batches, same
seed), without loading the model; a cache of other weights, dtype, corpus or cut is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from interp.cli import main
from interp.errors import InterpError
from interp.sae import TrainConfig, train
from interp.sae.cache import cache_activations

HOOK = "blocks.1.hook_resid_post"
SMALL = dict(arch="topk", k=8, expansion=2.0, tokens=4096, batch_tokens=256, buffer_tokens=2048, norm_tokens=512,
             lm_batch_size=8, seq_len=32, checkpoint_every=0, progress=False, model="tiny-llama")


@pytest.fixture(scope="module")
def cached(tiny_llama, tmp_path_factory):
    """16k tokens of tiny-llama's activations at HOOK and the next layer's MLP output, in 1-batch shards' worth."""
    out = tmp_path_factory.mktemp("cache") / "acts"
    result = cache_activations(tiny_llama, [HOOK, "blocks.2.hook_mlp_out"], out, tokens=16_384, seq_len=32,
                               batch_size=8, progress=False)
    assert result.tokens == 16_384 and list(result.table["width"]) == [64, 64]
    return out


def test_training_from_a_cache_gives_the_streamed_sae(tiny_llama, cached, tmp_path):
    cfg = TrainConfig(hook=HOOK, **SMALL)
    streamed = train(tiny_llama, cfg, tmp_path / "stream")
    from_cache = train(None, cfg, tmp_path / "cache", cache=cached)
    a, b = (load_file(str(tmp_path / name / "sae_weights.safetensors")) for name in ("stream", "cache"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert from_cache.explained_variance == streamed.explained_variance
    assert json.loads((tmp_path / "cache" / "cfg.json").read_text())["metadata"]["model_name"] == "tiny-llama"


def test_a_cache_of_other_weights_dtype_corpus_or_cut_is_refused(cached, tmp_path):
    text = tmp_path / "other.txt"
    text.write_text("Some other text. " * 500)
    for change, message in [({"model": "tiny-gpt2"}, "other weights than --model tiny-gpt2"),
                            ({"dtype": "bfloat16"}, "pass --dtype float32"),
                            ({"corpus": str(text)}, "another corpus"),
                            ({"seq_len": 64}, "pass --seq-len 32"),
                            ({"hook": "blocks.0.hook_resid_post"}, "no activations at blocks.0.hook_resid_post")]:
        cfg = TrainConfig(**{"hook": HOOK, **SMALL, **change})
        with pytest.raises(InterpError, match=message):
            train(None, cfg, tmp_path / "out", cache=cached)


def test_cache_and_train_from_it_on_the_command_line(tmp_path, capsys):
    cache = tmp_path / "acts"
    common = ["--model", "tiny-llama", "--seq-len", "32", "--lm-batch-size", "8"]
    assert main(["sae", "cache", "--hooks", "blocks.{l}.ln2.hook_normalized,blocks.{l}.hook_mlp_out",
                 "--layers", "0,1", "--tokens", "4096", "--out", str(cache), *common, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["kind"] == "activation_cache" and payload["tokens"] == 4096
    argv = ["sae", "train", "--from-cache", str(cache), "--layers", "0,1", "--hook", "blocks.{l}.ln2.hook_normalized",
            "--hook-out", "blocks.{l}.hook_mlp_out", "--tokens", "1024", "--batch-tokens", "256", "--buffer-tokens",
            "1024", "--expansion", "2", "--k", "4", *common[2:], "--json"]
    assert main([*argv, "--out", str(tmp_path / "set"), "--model", "tiny-llama"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "sae_set_train"
    assert main([*argv, "--out", str(tmp_path / "other"), "--model", "tiny-gpt2"]) == 2
    assert "other weights" in capsys.readouterr().err

"""Content fingerprints, and the caches keyed on them: a cache hits for the same weights and corpus
under any name, and misses after an edit or for another corpus of the same name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from interp.fingerprint import (
    cache_name, corpus_fingerprint, file_fingerprint, settings_fingerprint, weights_fingerprint,
)
from interp.models import load_model, resolve_spec


def _write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _text(seed: int, n: int = 40) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "cloud", "seven", "north"]
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(words[i] for i in torch.randint(0, len(words), (30,), generator=gen)) for _ in range(n)]


@pytest.fixture
def folders(tmp_path):
    """The tiny model's weights in two folders of different names (the same bytes)."""
    out = []
    for name in ("copy-one", "copy-two"):
        shutil.copytree(resolve_spec("tiny-llama"), tmp_path / name)
        out.append(tmp_path / name)
    return out


def test_weights_fingerprint_follows_the_weights_not_the_spec(folders):
    spec, one, two = load_model("tiny-llama"), load_model(str(folders[0])), load_model(str(folders[1]))
    digest = weights_fingerprint(spec)
    assert weights_fingerprint(one) == weights_fingerprint(two) == digest
    assert weights_fingerprint(load_model("tiny-gpt2")) != digest
    w = spec.blocks[1].mlp.W_out
    old = w.detach().clone()
    w.data[3, 5] += 1.0  # through .data: no version counter moves
    assert weights_fingerprint(spec) != digest
    with torch.no_grad():
        w.copy_(old)
    assert weights_fingerprint(spec) == digest
    only_embed = weights_fingerprint(spec, lambda name: name.startswith("embed."))
    w.data[3, 5] += 1.0
    assert weights_fingerprint(spec, lambda name: name.startswith("embed.")) == only_embed


def test_corpus_and_settings_fingerprints_follow_content_not_names(tmp_path):
    a = _write_jsonl(tmp_path / "a" / "train.jsonl", _text(0))
    b = _write_jsonl(tmp_path / "b" / "train.jsonl", _text(1))
    same = _write_jsonl(tmp_path / "c" / "other-name.jsonl", _text(0))
    assert corpus_fingerprint(str(a)) != corpus_fingerprint(str(b))
    assert corpus_fingerprint(str(a)) == corpus_fingerprint(str(same)) == file_fingerprint(a)
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    assert corpus_fingerprint(str(tmp_path / "a")) == corpus_fingerprint(str(tmp_path / "a2"))
    assert corpus_fingerprint(str(tmp_path / "a")) != corpus_fingerprint(str(tmp_path / "b"))
    assert corpus_fingerprint(None) == corpus_fingerprint("python-docs")
    assert settings_fingerprint(x=1, y=[1, 2]) == settings_fingerprint(y=[1, 2], x=1) != settings_fingerprint(x=1)
    assert cache_name("tiny llama/L1", ".json", x=1) == f"tiny_llama_L1-{settings_fingerprint(x=1)}.json"


def test_key_statistics_are_keyed_on_corpus_content_and_upstream_weights(tmp_path, monkeypatch):
    """a/train.jsonl and b/train.jsonl get their own statistics; the same bytes under another name
    reuse them; an edit of the layer's own output weights keeps them, an edit upstream does not."""
    from circuits.editing import stats

    model = load_model("tiny-llama")
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    a = _write_jsonl(tmp_path / "a" / "train.jsonl", _text(0))
    b = _write_jsonl(tmp_path / "b" / "train.jsonl", _text(1))
    same = _write_jsonl(tmp_path / "c" / "copy.jsonl", _text(0))
    n = 1024
    got_a = stats.second_moments(model, 1, str(a), n, progress=False)[1]
    got_b = stats.second_moments(model, 1, str(b), n, progress=False)[1]
    assert not torch.allclose(got_a, got_b)
    real = stats.stream_activations
    monkeypatch.setattr(stats, "stream_activations", lambda *a, **k: pytest.fail("statistics recomputed"))
    torch.testing.assert_close(stats.second_moments(model, 1, str(same), n, progress=False)[1], got_a)
    digest = corpus_fingerprint(str(a))
    path = stats.stats_path(model, 1, digest, n)
    model.blocks[1].mlp.W_out.data.mul_(2.0)  # what ROME changes at this layer
    model.blocks[2].attn.W_Q.data.mul_(2.0)  # downstream of layer 1's keys
    assert stats.stats_path(model, 1, digest, n) == path
    torch.testing.assert_close(stats.second_moments(model, 1, str(a), n, progress=False)[1], got_a)
    model.blocks[0].mlp.W_out.data.mul_(2.0)  # upstream: the keys change
    assert stats.stats_path(model, 1, digest, n) != path
    monkeypatch.setattr(stats, "stream_activations", real)
    assert not torch.allclose(stats.second_moments(model, 1, str(a), n, progress=False)[1], got_a)


def _facts_file(model, path):
    """Facts whose target is one letter the model does not yet predict after any of the prompts."""
    prompts = ["{} sat on the", "{} is in", "Where is {}?", "I saw {}"]
    tops = {int(model(model.to_tokens(p.replace("{}", "The cat"), prepend_bos=False))[0, -1].argmax())
            for p in prompts}
    letter = next(c for c in "qzxjkv" if model.to_tokens(c, prepend_bos=False)[0, 0].item() not in tops)
    records = [{"case_id": i, "requested_rewrite": {"prompt": p, "subject": "The cat", "target_true": {"str": letter},
                                                    "target_new": {"str": " x"}}} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, model.to_tokens(letter, prepend_bos=False)[0, 0].item()


def test_fact_verdicts_and_noise_scale_recompute_after_a_weight_edit(tmp_path, monkeypatch):
    from circuits.facts import verify_facts
    from circuits.tracing import embedding_noise_std

    model = load_model("tiny-llama")
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    path, letter = _facts_file(model, tmp_path / "facts.jsonl")
    before, std = verify_facts(model, path=path), embedding_noise_std(model)
    assert not any(before.values())
    model.unembed.b_U.data[letter] += 1e3  # now every prompt answers the letter
    assert all(verify_facts(model, path=path).values())
    model.embed.W_E.data.mul_(3.0)
    assert embedding_noise_std(model) == pytest.approx(3 * std, rel=1e-5)


def test_probe_activations_recompute_after_a_weight_edit(tmp_path):
    from probes.collect import cached_activations, collect_activations

    model = load_model("tiny-llama")
    texts = ["the cat sat", "a dog ran far", "birds fly"]
    first = cached_activations(model, texts, [0, 2], workspace=tmp_path)
    model.blocks[0].mlp.W_in.data.mul_(2.0)
    edited = cached_activations(model, texts, [0, 2], workspace=tmp_path)
    assert not torch.allclose(edited, first)
    torch.testing.assert_close(edited, collect_activations(model, texts, [0, 2], progress=False))
    assert len(list((tmp_path / ".activations").glob("*.safetensors"))) == 2


def test_the_same_weights_under_two_paths_share_caches_and_default_layers(folders, tmp_path, monkeypatch):
    from circuits.editing import layers
    from circuits.facts import verify_facts

    one, two = load_model(str(folders[0])), load_model(str(folders[1]))
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    path, _ = _facts_file(one, tmp_path / "facts.jsonl")
    verdicts = verify_facts(one, path=path)
    two.forward = lambda *a, **k: pytest.fail("the second path recomputed the verdicts")
    assert verify_facts(two, path=path) == verdicts
    monkeypatch.setitem(layers.MEASURED_ROME_LAYER, layers.model_identity(one), 2)  # the rule says 1
    assert layers.rome_layer(two) == 2 and layers.rome_layer(load_model("tiny-gpt2")) == 1
    two.blocks[1].mlp.W_out.data.add_(0.1)  # an edited model keeps its base model's layers
    assert layers.rome_layer(two) == 2


@pytest.mark.real
def test_default_model_finds_its_measured_layers_by_its_weights(smollm):
    from circuits.editing.layers import memit_layers, rome_layer

    assert (rome_layer(smollm), memit_layers(smollm)) == (4, [1, 2, 3, 4, 5])

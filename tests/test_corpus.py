"""Corpora (built-in and user files) and activation streaming."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from interp.corpus import load_corpus, token_batches
from interp.errors import InterpError
from interp.streaming import read_shards, stop_layer, stream_activations, write_shards


def test_builtin_corpus_is_large_and_offline(tiny_llama):
    corpus = load_corpus()
    docs = list(corpus)
    assert len(docs) > 500
    assert sum(map(len, docs)) > 5_000_000  # several million characters: >> 500k tokens
    # passages, not whole files: any 200k-character stretch mixes many sources (code and prose)
    assert max(map(len, docs)) < 20_000 and sum(len(d) > 4000 for d in docs) < len(docs) / 100
    stretch = docs[-60:]
    assert any("def " in d for d in stretch) and sum("def " not in d for d in stretch) > 5

    batches = list(token_batches(tiny_llama, corpus, batch_size=4, seq_len=64, max_tokens=1000))
    assert sum(b.shape[0] for b in batches) == 1000 // 64
    assert all(b.shape[1] == 64 for b in batches)


def test_passages_cut_at_line_ends():
    from interp.corpus import passages

    text = "".join(f"line {i}\n" for i in range(1000))
    pieces = passages(text, max_chars=100)
    assert "".join(pieces) == text and all(len(p) <= 100 for p in pieces) and all(p.endswith("\n") for p in pieces)
    assert passages("x" * 500, max_chars=100) == ["x" * 500]  # one long line stays whole


@pytest.mark.parametrize("kind", ["txt", "folder", "jsonl", "parquet", "hf"])
def test_user_corpora(kind, tmp_path, tiny_llama):
    texts = [f"document number {i} says hello to the reader. " * 3 for i in range(20)]
    if kind == "txt":
        path = tmp_path / "a.txt"
        path.write_text("\n".join(texts))
    elif kind == "folder":
        path = tmp_path / "docs"
        path.mkdir()
        for i, t in enumerate(texts):
            (path / f"{i}.md").write_text(t)
    elif kind == "jsonl":
        path = tmp_path / "a.jsonl"
        path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)))
    elif kind == "parquet":
        path = tmp_path / "a.parquet"
        pd.DataFrame({"text": texts}).to_parquet(path)
    else:
        import datasets

        path = tmp_path / "hf"
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    corpus = load_corpus(str(path))
    joined = "".join(corpus)
    assert "document number 19" in joined
    rows = torch.cat(list(token_batches(tiny_llama, corpus, batch_size=8, seq_len=32)))
    assert rows.shape[1] == 32 and rows.shape[0] >= 20


def test_bad_corpora(tmp_path, tiny_llama):
    with pytest.raises(InterpError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InterpError, match="no .txt"):
        load_corpus(str(empty))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(InterpError, match="fewer than 128 tokens"):
        list(token_batches(tiny_llama, load_corpus(str(short))))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(InterpError, match="bad.jsonl:2"):
        list(load_corpus(str(bad)))


def test_stop_layer():
    assert stop_layer(["blocks.3.hook_resid_post", "blocks.1.mlp.hook_post"]) == 4
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.0.hook_resid_post", "ln_final.hook_normalized"]) is None


def test_streamed_activations_equal_a_direct_run(tiny_llama):
    hook = "blocks.1.hook_resid_post"
    stream = stream_activations(tiny_llama, [hook], load_corpus(), batch_size=2, seq_len=16, max_tokens=64,
                                progress=False)
    tokens, acts = next(stream)
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=[hook])
    assert torch.allclose(acts[hook], cache[hook], atol=1e-6)


def test_shards_resume_after_interruption(tmp_path, tiny_llama):
    hook, corpus = "blocks.0.hook_mlp_out", load_corpus()
    kwargs = dict(max_tokens=16 * 10, batch_size=2, seq_len=16, batches_per_shard=2, progress=False)
    full = write_shards(tiny_llama, [hook], corpus, tmp_path / "full", **kwargs)
    part = tmp_path / "part"
    write_shards(tiny_llama, [hook], corpus, part, **kwargs)
    for shard in sorted(part.glob("shard_*"))[2:]:
        shard.unlink()  # as if killed after two shards
    write_shards(tiny_llama, [hook], corpus, part, **kwargs)
    a, b = list(read_shards(full)), list(read_shards(part))
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert torch.equal(x["tokens"], y["tokens"]) and torch.allclose(x[hook], y[hook])
    with pytest.raises(InterpError, match="other settings"):
        write_shards(tiny_llama, [hook], corpus, part, **{**kwargs, "seq_len": 8})

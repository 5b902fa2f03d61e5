"""Active and dormant heads by domain: the sink rate against a plain count over the same token rows,
the dormant / switch rules, the domain samples and labelled corpora, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from interp.corpus import Corpus, token_batches
from interp.corpus_domains import DOMAINS, domain_corpora, labelled_corpora
from interp.errors import InterpError
from interp.outliers.dormant import DomainSinkResult, domain_sinks, first_token_hits
from interp.results import Result

TEXTS = {"words": " ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(60)),
         "digits": "\n".join(", ".join(str(i * j % 997) for j in range(8)) for i in range(80))}


def corpora():
    return {d: Corpus(d, lambda text=text: iter([text])) for d, text in TEXTS.items()}


def sink_on_first(block: int, head: int, boost: float = 4.0):
    def fn(scores, hook):
        scores[:, head, :, 0] += boost
        return scores
    return (f"blocks.{block}.attn.hook_attn_scores", fn)


def test_first_token_hits_counts_queries_after_the_first():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1).tril()
    hits, attention = first_token_hits(probs, 0.3)
    for h in range(3):
        assert hits[h] == sum(float(probs[b, h, i, 0]) > 0.3 for b in range(2) for i in range(1, 5))
        assert attention[h] == pytest.approx(float(probs[:, h, 1:, 0].sum()))


def test_sink_rate_matches_a_plain_count(tiny_llama):
    hooks = [sink_on_first(1, 2)]
    with tiny_llama.hooks(fwd_hooks=hooks):
        result = domain_sinks(tiny_llama, corpora(), max_tokens=256, batch_size=2, seq_len=64)
    assert result.domains == ["words", "digits"] and result.n_tokens == [256, 256]
    for d, (domain, corpus) in enumerate(corpora().items()):
        hits = torch.zeros(tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads)
        queries = 0
        for batch in token_batches(tiny_llama, corpus, 2, 64, 256):
            with tiny_llama.hooks(fwd_hooks=hooks):
                _, cache = tiny_llama.run_with_cache(batch)
            for layer in range(tiny_llama.cfg.n_layers):
                p = cache[f"blocks.{layer}.attn.hook_pattern"]
                for b in range(p.shape[0]):
                    for h in range(p.shape[1]):
                        hits[layer, h] += sum(float(p[b, h, i, 0]) > 0.3 for i in range(1, p.shape[2]))
            queries += batch.shape[0] * (batch.shape[1] - 1)
        torch.testing.assert_close(result.rate[d], hits / queries)
    assert result.dormant[:, 1, 2].all() and result.dormant.sum() == 2  # only the planted head, on both
    assert result.switching().empty


def test_dormant_and_switch_rules():
    rate = torch.tensor([[[0.9, 0.55, 0.1]], [[0.2, 0.45, 0.1]]])  # 2 domains, 1 layer, 3 heads
    result = DomainSinkResult(model="m", source="s", threshold=0.3, dormant_rate=0.5, min_spread=0.25,
                              domains=["prose", "code"], n_tokens=[10, 10], rate=rate, attention=rate)
    heads = result.heads()
    assert heads["dormant_in"].tolist() == ["prose", "prose", ""]
    assert heads["active_in"].tolist() == ["code", "code", "prose,code"]
    assert heads["spread"].tolist() == pytest.approx([0.7, 0.1, 0.0])
    assert heads["switches"].tolist() == [True, False, False]  # head 1 only hovers at the cut-off
    frame = result.to_frame()
    assert len(frame) == 6 and frame["state"].tolist()[:3] == ["dormant", "dormant", "active"]
    assert "1 heads switch" in result.summary() and result.figure().data


def test_builtin_domain_samples_are_deterministic_and_distinct():
    first = {d: next(iter(c)) for d, c in domain_corpora().items()}
    again = {d: next(iter(c)) for d, c in domain_corpora().items()}
    assert list(first) == list(DOMAINS) and first == again
    assert first["lists"].startswith("Functions in ") and "\n- " in first["lists"]
    assert sum(ch.isdigit() for ch in first["numbers"]) > 0.6 * len(first["numbers"].replace(", ", ""))
    with pytest.raises(InterpError, match="unknown domain"):
        domain_corpora(["poetry"])


def test_labelled_corpora(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"text": t, "domain": d}) for d, t in
                              [("a", "one"), ("b", "two"), ("a", "three")]))
    groups = labelled_corpora(good)
    assert {d: list(c) for d, c in groups.items()} == {"a": ["one", "three"], "b": ["two"]}
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "x", "domain": "a"}))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}))
    for name, message in [("one.jsonl", "at least two"), ("bad.jsonl", "lacks a 'text' or 'domain'"),
                          ("good.txt", "not a .jsonl")]:
        with pytest.raises(InterpError, match=message):
            labelled_corpora(tmp_path / name)


def test_cli_by_domain(tiny_llama, capsys, tmp_path):
    from interp.cli import main

    assert main(["outliers", "--by-domain", "--model", "tiny-llama", "--tokens", "128", "--seq-len", "64",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # one result: printed on its own
    assert result["kind"] == "domain_sinks" and result["domains"] == list(DOMAINS)
    assert result["n_tokens"] == [128] * 4
    saved = Result.read(DomainSinkResult(**{k: v for k, v in result.items() if k != "kind"} | {
        "rate": torch.tensor(result["rate"]), "attention": torch.tensor(result["attention"])}).save(tmp_path))
    assert saved.rate.shape == (4, 3, 4)
    for bad in (["--by-domain", "Some prompt"], ["--by-domain", "--corpus", str(tmp_path / "x.txt")],
                ["--by-domain", "--dormant-rate", "1.5"]):
        assert main(["outliers", "--model", "tiny-llama", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")

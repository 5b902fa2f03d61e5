"""The built-in fact set: format, splits, verification and its cache."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from circuits.facts import fact_prompt, load_facts, read_facts, verify_facts
from interp.errors import InterpError


def test_records_are_counterfact_shaped():
    facts = load_facts()
    assert len(facts) >= 150
    assert [f["case_id"] for f in facts] == list(range(len(facts)))
    assert len({f["requested_rewrite"]["relation_id"] for f in facts}) >= 10
    for f in facts:
        rewrite = f["requested_rewrite"]
        assert rewrite["prompt"].count("{}") == 1 and rewrite["subject"] in fact_prompt(f)
        new, true = rewrite["target_new"]["str"], rewrite["target_true"]["str"]
        assert new.startswith(" ") and true.startswith(" ") and new != true
        assert f["paraphrase_prompts"] and f["neighborhood_prompts"] and f["generation_prompts"]
        assert f["split"] in ("dev", "test")


def test_counterfactuals_are_of_the_same_type():
    """target_new is always some other fact's true object in the same relation."""
    facts = load_facts()
    objects = {(f["requested_rewrite"]["relation_id"], f["requested_rewrite"]["target_true"]["str"]) for f in facts}
    for f in facts:
        rewrite = f["requested_rewrite"]
        assert (rewrite["relation_id"], rewrite["target_new"]["str"]) in objects


def test_splits_partition_the_set():
    dev, test = load_facts(split="dev"), load_facts(split="test")
    assert len(dev) + len(test) == len(load_facts())
    assert 0.15 < len(test) / (len(dev) + len(test)) < 0.25
    assert len(Counter(f["relation"] for f in test)) >= 10  # held-out cases cover the relations


def test_bad_input(tmp_path):
    with pytest.raises(InterpError, match="split"):
        load_facts(split="train")
    with pytest.raises(InterpError, match="cannot read"):
        read_facts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"requested_rewrite": {"prompt": "no slot", "subject": "x"}}) + "\n")
    with pytest.raises(InterpError, match="requested_rewrite"):
        read_facts(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InterpError, match="not valid JSON"):
        read_facts(bad)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _record(case_id, prompt, subject, true, new=" x"):
    return {"case_id": case_id, "requested_rewrite": {"prompt": prompt, "subject": subject,
                                                      "target_true": {"str": true}, "target_new": {"str": new}}}


def test_verification_matches_greedy_answers_and_is_cached(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    records, expected = [], {}
    for prompt in ["{} sat on the", "{} is in", "Where is {}?", "{} and the dog", "I saw {}"]:
        top = int(tiny_llama(tiny_llama.to_tokens(prompt.replace("{}", "The cat"), prepend_bos=False))[0, -1].argmax())
        answer = tiny_llama.tokenizer.decode([top])
        if tiny_llama.to_tokens(answer, prepend_bos=False)[0].tolist() != [top]:
            continue  # a byte that does not round-trip as text
        wrong = "q" if answer != "q" else "z"
        for target, known in ((answer, True), (wrong, False)):
            records.append(_record(len(records), prompt, "The cat", target))
            expected[str(len(records) - 1)] = known
    assert len(records) >= 4
    path = _write(tmp_path / "facts.jsonl", records)
    assert verify_facts(tiny_llama, path=path) == expected
    kept = [f["case_id"] for f in load_facts(verified_only=True, model=tiny_llama, path=path)]
    assert kept == [int(k) for k, v in expected.items() if v]
    monkeypatch.setattr(type(tiny_llama), "forward", lambda *a, **k: pytest.fail("verdicts not cached"))
    assert verify_facts(tiny_llama, path=path) == expected


@pytest.mark.real
def test_default_model_knows_the_paper_facts(smollm, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    tokenizer = smollm.tokenizer
    facts = load_facts()
    for f in facts:  # single-token answers on the default tokenizer
        for key in ("target_new", "target_true"):
            assert len(tokenizer.encode(f["requested_rewrite"][key]["str"], add_special_tokens=False)) == 1
    by_prompt = {fact_prompt(f): f for f in facts}
    known = [by_prompt[p] for p in ("The capital of France is", "The Eiffel Tower is located in the city of",
                                    "The mother tongue of Danielle Darrieux is")]
    swapped = json.loads(json.dumps(known[0]))
    swapped["case_id"] = 99
    swapped["requested_rewrite"]["target_true"] = swapped["requested_rewrite"]["target_new"]
    path = _write(tmp_path / "facts.jsonl", known + [swapped])
    assert verify_facts(smollm, path=path) == {str(f["case_id"]): True for f in known} | {"99": False}


def test_a_file_without_records_says_so_and_shows_the_format(tmp_path, capsys):
    from interp.cli import main

    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.json", ""), ("list.json", "[]")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InterpError, match=r"has no records; write CounterFact records .*requested_rewrite"):
            read_facts(path)
    assert main(["trace", "--facts", str(tmp_path / "empty.jsonl"), "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no records" in err and "answers none" not in err and "\n" not in err


def test_no_user_facing_text_points_to_a_design_document():
    """Error messages and help must stand alone: DESIGN.md is not shipped with the package."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("interp", "circuits", "probes", "dashboards"):
        for path in (root / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            found += [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and "DESIGN.md" in node.value and id(node) not in docstrings]
    assert not found

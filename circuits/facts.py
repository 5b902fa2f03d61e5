"""The built-in fact set: CounterFact-format records with single-token answers, and which of them a
model knows.

Each record has `case_id`, `split` ("dev" for development, "test" held out), `relation`,
`requested_rewrite` {prompt with "{}", subject, target_new {str}, target_true {str}, relation_id},
`paraphrase_prompts`, `neighborhood_prompts` (other subjects whose answer is also target_true),
`attribute_prompts` (subjects whose answer is target_new) and `generation_prompts`.
A fact is *verified* for a model when its greedy next token after the rewrite prompt is the first
token of target_true; verdicts are cached per content of the model's weights and of the fact file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from interp.errors import InterpError, file_error

FACTS_PATH = Path(__file__).with_name("data") / "facts.jsonl"
SPLITS = ("dev", "test")
# A minimal fact record, quoted in error messages so that a file can be fixed without other documents.
RECORD_FORMAT = ('write CounterFact records (one per line in .jsonl, a list in .json), e.g. {"case_id": 1, '
                 '"requested_rewrite": {"prompt": "{} is located in", "subject": "The Louvre", '
                 '"target_true": {"str": " Paris"}}}')


def read_facts(path: str | Path = FACTS_PATH) -> list[dict]:
    """Records of a CounterFact-format file (.jsonl, or a .json list as the original CounterFact)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InterpError(f"cannot read facts file {path} ({e.strerror}); pass an existing .jsonl or .json file") from e
    except UnicodeDecodeError as e:
        raise file_error(path, e) from None
    try:
        lines = [line for line in text.splitlines() if line.strip()]
        records = json.loads(text) if path.suffix == ".json" and lines else [json.loads(line) for line in lines]
    except ValueError as e:
        raise InterpError(f"{path} is not valid JSON ({e}); one CounterFact record per line is expected") from e
    if not records:
        raise InterpError(f"{path} has no records; {RECORD_FORMAT}")
    for n, record in enumerate(records, 1):
        problem = record_problem(record)
        if problem:
            raise InterpError(f"{path} record {n}: {problem}; {RECORD_FORMAT}")
    return records


def record_problem(record) -> str | None:
    """What keeps `record` from being traced (a missing field or one of the wrong type), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    rewrite = record.get("requested_rewrite")
    if "case_id" not in record or not isinstance(rewrite, dict):
        return "it needs a case_id and a requested_rewrite object"
    prompt, subject, true = rewrite.get("prompt"), rewrite.get("subject"), rewrite.get("target_true")
    if not isinstance(prompt, str) or "{}" not in prompt:
        return "requested_rewrite.prompt must be a string with {} where the subject goes"
    if not isinstance(subject, str) or not subject.strip():
        return "requested_rewrite.subject must be a non-empty string"
    if not isinstance(true, dict) or not isinstance(true.get("str"), str) or not true["str"]:
        return 'requested_rewrite.target_true must be {"str": "<the true answer>"}'
    return None


def fact_prompt(record: dict) -> str:
    """The rewrite prompt with the subject filled in."""
    rewrite = record["requested_rewrite"]
    return rewrite["prompt"].replace("{}", rewrite["subject"])


def load_facts(verified_only: bool = False, model=None, split: str | None = None,
               path: str | Path = FACTS_PATH) -> list[dict]:
    """The fact records in stable `case_id` order.

    verified_only keeps the facts that `model` (default: the default model) answers correctly;
    split ("dev" or "test") keeps one part, so that evaluation can use cases not seen while developing.
    """
    if split is not None and split not in SPLITS:
        raise InterpError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    records = read_facts(path)
    if split is not None:
        records = [r for r in records if r.get("split") == split]
    if verified_only:
        if model is None:
            from interp.models import DEFAULT_MODEL, load_model

            model = load_model(DEFAULT_MODEL)
        verdicts = verify_facts(model, read_facts(path), path)
        records = [r for r in records if verdicts[str(r["case_id"])]]
    return records


def model_cache_file(model, area: str, path: str | Path = FACTS_PATH) -> Path:
    """A cache file for something derived from `model` and the fact file at `path`, keyed on the
    content of both: the weights as they are now (an edited model misses) and the file's bytes."""
    from interp.cache import cache_dir
    from interp.fingerprint import cache_name, file_fingerprint, weights_fingerprint

    return cache_dir(area) / cache_name(area, ".json", weights=weights_fingerprint(model), facts=file_fingerprint(path))


@torch.no_grad()
def verify_facts(model, records: list[dict] | None = None, path: str | Path = FACTS_PATH,
                 batch_size: int = 64) -> dict[str, bool]:
    """{case_id (str): whether the model's greedy answer is target_true's first token}, cached on disk.

    Prompts of equal token length are batched together, so no padding can change the answer.
    """
    records = read_facts(path) if records is None else records
    cache = model_cache_file(model, "facts", path)
    if cache.exists():
        return json.loads(cache.read_text())
    by_length: dict[int, list[tuple[str, torch.Tensor, int]]] = defaultdict(list)
    for record in records:
        tokens = model.to_tokens(fact_prompt(record), prepend_bos=False)[0]
        answer = model.to_tokens(record["requested_rewrite"]["target_true"]["str"], prepend_bos=False)[0, 0]
        by_length[len(tokens)].append((str(record["case_id"]), tokens, int(answer)))
    verdicts: dict[str, bool] = {}
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            logits = model(torch.stack([t for _, t, _ in chunk]).to(model.cfg.device), return_type="logits")
            top = logits[:, -1].argmax(-1).tolist()
            verdicts.update({case: top[j] == answer for j, (case, _, answer) in enumerate(chunk)})
    cache.write_text(json.dumps(verdicts))
    return verdicts

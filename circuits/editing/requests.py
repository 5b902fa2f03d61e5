"""Edit requests in the CounterFact record format, read from files and checked before any edit.

A record: {"case_id", "requested_rewrite": {"prompt": "{} ...", "subject", "target_new": {"str"},
"target_true": {"str"}}, "paraphrase_prompts", "neighborhood_prompts", "generation_prompts"}.
Targets get a leading space when they lack one, as in the ROME and MEMIT code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError, file_error

from circuits.editing.context import build_batch, subject_last_index


@dataclasses.dataclass
class EditRequest:
    """One fact to rewrite, plus the prompts that evaluate it (empty when none were given)."""

    prompt: str  # template with "{}" where the subject goes
    subject: str
    target_new: str
    target_true: str | None = None
    case_id: Any = None
    paraphrase_prompts: list[str] = dataclasses.field(default_factory=list)
    neighborhood_prompts: list[str] = dataclasses.field(default_factory=list)
    generation_prompts: list[str] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)

    def label(self) -> str:
        return f"case {self.case_id}" if self.case_id is not None else repr(self.text)

    def to_record(self) -> dict[str, Any]:
        """The CounterFact-format record of this request."""
        rewrite = {"prompt": self.prompt, "subject": self.subject, "target_new": {"str": self.target_new}}
        if self.target_true is not None:
            rewrite["target_true"] = {"str": self.target_true}
        return {"case_id": self.case_id, "requested_rewrite": rewrite,
                "paraphrase_prompts": self.paraphrase_prompts,
                "neighborhood_prompts": self.neighborhood_prompts,
                "generation_prompts": self.generation_prompts}


def _spaced(target: str) -> str:
    return target if target.startswith(" ") else " " + target


def check_template(prompt: str, subject: str) -> None:
    """Raise a one-line error unless `prompt` has exactly one "{}" and `subject` is not empty."""
    if not subject or not subject.strip():
        raise InterpError("the subject is empty; pass the entity whose fact changes, e.g. 'Eiffel Tower'")
    count = prompt.count("{}")
    if count == 0:
        if subject in prompt:
            fix = prompt.replace(subject, "{}", 1)
            raise InterpError(f"the prompt has no {{}} where the subject goes; write it as {fix!r}")
        raise InterpError(f"the subject {subject!r} is not in the prompt {prompt!r}, which has no {{}} "
                          "either; write the prompt as a template such as '{} is located in'")
    if count > 1:
        raise InterpError(f"the prompt {prompt!r} has {count} {{}} placeholders; keep one, where the subject goes")


def make_request(prompt: str, subject: str, target_new: str, target_true: str | None = None,
                 **fields: Any) -> EditRequest:
    """A checked `EditRequest` (targets get their leading space)."""
    check_template(prompt, subject)
    if not target_new or not target_new.strip():
        raise InterpError("the new target is empty; pass the new answer, e.g. ' Rome'")
    true = _spaced(target_true) if target_true and target_true.strip() else None
    new = _spaced(target_new)
    if true is not None and new.strip() == true.strip():
        raise InterpError(f"the new target {new!r} equals the true one; pick a different answer")
    return EditRequest(prompt, subject, new, true, **fields)


def _str_list(record: dict, key: str, where: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InterpError(f"{where} is not CounterFact-shaped: {key!r} must be a list of non-empty strings")
    return value


def from_record(record: Any, where: str = "record") -> EditRequest:
    """An `EditRequest` from one CounterFact record (or a bare "requested_rewrite" dict)."""
    if not isinstance(record, dict):
        raise InterpError(f"{where} is not a JSON object; see the CounterFact record format")
    rewrite = record.get("requested_rewrite", record)
    if not isinstance(rewrite, dict):
        raise InterpError(f"{where}: 'requested_rewrite' must be an object")
    for key in ("prompt", "subject"):
        if not isinstance(rewrite.get(key), str):
            raise InterpError(f"{where} is not CounterFact-shaped: requested_rewrite.{key} must be a string")
    targets = {}
    for key in ("target_new", "target_true"):
        value = rewrite.get(key)
        if isinstance(value, str):
            value = {"str": value}
        if value is None and key == "target_true":
            targets[key] = None
            continue
        if not isinstance(value, dict) or not isinstance(value.get("str"), str):
            raise InterpError(f"{where} is not CounterFact-shaped: requested_rewrite.{key} must be {{\"str\": ...}}")
        targets[key] = value["str"]
    try:
        return make_request(
            rewrite["prompt"], rewrite["subject"], targets["target_new"], targets["target_true"],
            case_id=record.get("case_id"),
            paraphrase_prompts=_str_list(record, "paraphrase_prompts", where),
            neighborhood_prompts=_str_list(record, "neighborhood_prompts", where),
            generation_prompts=_str_list(record, "generation_prompts", where),
        )
    except InterpError as e:
        raise InterpError(f"{where}: {e}") from None


def as_request(item: Any) -> EditRequest:
    """Accept an `EditRequest`, a CounterFact record or a requested_rewrite dict."""
    return item if isinstance(item, EditRequest) else from_record(item)


def load_records(path: str | Path) -> list[EditRequest]:
    """Requests from a CounterFact-format file: a JSON list of records, or JSON Lines."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InterpError(f"{path} not found; pass a CounterFact-format .json or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, e) from None
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InterpError(f"{path}:{n} is neither a JSON list nor JSON Lines; fix that line") from None
    if not records:
        raise InterpError(f"{path} holds no records; give it CounterFact-format records")
    out = []
    for n, record in enumerate(records):
        case = record.get("case_id") if isinstance(record, dict) else None
        where = f"{path.name} record {n}" + (f" (case_id {case})" if case is not None else "")
        out.append(from_record(record, where))
    return out


@torch.no_grad()
def check_requests(model, requests: list[EditRequest]) -> None:
    """Refuse requests the model cannot take before any weight changes: a subject whose tokens are
    not found, or a new target the model already predicts (every token greedy-correct)."""
    for r in requests:
        try:
            subject_last_index(model, r.prompt, r.subject)
        except InterpError as e:
            raise InterpError(f"{r.label()}: {e}") from None
    batch = build_batch(model, [r.prompt for r in requests], [r.subject for r in requests],
                        [r.target_new for r in requests])
    logits = model(batch.tokens)
    for i, r in enumerate(requests):
        greedy = logits[i, batch.target_pos[i]].argmax(-1).tolist()
        if greedy == batch.target_ids[i]:
            raise InterpError(f"{r.label()}: the model already answers {r.target_new!r} to {r.text!r}; "
                              "pick a different target")

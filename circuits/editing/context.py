"""Context templates and prompt batches: the inputs every editing method shares.

ROME and MEMIT average keys and fit values over the request prompt plus short model-generated
prefixes ("{}" and "<generated text>. {}"), so that the edit holds in many contexts. The prefixes are
sampled like the MEMIT reference (`get_context_templates`): top-5 sampling from the starters
"The", "Therefore", "Because", "I", "You", a few tokens long; we seed the sampler so runs repeat.
"""

from __future__ import annotations

import dataclasses

import torch

from interp.fingerprint import weights_fingerprint
from interp.tokens import locate

STARTERS = ("The", "Therefore", "Because", "I", "You")
_TEMPLATES: dict[tuple, list[list[str]]] = {}


def _ids(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample_texts(model, prompts: list[str], n_per_prompt: int, max_len: int, top_k: int = 5,
                 seed: int = 0) -> list[str]:
    """Top-k samples of at most `max_len` tokens (prompt included), like the reference `generate_fast`."""
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for prompt in prompts:
        tokens = torch.tensor([_ids(model, prompt)] * n_per_prompt, device=model.cfg.device)
        while tokens.shape[1] < max_len:
            logits = model(tokens)[:, -1].float().cpu()
            top, idx = logits.topk(top_k, dim=-1)
            pick = torch.multinomial(top.softmax(-1), 1, generator=generator)
            tokens = torch.cat([tokens, idx.gather(1, pick).to(tokens.device)], dim=1)
        texts += model.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    return texts


def context_templates(model, lengths: tuple[tuple[int, int], ...], seed: int = 0) -> list[list[str]]:
    """[["{}"], [prefix + ". {}", ...] per (length, count)] for `model`, cached per content of its
    weights (an edited model samples anew; undoing the edit finds the first set again) and lengths.

    `count` prefixes of `length` tokens are sampled for each (length, count), spread over the starters.
    """
    key = (weights_fingerprint(model), lengths, seed)
    if key not in _TEMPLATES:
        groups = [["{}"]]
        for length, count in lengths:
            per = max(1, count // len(STARTERS))
            texts = sample_texts(model, list(STARTERS), per, length, seed=seed)[:count]
            groups.append([t.replace("{", " ").replace("}", " ").replace("\n", " ") + ". {}" for t in texts])
        _TEMPLATES[key] = groups
    return _TEMPLATES[key]


def subject_last_index(model, template: str, subject: str) -> tuple[list[int], int]:
    """(token ids of template with the subject filled in, index of the subject's last token)."""
    at = template.index("{}")
    text = template[:at] + subject + template[at + 2:]
    ids, (_, stop) = locate(model, text, at, at + len(subject))
    return ids, stop - 1


@dataclasses.dataclass
class PromptBatch:
    """Right-padded token ids with, per row, the subject's last token and the target positions.

    Right padding needs no attention mask in a causal model: real positions never see the padding.
    `target_pos[i]` are the positions whose next-token logits must predict `target_ids[i]`.
    """

    tokens: torch.Tensor  # [B, T]
    lookup: torch.Tensor  # [B]
    lengths: torch.Tensor  # [B]
    target_pos: list[list[int]]
    target_ids: list[list[int]]


def build_batch(model, templates: list[str], subjects: list[str | None], targets: list[str | None]) -> PromptBatch:
    """Tokenize `template.replace('{}', subject)` (+ target tokens, teacher-forced) for each row.

    A row without a subject takes its template as plain text; its lookup index is its last token.
    """
    rows, lookup, target_pos, target_ids = [], [], [], []
    for template, subject, target in zip(templates, subjects, targets):
        if subject is None:
            ids = _ids(model, template)
            last = len(ids) - 1
        else:
            ids, last = subject_last_index(model, template, subject)
        tgt = _ids(model, target) if target else []
        target_pos.append(list(range(len(ids) - 1, len(ids) - 1 + len(tgt))))
        target_ids.append(tgt)
        rows.append(ids + tgt)
        lookup.append(last)
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.cfg.device)
    return PromptBatch(tokens, torch.tensor(lookup), torch.tensor([len(r) for r in rows]), target_pos, target_ids)

"""Prompt tokenization with the checks every analysis needs (empty, too long, subject spans)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp.errors import InterpError


def encode(model, prompt: str) -> torch.Tensor:
    """Token ids [1, T] for `prompt` (no BOS, as the default tokenizer does), checked against n_ctx."""
    if not prompt or not prompt.strip():
        raise InterpError("the prompt is empty; pass some text")
    tokens = model.to_tokens(prompt, prepend_bos=False, truncate=False)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InterpError(
            f"the prompt has {tokens.shape[1]} tokens but the model's context is {model.cfg.n_ctx}; shorten it"
        )
    return tokens.to(model.cfg.device)


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    """The token strings of a [1, T] or [T] tensor."""
    return list(model.to_str_tokens(tokens.reshape(-1)))


def token_offsets(model, text: str, ids: Sequence[int] | torch.Tensor | None = None
                  ) -> tuple[list[int], list[tuple[int, int]]]:
    """(token ids, [start, end) character range of each token in `text`) for `text` tokenized without BOS.

    `ids` defaults to the tokenizer's own ids; pass `model.to_tokens(text, prepend_bos=False)` to get the
    ranges of exactly those tokens. A token holding part of a multi-byte character (Cyrillic, CJK, accents
    under a byte-level tokenizer) covers that whole character, so no text is lost to U+FFFD pieces. The
    ranges come from a fast tokenizer's offset mapping when its ids are `ids`, else from decoding prefixes.
    """
    tokenizer = model.tokenizer
    if ids is not None:
        ids = [int(i) for i in torch.as_tensor(ids).reshape(-1)]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if ids is None or enc["input_ids"] == ids:
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if ids is None:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids, decoded_offsets(tokenizer, text, ids)


def decoded_offsets(tokenizer, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character ranges of `ids` in `text` found by decoding ever longer prefixes (for tokenizers without
    offsets). A token that only starts a character (the prefix decodes to a trailing U+FFFD) gets the
    range of that one character; the token that completes it starts there too."""
    stripped = len(text) - len(text.lstrip())
    ranges, done = [], 0
    for i in range(len(ids)):
        piece = tokenizer.decode(list(ids[:i + 1])).rstrip("\ufffd")
        if text.startswith(piece):
            end = len(piece)
        elif text[stripped:].startswith(piece.lstrip()):  # decoders that drop a leading space
            end = stripped + len(piece.lstrip())
        else:
            end = next((k for k, (a, b) in enumerate(zip(piece, text)) if a != b), min(len(piece), len(text)))
        end = max(end, done)
        ranges.append((done, end) if end > done else (done, min(done + 1, len(text))))
        done = end
    return ranges


def span_of_chars(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, stop) indices of the tokens whose character ranges overlap [start, end) (empty if none)."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def locate(model, text: str, start: int, end: int, ids: Sequence[int] | torch.Tensor | None = None
           ) -> tuple[list[int], tuple[int, int]]:
    """(token ids of `text`, [first, stop) tokens covering the characters text[start:end]).

    Surrounding whitespace of the range is ignored, so " Paris" and "Paris" cover the same tokens; a range
    that starts or ends inside a token takes the whole token. The one place that maps text to tokens for
    tracing, knockout, editing and probes.
    """
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    ids, offsets = token_offsets(model, text, ids)
    span = span_of_chars(offsets, start, end)
    if start >= end or span[0] >= span[1]:
        raise InterpError(f"{text[start:end]!r} covers no token of {text!r}; pass a non-empty subject")
    return ids, span


def find_span(model, text: str, subject: str, ids: Sequence[int] | torch.Tensor | None = None
              ) -> tuple[int, int]:
    """[start, end) token indices covering the last occurrence of `subject` in `text`.

    `ids` are the tokens of `text` the indices refer to (default: the tokenizer's, without BOS). Works on
    character offsets, so subjects in any script, and subjects that start mid-token (" Eiffel" vs
    "E" + "iffel"), are found.
    """
    needle = subject.strip()
    if not needle:
        raise InterpError("the subject is empty; pass the words of the prompt to locate, e.g. 'Eiffel Tower'")
    at = text.rfind(needle)
    if at < 0:
        raise InterpError(f"the subject {subject!r} is not in the prompt {text!r}; copy it from the prompt "
                          "exactly (case and accents count)")
    return locate(model, text, at, at + len(needle), ids)[1]


def answer_token(model, target: str, option: str = "--target") -> tuple[int, bool]:
    """(id of the first token of `target`, whether the target needed more than one token).

    `option` names the setting `target` came from (--target, --foil), so an empty one is reported as such.
    """
    if not target:
        raise InterpError(f"{option} is empty; pass the answer text with its leading space, e.g. ' Paris'")
    ids = model.to_tokens(target, prepend_bos=False)[0]
    return int(ids[0]), len(ids) > 1

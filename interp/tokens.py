"""Prompt tokenization with the checks every analysis needs (empty, too long, subject spans)."""

from __future__ import annotations

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


def find_span(model, tokens: torch.Tensor, text: str) -> tuple[int, int]:
    """[start, end) token indices covering the last occurrence of `text` in the decoded prompt.

    Works on characters, so a subject that starts mid-token (" Eiffel" vs "E"+"iffel") is still found.
    """
    pieces = str_tokens(model, tokens)
    decoded = "".join(pieces)
    needle = text.strip()
    at = decoded.rfind(needle) if needle else -1
    if at < 0:
        raise InterpError(f"{text!r} is not in the prompt; its tokens are {pieces}")
    end_char = at + len(needle)
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    first = max(i for i, s in enumerate(starts) if s <= at)
    last = max(i for i, s in enumerate(starts) if s < end_char)
    return first, last + 1


def answer_token(model, target: str) -> tuple[int, bool]:
    """(id of the first token of `target`, whether the target needed more than one token)."""
    if not target:
        raise InterpError("the target is empty; pass the answer text, e.g. ' Paris'")
    ids = model.to_tokens(target, prepend_bos=False)[0]
    return int(ids[0]), len(ids) > 1

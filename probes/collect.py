"""Residual-stream activations of many texts at one position per text, for all chosen layers in one pass.

Texts are batched by length and right-padded. With right padding a causal model never lets a real
token see a pad, so no attention mask is needed; what matters is reading each text at its own last
real token (its length - 1), never at the padded end. Positions:
- "last": the last token (Marks & Tegmark probe the statement's final token, usually the period);
- "mean": the mean over the text's tokens;
- "mark": the last token of the text's `mark` substring (e.g. the country in a city statement);
- an integer: that token index in every text (negative counts from each text's own end).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from interp.errors import InterpError
from interp.fingerprint import settings_fingerprint, weights_fingerprint
from interp.hooks import check_layer, resid_post
from interp.tokens import find_span

POSITIONS = ("last", "mean", "mark")


def parse_position(position: str | int) -> str | int:
    """'last', 'mean', 'mark' or an integer token index (given as int or text)."""
    if isinstance(position, int) or position in POSITIONS:
        return position
    try:
        return int(position)
    except ValueError:
        raise InterpError(f"unknown position {position!r}; use last, mean, mark or a token index like -2") from None


def tokenize(model, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, without special tokens (as `interp.tokens.encode`), checked for empty / too long."""
    if not len(texts):
        raise InterpError("no texts to collect activations for; pass a non-empty dataset")
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise InterpError(f"text {i} is empty; remove it or fill it in")
    ids = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) > model.cfg.n_ctx:
        raise InterpError(f"text {longest} has {len(ids[longest])} tokens but the context is {model.cfg.n_ctx}; "
                          "shorten it")
    return ids


def token_indices(model, texts: Sequence[str], ids: list[list[int]], position: str | int,
                  marks: Sequence[str] | None) -> list[int]:
    """The token index read in each text (for every position but 'mean')."""
    if position == "last":
        return [len(x) - 1 for x in ids]
    if position == "mark":
        if marks is None:
            raise InterpError("position 'mark' needs a dataset with a 'mark' column naming a word of each text")
        return [find_span(model, text, mark, x)[1] - 1 for text, x, mark in zip(texts, ids, marks, strict=True)]
    out = []
    for i, x in enumerate(ids):
        if not -len(x) <= position < len(x):
            raise InterpError(f"position {position} is outside text {i}, which has {len(x)} tokens; "
                              "pick a smaller index")
        out.append(position % len(x))
    return out


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def collect_activations(model, texts: Sequence[str], layers: Sequence[int] | None = None,
                        position: str | int = "last", marks: Sequence[str] | None = None,
                        batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """`blocks.{l}.hook_resid_post` at `position` for every text: a float32 tensor [len(layers), N, d_model]."""
    from tqdm.auto import tqdm

    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, l) for l in layers]
    if not layers:
        raise InterpError("no layers chosen; pass 'all' or some layer indices")
    position = parse_position(position)
    ids = tokenize(model, texts)
    lengths = [len(x) for x in ids]
    at = None if position == "mean" else token_indices(model, texts, ids, position, marks)
    names = {resid_post(l): i for i, l in enumerate(layers)}
    pad = model.tokenizer.pad_token_id or 0
    out = torch.empty(len(layers), len(ids), model.cfg.d_model)
    batches = _batches(lengths, batch_size)
    for rows in tqdm(batches, desc="activations", unit="batch", file=sys.stderr, disable=not progress):
        n = torch.tensor([lengths[r] for r in rows], device=model.cfg.device)
        tokens = torch.full((len(rows), int(n.max())), pad, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, :lengths[r]] = torch.tensor(ids[r])
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda name: name in names,
                                        stop_at_layer=max(layers) + 1)
        for name, i in names.items():
            acts = cache[name]  # [B, T, d]
            if at is None:
                real = (torch.arange(acts.shape[1], device=acts.device)[None, :] < n[:, None]).to(acts.dtype)
                picked = (acts * real[..., None]).sum(1) / n[:, None]
            else:
                picked = acts[torch.arange(len(rows)), torch.tensor([at[r] for r in rows])]
            out[i, rows] = picked.float().cpu()
    return out


def activation_key(model, texts: Sequence[str], layers: Sequence[int], position: str | int,
                   marks: Sequence[str] | None) -> str:
    """A content hash naming one collection: the model's weights as they are now (an edited model
    misses), the texts, marks, position and layers."""
    return settings_fingerprint(weights=weights_fingerprint(model), texts=list(texts), position=str(position),
                                marks=list(marks or []) if position == "mark" else None, layers=list(layers),
                                hook="resid_post")


def cached_activations(model, texts: Sequence[str], layers: Sequence[int], position: str | int = "last",
                       marks: Sequence[str] | None = None, batch_size: int = 32,
                       workspace: str | Path | None = None) -> torch.Tensor:
    """`collect_activations`, stored in `<workspace>/.activations/` and reused when asked again."""
    if workspace is None:
        return collect_activations(model, texts, layers, position, marks, batch_size)
    from safetensors.torch import load_file, save_file

    folder = Path(workspace).expanduser() / ".activations"
    path = folder / f"{activation_key(model, texts, layers, position, marks)}.safetensors"
    if path.is_file():
        return load_file(str(path))["acts"]
    acts = collect_activations(model, texts, layers, position, marks, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"acts": acts.contiguous()}, str(tmp))
    tmp.rename(path)
    return acts

"""Vectors of the residual stream read as token scores: what a direction promotes in the vocabulary.

Geva et al. (2022) project a value vector v with the embedding matrix directly (GPT-2 ties E and the
unembedding, and they skip the final LayerNorm). Here a vector goes through the *linear part* of the
model's final norm before the unembedding: centred when the norm is a LayerNorm, and multiplied by its
elementwise gain `ln_final.w`, as `fold_ln` folds them into W_U. The norm's remaining factor, 1/rms of
the whole final residual, is one positive number per position, so leaving it out changes no token's rank;
the gain does change ranks (SmolLM2's runs from 0.87 to 3.3 across dimensions), and it is what the
model itself applies to anything added to the residual. The norm's bias and the unembedding bias are the
same for every vector, so they are left out too: scores are the change in logits per unit of the vector,
up to that one positive factor.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 512  # vectors scored at a time: [512, d_vocab] float32 is 100 MB for SmolLM2


def readout(model, vectors: torch.Tensor) -> torch.Tensor:
    """`vectors` [..., d_model] through the final norm's linear part (centring for LayerNorm, the gain)."""
    if model.cfg.normalization_type in ("LN", "LNPre"):
        vectors = vectors - vectors.mean(-1, keepdim=True)
    gain = getattr(model.ln_final, "w", None)
    return vectors * gain if gain is not None else vectors


def token_scores(model, vectors: torch.Tensor) -> torch.Tensor:
    """[n, d_model] -> [n, d_vocab]: each vector's score for every token (see the module note)."""
    return readout(model, vectors) @ model.W_U


def vocab_extremes(model, vectors: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The k highest- and k lowest-scoring tokens of each of `vectors` [n, d_model], best first.

    Returns {"top_ids", "top_scores", "bottom_ids", "bottom_scores"}, each [n, k] on the CPU (bottom
    tokens lowest first). Scored in chunks of `CHUNK_ROWS` so the whole-model table never holds more
    than one chunk's [rows, d_vocab] scores.
    """
    k = min(k, model.cfg.d_vocab)
    parts: dict[str, list[torch.Tensor]] = {"top_ids": [], "top_scores": [], "bottom_ids": [], "bottom_scores": []}
    for start in range(0, vectors.shape[0], CHUNK_ROWS):
        scores = token_scores(model, vectors[start:start + CHUNK_ROWS])
        top = scores.topk(k, dim=-1)
        bottom = scores.topk(k, dim=-1, largest=False)
        parts["top_ids"].append(top.indices.cpu())
        parts["top_scores"].append(top.values.float().cpu())
        parts["bottom_ids"].append(bottom.indices.cpu())
        parts["bottom_scores"].append(bottom.values.float().cpu())
    return {name: torch.cat(chunks) if chunks else torch.empty(0, k) for name, chunks in parts.items()}


def vocabulary(model) -> list[str]:
    """Every token id's text, decoded one id at a time (the way a token reads on its own)."""
    return model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])

"""PMET (Li et al. 2024): optimise attention and MLP deltas together, write only the MLP part.

As in the reference `pmet_main.py` / `compute_zs.py`: deltas on the attention output and on the MLP
output of the last edit layer are optimised jointly (lr 0.2, 30 steps, KL factor 1), so the
attention delta absorbs what the MLP should not carry; only the MLP target is kept, and it is spread
over the MLP layers with R / sqrt(L - i) and lambda 6,000, scaled to the MLP width like MEMIT's
(see `memit.update_weight`, `memit.spread_update`).
"""

from __future__ import annotations

import dataclasses
import math

from interp.hooks import attn_out, mlp_out

from circuits.editing.handle import EditHandle
from circuits.editing.memit import batch_edit, update_weight
from circuits.editing.optimize import ValueSettings
from circuits.editing.requests import EditRequest
from circuits.editing.stats import DEFAULT_TOKENS


@dataclasses.dataclass(frozen=True)
class PMETSettings:
    """Reference hyperparameters (GPT-J): lr 0.2, 30 steps, KL 1, clamp 0.75, lambda 6,000
    (scaled to the model's MLP width unless `mom2_update_weight` is given)."""

    values: ValueSettings = ValueSettings(lr=0.2, steps=30, kl_factor=1.0, weight_decay=0.5, clamp=0.75)
    mom2_update_weight: float | None = None
    reference_mom2_update_weight: float = 6_000.0
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    stats_tokens: int = DEFAULT_TOKENS
    corpus: str | None = None


def pmet(model, requests: list | EditRequest | dict, layers: list[int] | str | int | None = None,
         settings: PMETSettings = PMETSettings(), progress: bool = True) -> EditHandle:
    """Apply PMET for all requests at once; return the undo handle. Bad input changes nothing."""
    return batch_edit(
        model, "pmet", requests, layers, lambda l: [attn_out(l), mlp_out(l)], 1, mlp_out,
        update_weight(model, settings.mom2_update_weight, settings.reference_mom2_update_weight), math.sqrt,
        settings.values, settings.context_lengths,
        settings.stats_tokens, settings.corpus, progress)

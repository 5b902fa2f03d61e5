"""ROME (Meng et al. 2022): a rank-one update of one MLP output matrix that writes one fact.

Faithful to the reference `rome/compute_u.py`, `compute_v.py`: the key is the input of the MLP down
projection at the subject's last token, averaged over "{}" and 20 generated prefixes;
u = C^-1 k / |C^-1 k| with C = E[k k^T] over a corpus; v* is optimised on the MLP output (see
`optimize`); then W_out += u v^T with v = (v* - W k) / (k . u), where k and W k are taken on the
request prompt itself, so that this key maps exactly to v*.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from interp.hooks import mlp_output

from circuits.editing.context import context_templates
from circuits.editing.handle import EditHandle, apply_updates, w_out
from circuits.editing.keys import plain, request_keys
from circuits.editing.layers import resolve_layers
from circuits.editing.optimize import ValueSettings, optimize_values
from circuits.editing.requests import EditRequest, as_request, check_requests
from circuits.editing.stats import DEFAULT_TOKENS, key_hook, second_moments


@dataclasses.dataclass(frozen=True)
class ROMESettings:
    """Reference hyperparameters (GPT-2 XL): 20 Adam steps at lr 0.5, KL 0.0625, clamp 4."""

    values: ValueSettings = ValueSettings(lr=0.5, steps=20, kl_factor=0.0625, weight_decay=0.5, clamp=4.0)
    context_lengths: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    stats_tokens: int = DEFAULT_TOKENS
    corpus: str | None = None


def compute_u(model, request: EditRequest, layer: int, templates: list[str], cov: torch.Tensor) -> torch.Tensor:
    """The left vector: C^-1 k (k averaged over templates), unit norm, float64 [d_mlp]."""
    key = request_keys(model, layer, [request], [templates])[0].double()
    u = torch.linalg.solve(cov, key)
    return u / u.norm()


def rome_update(model, request: EditRequest, layer: int, templates: list[str], cov: torch.Tensor,
                values: ValueSettings) -> tuple[torch.Tensor, dict[str, Any]]:
    """The update [d_mlp, d_model] for W_out of `layer`, and what went into it."""
    u = compute_u(model, request, layer, templates, cov)
    site = mlp_output(model, layer)  # W_out's own output: under a norm after the MLP, not hook_mlp_out
    opt = optimize_values(model, [request], [site], templates, values, progress=False)
    target = opt.target[0, 0].double()
    key = plain(model, key_hook(layer), [request])[0].double()
    current = plain(model, site, [request])[0].double()
    v = (target - current) / key.dot(u)
    info = {"u": u.float(), "v": v.float(), "key": key.float(), "value": target.float(),
            "losses": opt.losses[0], "nlls": opt.nlls[0]}
    return torch.outer(u, v), info


def rome(model, requests: EditRequest | dict | list, layer: int | None = None,
         settings: ROMESettings = ROMESettings(), progress: bool = True) -> EditHandle:
    """Apply ROME for each request in turn (as the reference does for several); return the undo handle.

    Bad input raises `InterpError` before any weight changes.
    """
    reqs = [as_request(r) for r in (requests if isinstance(requests, list) else [requests])]
    (layer,) = resolve_layers(model, layer, "rome")
    check_requests(model, reqs)
    cov = second_moments(model, [layer], settings.corpus, settings.stats_tokens, progress)[layer]
    templates = [t for group in context_templates(model, settings.context_lengths) for t in group]
    infos: list[dict[str, Any]] = []

    def compute() -> None:
        for req in reqs:  # each edit sees the ones before it
            update, info = rome_update(model, req, layer, templates, cov, settings.values)
            with torch.no_grad():
                w_out(model, layer).add_(update.to(w_out(model, layer).dtype))
            infos.append(info)

    return apply_updates(model, "rome", reqs, [layer], compute, {"edits": infos, "templates": templates})

"""Reading activations at the subject's last token: MLP keys, MLP outputs, residuals."""

from __future__ import annotations

import torch

from circuits.editing.context import build_batch
from circuits.editing.requests import EditRequest
from circuits.editing.stats import key_hook


@torch.no_grad()
def at_subject(model, hook: str, templates: list[str], subjects: list[str], chunk: int = 64) -> torch.Tensor:
    """The activation of `hook` at the subject's last token of each filled template: [N, dim]."""
    layer = int(hook.split(".")[1])
    out = []
    for i in range(0, len(templates), chunk):
        batch = build_batch(model, templates[i:i + chunk], subjects[i:i + chunk], [None] * len(templates[i:i + chunk]))
        _, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n == hook, stop_at_layer=layer + 1)
        acts = cache[hook]
        out.append(acts[torch.arange(len(batch.lookup)), batch.lookup].reshape(len(batch.lookup), -1))
    return torch.cat(out).cpu()


def request_keys(model, layer: int, requests: list[EditRequest], groups: list[list[str]]) -> torch.Tensor:
    """MLP keys [R, d_mlp]: per request, the mean over template groups of the mean within a group
    (the reference `compute_ks`; with one flat group this is ROME's plain average)."""
    flat = [t.replace("{}", r.prompt) for r in requests for g in groups for t in g]
    subjects = [r.subject for r in requests for g in groups for _ in g]
    keys = at_subject(model, key_hook(layer), flat, subjects)
    out, at = [], 0
    for _ in requests:
        means = []
        for g in groups:
            means.append(keys[at:at + len(g)].mean(0))
            at += len(g)
        out.append(torch.stack(means).mean(0))
    return torch.stack(out)


def plain(model, hook: str, requests: list[EditRequest]) -> torch.Tensor:
    """`hook` at the subject's last token of each request's own prompt: [R, dim]."""
    return at_subject(model, hook, [r.prompt for r in requests], [r.subject for r in requests])

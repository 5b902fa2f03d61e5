"""The value optimization shared by ROME (v*), MEMIT (z) and PMET (z_attn, z_mlp).

For each request, a delta is added to chosen activations (hook sites) at the subject's last token of
every rewriting prompt and of the KL prompt "{subject} is a"; Adam minimises
    mean target NLL + kl_factor * KL(p || p_init) on the KL prompt + decay * |delta|^2 / |init|^2
and keeps |delta| <= clamp * |init|, stopping a request once its loss drops below 0.05, like the
reference `compute_v` / `compute_z`. Requests are optimised side by side in one batch: their losses
are independent, Adam is per element, and a finished request is frozen, so the result equals running
them one by one. The residual stream below the first site is computed once; each step only runs the
layers from the first site on, and unembeds only the positions the loss reads.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError, check_finite
from interp.models.readout import residual_logits

from circuits.editing.context import PromptBatch, build_batch
from circuits.editing.requests import EditRequest

KL_PROMPT = "{} is a"


@dataclasses.dataclass(frozen=True)
class ValueSettings:
    """Hyperparameters of the value optimization (names follow the reference hparams); checked on creation,
    since a NaN or inf here would be written into the model's weights."""

    lr: float = 0.5  # v_lr
    steps: int = 20  # v_num_grad_steps
    kl_factor: float = 0.0625
    weight_decay: float = 0.5  # v_weight_decay
    clamp: float = 4.0  # clamp_norm_factor
    stop_loss: float = 0.05

    def __post_init__(self) -> None:
        for name in ("lr", "clamp"):
            check_finite(f"ValueSettings.{name}", getattr(self, name), above=0)
        for name in ("kl_factor", "weight_decay", "stop_loss"):
            check_finite(f"ValueSettings.{name}", getattr(self, name), at_least=0)
        if self.steps < 1:
            raise InterpError(f"ValueSettings.steps must be at least 1 (got {self.steps})")


@dataclasses.dataclass
class Values:
    """Per request and site: the activation before editing and the optimised one; loss traces."""

    init: torch.Tensor  # [R, S, d_model]
    target: torch.Tensor  # [R, S, d_model]
    losses: list[list[float]]  # per request, total loss at each step taken
    nlls: list[list[float]]  # per request, target NLL at each step taken


def _layer_of(site: str) -> int:
    return int(re.match(r"blocks\.(\d+)\.", site).group(1))


def _batch(model, requests: list[EditRequest], templates: list[str]) -> tuple[PromptBatch, torch.Tensor, torch.Tensor]:
    """Rows per request: one per context template (with target), then the KL prompt.

    Returns the batch, the request of every row, and whether a row is a KL row.
    """
    rows, subjects, targets, owner, is_kl = [], [], [], [], []
    for r, req in enumerate(requests):
        for template in templates:
            rows.append(template.replace("{}", req.prompt))
            subjects.append(req.subject)
            targets.append(req.target_new)
            owner.append(r)
            is_kl.append(False)
        rows.append(KL_PROMPT)
        subjects.append(req.subject)
        targets.append(None)
        owner.append(r)
        is_kl.append(True)
    return build_batch(model, rows, subjects, targets), torch.tensor(owner), torch.tensor(is_kl)


def optimize_values(
    model, requests: list[EditRequest], sites: list[str], templates: list[str], settings: ValueSettings,
    chunk: int = 8, progress: bool = True,
) -> Values:
    """Optimise one delta per (request, site); see the module docstring. `templates` contain "{}"."""
    inits, targets, losses, nlls = [], [], [], []
    bar = tqdm(total=len(requests), desc="optimizing values", unit="req", disable=not progress or len(requests) < 2,
               file=sys.stderr)
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        values = _optimize_chunk(model, part, sites, templates, settings)
        inits.append(values.init)
        targets.append(values.target)
        losses += values.losses
        nlls += values.nlls
        bar.update(len(part))
    bar.close()
    return Values(torch.cat(inits), torch.cat(targets), losses, nlls)


def _readout(batch: PromptBatch, is_kl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, positions, target ids) of the logits the loss reads: every target position of a
    rewriting row (id = its target token) and the subject's last token of a KL row (id = -1)."""
    rows, pos, ids = [], [], []
    for i in range(len(is_kl)):
        if is_kl[i]:
            rows.append(i), pos.append(int(batch.lookup[i])), ids.append(-1)
        else:
            rows += [i] * len(batch.target_pos[i])
            pos += batch.target_pos[i]
            ids += batch.target_ids[i]
    return torch.tensor(rows), torch.tensor(pos), torch.tensor(ids)


def _optimize_chunk(model, requests, sites, templates, settings: ValueSettings) -> Values:
    batch, owner, is_kl = _batch(model, requests, templates)
    n_req, n_sites, d = len(requests), len(sites), model.cfg.d_model
    rows = torch.arange(len(owner))
    start = min(_layer_of(s) for s in sites)
    with torch.no_grad():
        resid = model(batch.tokens, stop_at_layer=start)  # the residual entering block `start`
    read_rows, read_pos, read_ids = _readout(batch, is_kl)
    is_target = read_ids >= 0
    per_row = torch.zeros(len(owner)).index_add(0, read_rows[is_target], torch.ones(int(is_target.sum())))
    delta = torch.zeros(n_req, n_sites, d, device=model.cfg.device, requires_grad=True)
    init = torch.zeros(n_req, n_sites, d, device=model.cfg.device)
    first_row = torch.tensor([int((owner == r).nonzero()[0]) for r in range(n_req)])
    recorded = [False] * n_sites

    def add_delta(index: int):
        def hook(act: torch.Tensor, hook) -> torch.Tensor:
            if not recorded[index]:  # the first pass runs with delta = 0: the clean activation
                init[:, index] = act[first_row, batch.lookup[first_row]].detach()
                recorded[index] = True
            act = act.clone()
            act[rows, batch.lookup] = (act[rows, batch.lookup] + delta[owner, index]).to(act.dtype)  # delta: float32
            return act
        return hook

    hooks = [(site, add_delta(i)) for i, site in enumerate(sites)]
    opt = torch.optim.Adam([delta], lr=settings.lr)
    done = torch.zeros(n_req, dtype=torch.bool)
    kl_init = None
    traces: list[list[float]] = [[] for _ in range(n_req)]
    nll_traces: list[list[float]] = [[] for _ in range(n_req)]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for step in range(settings.steps):
            opt.zero_grad()
            with model.hooks(fwd_hooks=hooks):
                final = model(resid, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
            # unembed only the positions the loss reads
            picked = residual_logits(model, final[read_rows, read_pos][:, None])[:, 0]
            log_probs = picked.float().log_softmax(-1).cpu()  # [N, V], float32 in any dtype
            kl_lp = log_probs[~is_target]  # [R, V]: the token after the subject in "{subject} is a"
            if kl_init is None:
                kl_init = kl_lp.detach()
            kl = (kl_lp.exp() * (kl_lp - kl_init)).sum(-1)  # KL(p || p_init), as the reference computes
            token_nll = -log_probs[is_target].gather(1, read_ids[is_target, None])[:, 0]
            row_nll = torch.zeros(len(owner)).index_add(0, read_rows[is_target], token_nll) / per_row.clamp(min=1)
            nll = torch.zeros(n_req).index_add(0, owner[~is_kl], row_nll[~is_kl]) / len(templates)
            decay = (delta.norm(dim=-1) ** 2 / init.norm(dim=-1) ** 2).sum(-1).cpu()
            loss = nll + settings.kl_factor * kl + settings.weight_decay * decay
            for r in range(n_req):
                if not done[r]:
                    traces[r].append(float(loss[r].detach()))
                    nll_traces[r].append(float(nll[r].detach()))
            done |= loss.detach() < settings.stop_loss
            if bool(done.all()) or step == settings.steps - 1:
                break
            frozen = delta.detach()[done].clone()
            loss[~done].sum().backward()
            opt.step()
            with torch.no_grad():
                delta[done] = frozen
                max_norm = settings.clamp * init.norm(dim=-1, keepdim=True)
                norm = delta.norm(dim=-1, keepdim=True)
                delta.copy_(torch.where(norm > max_norm, delta * max_norm / norm, delta))
    finally:
        for p in params:
            p.requires_grad_(True)
    return Values(init.cpu(), (init + delta.detach()).cpu(), traces, nll_traces)

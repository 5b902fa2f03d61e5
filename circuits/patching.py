"""Activation patching between a clean and a corrupted prompt of equal length, and attribution patching.

Exact patching writes one clean activation into the corrupted run per cell: the residual stream entering
each layer at each position, each attention and MLP output at each position, and each head's output
(`attn.hook_z`) at all positions. Cells run batched through `circuits.restore`. Metrics are normalised
to [0, 1] between the corrupted run (0) and the clean run (1): the logit difference answer - foil and the
answer's probability.

Attribution patching (Nanda 2023) approximates every cell at once from two passes: a clean forward and a
corrupted forward + backward, attribution = (clean - corrupted) . d(logit diff)/d(activation).
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from circuits.restore import BaseRun, Patch, Write, run_patches
from interp.errors import InterpError
from interp.hooks import attn_out, mlp_out, resid_pre
from interp.results import Result, register_result
from interp.tokens import answer_token, encode, str_tokens

SITES = ("resid", "attn", "mlp", "heads")


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


_HOOK = {"resid": resid_pre, "attn": attn_out, "mlp": mlp_out, "heads": _z}


def check_sites(sites) -> tuple[str, ...]:
    """`sites` ('resid,attn' or a sequence) as a checked tuple."""
    sites = tuple(s.strip() for s in sites.split(",")) if isinstance(sites, str) else tuple(sites)
    for site in sites:
        if site not in SITES:
            raise InterpError(f"unknown patching site {site!r}; use a comma list of {', '.join(SITES)}")
    if not sites:
        raise InterpError(f"no patching site given; use a comma list of {', '.join(SITES)}")
    return sites


def _cells(site: str, n_layers: int, n_tokens: int, n_heads: int) -> list[tuple[int, int]]:
    """(layer, position) cells, or (layer, head) for heads."""
    inner = n_heads if site == "heads" else n_tokens
    return [(layer, i) for layer in range(n_layers) for i in range(inner)]


def _write(site: str, layer: int, index: int, clean) -> Write:
    name = _HOOK[site](layer)
    if site == "heads":
        return Write(name, None, clean[name][0, :, index], head=index)
    return Write(name, index, clean[name][0, index])


@dataclasses.dataclass
class Metric:
    """Logit difference and probability of the answer at the last position, and their normalisation."""

    answer_id: int
    foil_id: int
    clean_ld: float
    corrupt_ld: float
    clean_p: float
    corrupt_p: float

    def normalise_ld(self, ld: torch.Tensor) -> torch.Tensor:
        return (ld - self.corrupt_ld) / (self.clean_ld - self.corrupt_ld)

    def normalise_p(self, p: torch.Tensor) -> torch.Tensor:
        return (p - self.corrupt_p) / (self.clean_p - self.corrupt_p)


def _metric(model, clean_logits, corrupt_logits, target: str | None, foil: str | None) -> Metric:
    clean_last, corrupt_last = clean_logits[0, -1], corrupt_logits[0, -1]
    answer_id = int(clean_last.argmax()) if target is None else answer_token(model, target)[0]
    if foil is None:
        ranked = corrupt_last.argsort(descending=True)[:2].tolist()
        foil_id = ranked[1] if ranked[0] == answer_id else ranked[0]
    else:
        foil_id = answer_token(model, foil, "--foil")[0]
    if foil_id == answer_id:
        raise InterpError("the answer and the foil are the same token; pass a different --foil")
    metric = Metric(
        answer_id, foil_id,
        clean_ld=float(clean_last[answer_id] - clean_last[foil_id]),
        corrupt_ld=float(corrupt_last[answer_id] - corrupt_last[foil_id]),
        clean_p=float(clean_last.softmax(-1)[answer_id]),
        corrupt_p=float(corrupt_last.softmax(-1)[answer_id]),
    )
    if abs(metric.clean_ld - metric.corrupt_ld) < 1e-6:
        raise InterpError("the clean and corrupted prompts give the same logit difference, so there is nothing "
                          "to restore; change the corrupted prompt or the --target")
    return metric


def attribution(model, clean, corrupt_tokens, metric: Metric, sites) -> dict[str, torch.Tensor]:
    """Attribution patching: (clean - corrupted) x gradient of the logit difference on the corrupted run,
    per cell, normalised like the exact logit difference (divided by clean - corrupted logit difference).

    `clean` is the clean run's cache of the sites' hooks; this adds the one corrupted forward + backward pass.
    """
    L = model.cfg.n_layers
    names = [_HOOK[site](layer) for site in sites for layer in range(L)]
    acts, grads = {}, {}

    def keep(act, hook):
        acts[hook.name] = act.detach()

    def keep_grad(grad, hook):
        grads[hook.name] = grad.detach()

    def leaf(embed, hook):  # gradients flow even when the weights are frozen
        return embed.detach().requires_grad_(True)

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(n, keep) for n in names],
                                          bwd_hooks=[(n, keep_grad) for n in names]):
        logits = model(corrupt_tokens)
        (logits[0, -1, metric.answer_id] - logits[0, -1, metric.foil_id]).backward()
    scale = metric.clean_ld - metric.corrupt_ld
    out = {}
    for site in sites:
        per_layer = []
        for layer in range(L):
            name = _HOOK[site](layer)
            product = (clean[name] - acts[name]) * grads[name]  # [1, T, d] or [1, T, heads, d_head]
            per_layer.append(product[0].sum((0, -1)) if site == "heads" else product[0].sum(-1))
        out[site] = torch.stack(per_layer) / scale
    return out


@torch.no_grad()
def patch(model, clean: str, corrupt: str, target: str | None = None, foil: str | None = None,
          sites=SITES) -> PatchResult:
    """Patch every clean activation of `sites` into the corrupted run, one cell at a time (batched), and
    approximate the same cells by attribution patching."""
    began = time.perf_counter()
    sites = check_sites(sites)
    clean_tokens, corrupt_tokens = encode(model, clean), encode(model, corrupt)
    if clean_tokens.shape != corrupt_tokens.shape:
        raise InterpError(f"the clean prompt has {clean_tokens.shape[1]} tokens and the corrupted one "
                          f"{corrupt_tokens.shape[1]}; patching needs prompts of equal token length")
    L, T, H = model.cfg.n_layers, clean_tokens.shape[1], model.cfg.n_heads
    names = [_HOOK[site](layer) for site in sites for layer in range(L)]
    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    base = BaseRun.record(model, corrupt_tokens)
    metric = _metric(model, clean_logits, base.logits, target, foil)

    cells = {site: _cells(site, L, T, H) for site in sites}
    patches = [Patch((_write(site, layer, i, clean_cache),)) for site in sites for layer, i in cells[site]]
    read = run_patches(model, base, patches, torch.tensor([metric.answer_id, metric.foil_id]),
                       desc="patching")[:, 0]
    ld = metric.normalise_ld(read[:, 0] - read[:, 1])
    prob = metric.normalise_p((read[:, 0] - read[:, 2]).exp())
    logit_diff, probability, at = {}, {}, 0
    for site in sites:
        n = len(cells[site])
        shape = (L, H if site == "heads" else T)
        logit_diff[site], probability[site] = ld[at:at + n].view(shape), prob[at:at + n].view(shape)
        at += n
    approx = attribution(model, clean_cache, corrupt_tokens, metric, sites)
    return PatchResult(
        model=str(getattr(model.cfg, "spec", model.cfg.model_name)), clean=clean, corrupt=corrupt,
        clean_tokens=str_tokens(model, clean_tokens), corrupt_tokens=str_tokens(model, corrupt_tokens),
        answer=model.tokenizer.decode([metric.answer_id]), foil=model.tokenizer.decode([metric.foil_id]),
        clean_logit_diff=metric.clean_ld, corrupt_logit_diff=metric.corrupt_ld,
        clean_prob=metric.clean_p, corrupt_prob=metric.corrupt_p,
        logit_diff=logit_diff, probability=probability, attribution=approx,
        seconds=time.perf_counter() - began,
    )


@register_result
@dataclasses.dataclass
class PatchResult(Result):
    kind = "patch"
    model: str
    clean: str
    corrupt: str
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    answer: str
    foil: str
    clean_logit_diff: float
    corrupt_logit_diff: float
    clean_prob: float
    corrupt_prob: float
    logit_diff: dict[str, torch.Tensor]  # site -> [L, T] (heads: [L, H]), 0 = corrupted, 1 = clean
    probability: dict[str, torch.Tensor]
    attribution: dict[str, torch.Tensor]  # the gradient approximation of logit_diff
    seconds: float

    def _columns(self, site: str) -> list[str]:
        if site == "heads":
            return [f"H{h}" for h in range(self.logit_diff[site].shape[1])]
        return [f"{i} {a!r}" + ("" if a == b else f"/{b!r}")
                for i, (a, b) in enumerate(zip(self.clean_tokens, self.corrupt_tokens))]

    def agreement(self, site: str) -> float:
        """Pearson correlation between attribution patching and exact patching (logit difference)."""
        pair = torch.stack([self.logit_diff[site].flatten(), self.attribution[site].flatten()])
        return float(torch.corrcoef(pair)[0, 1])

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for site, grid in self.logit_diff.items():
            labels = self._columns(site)
            for layer in range(grid.shape[0]):
                for i, label in enumerate(labels):
                    rows.append({"site": site, "layer": layer, "index": i, "label": label,
                                 "logit_diff": float(grid[layer, i]),
                                 "probability": float(self.probability[site][layer, i]),
                                 "attribution": float(self.attribution[site][layer, i])})
        return pd.DataFrame(rows)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        sites = list(self.logit_diff)
        names = [escape_label(s) for s in sites]
        fig = make_subplots(rows=2, cols=len(sites), vertical_spacing=0.12,
                            subplot_titles=[f"{s}: exact" for s in names] + [f"{s}: attribution" for s in names])
        for col, (site, name) in enumerate(zip(sites, names), start=1):
            for row, grid in ((1, self.logit_diff[site]), (2, self.attribution[site])):
                fig.add_trace(go.Heatmap(
                    z=grid.T.tolist(), x=list(range(grid.shape[0])),
                    y=[escape_label(c) for c in self._columns(site)], colorscale="RdBu",
                    zmid=0, zmin=-1, zmax=1, showscale=(row, col) == (1, 1),
                    hovertemplate=f"{name}<br>layer %{{x}}<br>%{{y}}<br>%{{z:.3f}}<extra></extra>"), row, col)
                fig.update_yaxes(autorange="reversed", row=row, col=col)
                fig.update_xaxes(title_text="layer", row=row, col=col)
        fig.update_layout(height=900, width=380 * len(sites),
                          title=escape_label(f"Activation patching, clean -> corrupted: normalised logit diff "
                                             f"{self.answer!r} - {self.foil!r} (1 = clean)"))
        return fig

    def summary(self) -> str:
        lines = [f"activation patching {self.clean!r} -> {self.corrupt!r} ({self.model})",
                 f"metric: logit({self.answer!r}) - logit({self.foil!r}) clean {self.clean_logit_diff:.3f}, "
                 f"corrupted {self.corrupt_logit_diff:.3f}; p({self.answer!r}) clean {self.clean_prob:.3f}, "
                 f"corrupted {self.corrupt_prob:.3f}; scores normalised, 0 = corrupted, 1 = clean"]
        for site, grid in self.logit_diff.items():
            layer, i = divmod(int(grid.argmax()), grid.shape[1])
            lines.append(f"{site:>6}: strongest cell layer {layer} {self._columns(site)[i]}: logit diff "
                         f"{float(grid[layer, i]):.3f}, probability {float(self.probability[site][layer, i]):.3f}, "
                         f"attribution {float(self.attribution[site][layer, i]):.3f}; "
                         f"attribution vs exact r={self.agreement(site):.2f}")
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)

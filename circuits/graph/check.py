"""Interventions that check a graph (Ameisen et al. 2025, "Circuit tracing", validation by perturbation).

The graph is a linear model of the prompt: a feature's total effect on the target logit is the sum over
every path of it through the graph (through other features too), per unit of its activation. So changing
its activation by delta should move the target logit (minus the mean logit) by effect x delta. We test
that in the real model with the transcoders spliced in: every transcoder layer's MLP output is replaced by
its transcoder's output plus the error frozen at its clean value (position 0 and layers without a
transcoder keep their clean MLP output), attention and norms run live, later features are recomputed.
Each intervention (ablate: activation 0; x2; x-1) at the feature's position is one row of one batch.
With `frozen=True` attention patterns and norm scales are fixed at their clean values too; then the only
non-linearity left is later features' activation functions, and a feature with no later features must
move the logit exactly as the graph predicts.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuits.graph.attribute import Attribution
from circuits.graph.frozen import freeze_hooks
from circuits.graph.prune import influence, normalize
from circuits.graph.result import feature_id
from interp.hooks import mlp_out

INTERVENTIONS = (("ablate", 0.0), ("x2", 2.0), ("x-1", -1.0))


@torch.no_grad()
def total_effects(att: Attribution, row: int | None = None) -> torch.Tensor:
    """[S]: each graph feature's total effect on target row `row` (default: the target logit) per unit of
    its activation, summed over all paths in the (unpruned, signed) graph."""
    S = att.n_selected
    row = att.n_nodes - att.nodes.n_logits if row is None else row
    unit = att.adjacency[:, :S] / att.nodes.activation[att.selected]  # per unit of each source's activation
    current = unit[row].clone()
    total = current.clone()
    for _ in range(att.nodes.n_layers + 1):
        current = current @ unit[:S]
        if not current.any():
            break
        total += current
    return total


def most_influential(att: Attribution, n: int, node_influence: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (among the graph's features) of the `n` features with the most influence on the logits."""
    if node_influence is None:
        node_influence = influence(normalize(att.adjacency), att.logit_weights())
    return torch.argsort(node_influence[:att.n_selected], descending=True, stable=True)[:n]


@torch.no_grad()
def spliced_logit(model, att: Attribution, transcoders: dict[int, object], changes: list[tuple[int, float]],
                  frozen: bool = False) -> torch.Tensor:
    """[1 + len(changes)]: the target logit minus the mean logit in the spliced model, first unchanged, then
    with each change (graph feature index, new activation) applied alone."""
    fr, nd = att.frozen, att.nodes
    B, T = 1 + len(changes), fr.n_pos
    rows = {}
    for b, (j, value) in enumerate(changes, start=1):
        f = int(att.selected[j])
        rows.setdefault(int(nd.feat_layer[f]), []).append((b, int(nd.feat_pos[f]) - 1, int(nd.feat_index[f]), value))
    inputs: dict[int, torch.Tensor] = {}

    def keep_input(layer: int):
        def hook(x, hook):
            inputs[layer] = x
        return hook

    def replace_output(layer: int):
        def hook(x, hook):
            out = nd.error_write[layer].to(x.dtype).expand(B, -1, -1).clone()
            tc = transcoders.get(layer)
            if tc is not None and T > 1:
                acts = tc.encode(inputs[layer][:, 1:].to(tc.W_enc.dtype))
                for b, p, i, value in rows.get(layer, []):
                    acts[b, p, i] = value
                out[:, 1:] += tc.decode(acts).to(x.dtype)
            return out
        return hook

    hooks = [(f"blocks.{l}.ln2.hook_normalized", keep_input(l)) for l in transcoders]
    hooks += [(mlp_out(l), replace_output(l)) for l in range(fr.n_layers)]
    if frozen:
        hooks += freeze_hooks(fr)
    logits = model.run_with_hooks(fr.tokens[None].expand(B, -1), fwd_hooks=hooks)[:, -1].float()
    target = int(nd.logit_ids[0])
    return logits[:, target] - logits.mean(-1)


def run_checks(model, att: Attribution, transcoders: dict[int, object], n: int, frozen: bool = False,
               node_influence: torch.Tensor | None = None) -> tuple[list[dict], float | None]:
    """(checks, Spearman correlation of predicted vs observed) for the `n` most influential features."""
    if n <= 0 or att.n_selected == 0:
        return [], None
    effects = total_effects(att)
    picked = most_influential(att, n, node_influence).tolist()
    changes, meta = [], []
    for j in picked:
        a = float(att.nodes.activation[att.selected[j]])
        for name, factor in INTERVENTIONS:
            changes.append((j, factor * a))
            meta.append((j, name, float(effects[j]) * (factor - 1) * a))
    values = spliced_logit(model, att, transcoders, changes, frozen=frozen)
    observed = (values[1:] - values[0]).tolist()
    checks = [{"node_id": node_id(att, j), "intervention": name, "predicted": predicted, "observed": obs}
              for (j, name, predicted), obs in zip(meta, observed)]
    frame = pd.DataFrame(checks)
    rho = frame["predicted"].corr(frame["observed"], method="spearman") if len(frame) > 2 else None
    return checks, (None if rho is None or pd.isna(rho) else float(rho))


def node_id(att: Attribution, j: int) -> str:
    """circuit-tracer id of graph feature j."""
    f = int(att.selected[j])
    nd = att.nodes
    return feature_id(int(nd.feat_layer[f]), int(nd.feat_index[f]), int(nd.feat_pos[f]))

"""The plain way to get the same edges: one autograd backward per target through the frozen TransformerLens
model. The reference that tests and the benchmark hold `attribute` against.

The hooked model is frozen with `freeze_hooks` (patterns and norm scales fixed); every MLP output is
replaced by a leaf tensor holding its clean value, and so is the token embedding, so the gradient of a
target on a leaf, dotted with a source's write vector, is the source's direct effect on the target.
"""

from __future__ import annotations

import torch

from circuits.graph.frozen import Frozen, freeze_hooks
from circuits.graph.nodes import Nodes


class NaiveAttribution:
    """One frozen forward pass with leaves at every source; `row(target)` runs one backward."""

    def __init__(self, model, frozen: Frozen, nodes: Nodes):
        self.frozen, self.nodes = frozen, nodes
        L = frozen.n_layers
        store: dict[str, torch.Tensor] = {}

        def leaf(name: str):
            def hook(x, hook):
                store[name] = x.detach().clone().requires_grad_(True)
                return store[name]
            return hook

        def keep(name: str):
            def hook(x, hook):
                store[name] = x
                return x
            return hook

        hooks = freeze_hooks(frozen) + [("hook_embed", leaf("embed"))]
        hooks += [(f"blocks.{l}.hook_mlp_out", leaf(f"mlp{l}")) for l in range(L)]
        hooks += [(f"blocks.{l}.ln2.hook_normalized", keep(f"norm{l}")) for l in range(L)]
        with torch.enable_grad():
            logits = model.run_with_hooks(frozen.tokens[None], fwd_hooks=hooks)
        self.logits = logits[0, -1]
        self.leaves = [store["embed"]] + [store[f"mlp{l}"] for l in range(L)]
        self.normalized = [store[f"norm{l}"][0] for l in range(L)]

    def feature_value(self, transcoders: dict[int, object], feature: int) -> torch.Tensor:
        """The pre-activation of candidate feature `feature` in the frozen forward pass (a graph scalar)."""
        nd = self.nodes
        layer, pos, index = (int(nd.feat_layer[feature]), int(nd.feat_pos[feature]), int(nd.feat_index[feature]))
        tc = transcoders[layer]
        return self.normalized[layer][pos] @ tc.W_enc[:, index].float() + tc.b_enc[index].float()

    def logit_value(self, k: int) -> torch.Tensor:
        """Logit k (of the graph's logits) minus the mean logit."""
        return self.logits[self.nodes.logit_ids[k]] - self.logits.mean()

    def row(self, value: torch.Tensor) -> torch.Tensor:
        """[n_all]: every candidate source's direct effect on the scalar `value`, from one backward."""
        nd, fr = self.nodes, self.frozen
        grads = torch.autograd.grad(value, self.leaves, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, self.leaves)]
        out = value.new_zeros(nd.n_all)
        embed_grad, mlp_grads = grads[0][0], [g[0] for g in grads[1:]]
        out[nd.embed_col():nd.embed_col() + nd.n_pos] = (embed_grad * fr.embed).sum(-1)
        for l, g in enumerate(mlp_grads):
            out[nd.error_col(l):nd.error_col(l) + nd.n_pos] = (g * nd.error_write[l]).sum(-1)
        g_at = torch.stack(mlp_grads)[nd.feat_layer, nd.feat_pos]  # [F, d]
        out[:nd.n_features] = (g_at * nd.feat_write).sum(-1)
        return out.detach()

"""Attention inside the graph: how each link splits over heads (OV), and which heads' patterns (QK) the
target logit depends on.

OV split of a link s -> t (source written at position k after layer ls, target read at position p at
layer L, frozen model): the residual path (only when k == p) is write . read; the single-hop path through
head h of layer l (ls < l <= L) moves the write from k to p:
    A_l[h, p, k] * (P(write) * w1_l / s1_l[k]) W_V^h  .  W_O^h read.
Everything else (paths through two or more heads) is `multi_hop` = weight - residual - sum of single hops,
so residual + heads + multi_hop = weight exactly, and a link that crosses one attention layer has no
multi-hop part at all.

QK: with the patterns as leaves of a real forward pass, sum_{q,k} A[h, q, k] d(target)/dA[h, q, k] is the
first-order share of the target logit (minus the mean logit) that rests on head h's attention pattern.
"""

from __future__ import annotations

import torch

from circuits.graph.attribute import Attribution
from interp.hooks import pattern

TOP_HEADS = 4  # heads listed per link; the rest are summed into other_heads
TOP_QK = 5  # (query, key) entries listed per head


def endpoints(att: Attribution, nodes: torch.Tensor, as_target: bool):
    """(vectors [n, d], layer [n], position [n]) of graph nodes: read vectors of targets, write vectors of sources.

    Source layers: embeddings -1, an MLP node its layer; target layers: a feature its layer (it reads after
    that layer's attention), a logit n_layers."""
    nd, fr = att.nodes, att.frozen
    S, L, T = att.n_selected, nd.n_layers, nd.n_pos
    d = fr.embed.shape[1]
    vec = fr.embed.new_zeros(len(nodes), d)
    layer = torch.zeros(len(nodes), dtype=torch.long, device=vec.device)
    pos = torch.zeros_like(layer)
    is_feat = nodes < S
    feat = att.selected[nodes[is_feat]]
    vec[is_feat] = (nd.feat_read if as_target else nd.feat_write)[feat]
    layer[is_feat], pos[is_feat] = nd.feat_layer[feat], nd.feat_pos[feat]
    rest = nodes - S
    is_err = (rest >= 0) & (rest < L * T)
    el, ep = rest[is_err] // T, rest[is_err] % T
    vec[is_err] = nd.error_write[el, ep]
    layer[is_err], pos[is_err] = el, ep
    is_emb = (rest >= L * T) & (rest < (L + 1) * T)
    vec[is_emb] = fr.embed[rest[is_emb] - L * T]
    layer[is_emb], pos[is_emb] = -1, rest[is_emb] - L * T
    is_logit = rest >= (L + 1) * T
    vec[is_logit] = nd.logit_read[rest[is_logit] - (L + 1) * T]
    layer[is_logit], pos[is_logit] = L, T - 1
    return vec, layer, pos


@torch.no_grad()
def split_links(att: Attribution, edges: torch.Tensor, block: int = 2 ** 24) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual [E], single-hop head paths [E, n_layers, n_heads]) of links `edges` [E, 2] (target, source).

    Per layer, every (target, source) pair's head terms come from one product of the targets' W_O-read
    vectors with the sources' values ([H, targets, sources], in blocks of about `block` numbers), so the
    cost grows with the nodes of the pruned graph rather than its links."""
    fr = att.frozen
    L, H = fr.n_layers, fr.layers[0].n_heads
    targets, t_of = edges[:, 0].unique(return_inverse=True)
    sources, s_of = edges[:, 1].unique(return_inverse=True)
    read, t_layer, t_pos = endpoints(att, targets, as_target=True)
    write, s_layer, s_pos = endpoints(att, sources, as_target=False)
    same = (s_pos[s_of] == t_pos[t_of]).nonzero()[:, 0]
    residual = read.new_zeros(len(edges))
    for part in same.split(block // max(1, read.shape[1])):
        residual[part] = (read[t_of[part]] * write[s_of[part]]).sum(-1)
    heads = read.new_zeros(len(edges), L, H)
    rows = max(1, block // max(1, H * len(sources)))
    for l, f in enumerate(fr.layers):
        crossing = ((s_layer[s_of] < l) & (t_layer[t_of] >= l)).nonzero()[:, 0]
        if not len(crossing):
            continue
        values = f.head_values(write, s_pos, fr.centered).transpose(0, 1)  # [H, sources, dh]
        outputs = f.head_outputs(read).transpose(0, 1)  # [H, targets, dh]
        for start in range(0, len(targets), rows):
            mine = crossing[(t_of[crossing] >= start) & (t_of[crossing] < start + rows)]
            if not len(mine):
                continue
            paths = outputs[:, start:start + rows] @ values.transpose(1, 2)  # [H, rows, sources]
            t, s = t_of[mine], s_of[mine]
            heads[mine, l] = (f.pattern[:, t_pos[t], s_pos[s]] * paths[:, t - start, s]).T
    return residual, heads


def link_attention(weights: torch.Tensor, residual: torch.Tensor, heads: torch.Tensor) -> list[dict]:
    """The attention fields of each link (weights [E], residual [E], heads [E, n_layers, n_heads]):
    residual, the TOP_HEADS largest single-head paths as [layer, head, weight], other_heads (the rest of
    the single-head paths) and multi_hop, which add up to the weight."""
    E, L, H = heads.shape
    flat = heads.reshape(E, L * H)
    total = flat.sum(1)
    top = flat.abs().topk(min(TOP_HEADS, L * H), dim=1).indices
    top_values = flat.gather(1, top)
    shown = top_values.sum(1)
    out = []
    for w, r, t, idx, vals, sh in zip(weights.tolist(), residual.tolist(), total.tolist(), top.tolist(),
                                      top_values.tolist(), shown.tolist()):
        listed = [[i // H, i % H, v] for i, v in zip(idx, vals) if v != 0]
        out.append({"residual": r, "heads": listed, "other_heads": t - sh, "multi_hop": w - r - t})
    return out


def qk_importance(model, tokens: torch.Tensor, logit_id: int) -> list[dict]:
    """Per head: how much logit `logit_id` minus the mean logit rests on its attention pattern (first order,
    real forward pass), with the (query, key) entries that matter most. Most important first."""
    patterns: dict[int, torch.Tensor] = {}

    def leaf(layer: int):
        def hook(x, hook):
            patterns[layer] = x.detach().requires_grad_(True)
            return patterns[layer]
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(pattern(l), leaf(l)) for l in range(model.cfg.n_layers)])
        value = logits[0, -1, logit_id] - logits[0, -1].mean()
        grads = torch.autograd.grad(value, [patterns[l] for l in range(model.cfg.n_layers)])
    out = []
    for l, grad in enumerate(grads):
        contrib = (patterns[l] * grad)[0].detach()  # [H, q, k]
        for h, c in enumerate(contrib):
            flat = c.flatten()
            top = flat.abs().topk(min(TOP_QK, len(flat))).indices
            T = c.shape[1]
            out.append({"layer": l, "head": h, "importance": float(c.sum()),
                        "top": [[int(i) // T, int(i) % T, float(flat[i])] for i in top if flat[i] != 0]})
    return sorted(out, key=lambda r: -abs(r["importance"]))

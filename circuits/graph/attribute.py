"""Edges of the attribution graph: one transposed pass of the frozen model per batch of targets.

A target's edge from a source is the source's write vector dotted with the gradient of the target's
value on the residual stream where the source writes, in the frozen model where the MLPs are sources
(features + error + output bias) and only attention and the residual connect positions and layers. So one
walk down the layers carries a batch of targets' gradients [B, T, d]: at each layer the MLP's sources are
read off (dot products at resid_post), layer-l targets are seeded at resid_mid (their read vectors), the
attention biases are collected as constants, and the gradient goes back through attention's transpose.
Embeddings are read off at the bottom. Targets are sorted by layer inside a batch, so a target costs only
the layers below it and the positions up to its own (causality), which is what makes this fast.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import torch

from circuits.graph.frozen import Frozen
from circuits.graph.nodes import Nodes

UPDATE_INTERVAL = 4  # batches of features attributed between re-rankings (with --max-feature-nodes)


def target_rows(frozen: Frozen, nodes: Nodes, layer: torch.Tensor, pos: torch.Tensor, seeds: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(edges [B, n_all], constants [B]) of B targets reading `seeds` [B, d] at resid_mid of `layer` [B]
    (n_layers: the final residual, for logits) and position `pos` [B].

    constants: what the biases upstream (attention biases and norm biases through attention, transcoder
    output biases) add to each target's value; not the target's own bias.
    """
    L, n_pos = frozen.n_layers, nodes.n_pos
    order = torch.argsort(layer, descending=True, stable=True)
    layer, pos, seeds = layer[order], pos[order], seeds[order]
    B, d = seeds.shape
    t = int(pos.max()) + 1
    g = seeds.new_zeros(B, t, d)
    edges = seeds.new_zeros(B, nodes.n_all)
    const = seeds.new_zeros(B)
    # rows are sorted by layer, descending: those above layer l are a prefix
    above = [int((layer > l).sum()) for l in range(L + 1)]
    at_or_above = [int((layer >= l).sum()) for l in range(L + 1)]
    top = slice(0, at_or_above[L])
    g[torch.arange(top.stop), pos[top]] = seeds[top]
    for l in reversed(range(L)):
        n = above[l]
        if n:
            grad = g[:n]
            col = nodes.error_col(l)
            edges[:n, col:col + t] = (grad * nodes.error_write[l, :t]).sum(-1)
            for k in range(1, t):
                start, end = nodes.feature_span(l, k)
                if end > start:
                    edges[:n, start:end] = grad[:, k] @ nodes.feat_write[start:end].T
            if nodes.b_dec[l] is not None and t > 1:
                const[:n] += grad[:, 1:].sum(1) @ nodes.b_dec[l]
        a, b = above[l], at_or_above[l]
        g[torch.arange(a, b), pos[a:b]] = seeds[a:b]
        if b:
            const[:b] += g[:b].sum(1) @ frozen.layers[l].attn_const
            g[:b] = frozen.transpose_attention(l, g[:b])
    col = nodes.embed_col()
    edges[:, col:col + t] = (g * frozen.embed[:t]).sum(-1)
    inverse = torch.argsort(order)
    return edges[inverse], const[inverse]


@dataclasses.dataclass
class Attribution:
    """The unpruned graph of a prompt: adjacency[target, source] over the graph's nodes.

    Node order: selected features, errors (L x T), embeddings (T), logits (K). Rows of errors and embeddings
    are zero (they have no inputs). For every target row: adjacency.sum() + constants + dropped = values,
    where dropped is what active features left out of the graph (`max_feature_nodes`) contributed.
    """

    frozen: Frozen
    nodes: Nodes
    selected: torch.Tensor  # [F'] indices into nodes' features, ascending
    adjacency: torch.Tensor  # [N, N]
    constants: torch.Tensor  # [N] upstream biases + the target's own bias
    dropped: torch.Tensor  # [N]
    values: torch.Tensor  # [N] the targets' actual values (NaN for sources only)
    seconds: float

    @property
    def n_selected(self) -> int:
        return len(self.selected)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    def logit_weights(self) -> torch.Tensor:
        """[N]: each logit node's probability, 0 elsewhere (what influence is measured against)."""
        w = self.adjacency.new_zeros(self.n_nodes)
        w[-self.nodes.n_logits:] = self.nodes.logit_probs
        return w

    def column_of(self, all_col: int) -> int:
        """This graph's index of a node given by its column among all candidate nodes (-1 if dropped)."""
        F = self.nodes.n_features
        if all_col >= F:
            return all_col - F + self.n_selected
        hit = (self.selected == all_col).nonzero()
        return int(hit[0]) if len(hit) else -1


def _partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, logit_probs: torch.Tensor) -> torch.Tensor:
    """Influence on the logits of every candidate node, from the rows attributed so far (circuit-tracer's
    ranking for --max-feature-nodes): normalised |rows| propagated from the logits' probabilities."""
    norm = rows.abs()
    norm /= norm.sum(1, keepdim=True).clamp(min=1e-8)
    influence = rows.new_zeros(rows.shape[1])
    prod = rows.new_zeros(rows.shape[1])
    prod[-len(logit_probs):] = logit_probs
    for _ in range(10_000):
        prod = prod[row_nodes] @ norm
        if not prod.any():
            break
        influence += prod
    return influence


class _Progress:
    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.done, self.report = total, 0, report
        self.began = self.last = time.perf_counter()

    def step(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.report and (now - self.last > 5 or self.done == self.total):
            self.report(f"graph: {self.done}/{self.total} feature rows ({now - self.began:.0f} s)")
            self.last = now


def stderr_progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@torch.no_grad()
def attribute(frozen: Frozen, nodes: Nodes, max_feature_nodes: int | None = None, batch_size: int = 512,
              progress: Callable[[str], None] | None = None) -> Attribution:
    """All edges into the logits and into the graph's features (all active ones, or the `max_feature_nodes`
    most influential found the way circuit-tracer finds them: re-ranked by partial influence as rows arrive)."""
    began = time.perf_counter()
    F, K, n_all = nodes.n_features, nodes.n_logits, nodes.n_all
    L = frozen.n_layers
    logit_rows, logit_const = target_rows(frozen, nodes, torch.full((K,), L, device=nodes.logit_ids.device),
                                          torch.full((K,), frozen.n_pos - 1, device=nodes.logit_ids.device),
                                          nodes.logit_read)
    limit = F if max_feature_nodes is None else min(max_feature_nodes, F)
    feat_rows = logit_rows.new_zeros(limit, n_all)
    feat_const = logit_rows.new_zeros(limit)
    order = torch.empty(limit, dtype=torch.long)
    done = 0
    bar = _Progress(limit, progress)

    def run(batch: torch.Tensor) -> None:
        nonlocal done
        for chunk in batch.split(batch_size):
            rows, const = target_rows(frozen, nodes, nodes.feat_layer[chunk], nodes.feat_pos[chunk],
                                      nodes.feat_read[chunk])
            feat_rows[done:done + len(chunk)] = rows
            feat_const[done:done + len(chunk)] = const
            order[done:done + len(chunk)] = chunk.cpu()
            done += len(chunk)
            bar.step(len(chunk))

    if limit == F:  # everything: batches of one position each (the cheapest grouping), last position first
        run(torch.argsort(nodes.feat_pos * (L + 1) - nodes.feat_layer, descending=True, stable=True))
    else:
        visited = torch.zeros(F, dtype=torch.bool)
        while done < limit:
            row_nodes = torch.cat([torch.arange(n_all - K, n_all), order[:done]])
            influence = _partial_influence(torch.cat([logit_rows, feat_rows[:done]]), row_nodes.to(logit_rows.device),
                                           nodes.logit_probs)[:F].cpu()
            rank = torch.argsort(influence, descending=True, stable=True)
            pending = rank[~visited[rank]][:min(UPDATE_INTERVAL * batch_size, limit - done)]
            visited[pending] = True
            run(pending.to(nodes.feat_layer.device))

    selected, by_feature = order.sort()
    feat_rows, feat_const = feat_rows[by_feature.to(feat_rows.device)], feat_const[by_feature.to(feat_rows.device)]
    selected = selected.to(feat_rows.device)
    keep = torch.cat([selected, torch.arange(F, n_all, device=selected.device)])
    N = len(keep)
    adjacency = feat_rows.new_zeros(N, N)
    constants = feat_rows.new_zeros(N)
    dropped = feat_rows.new_zeros(N)
    values = torch.full((N,), float("nan"), device=feat_rows.device)
    S = len(selected)
    left_out = torch.ones(n_all, dtype=torch.bool, device=keep.device)
    left_out[keep] = False
    for rows_, const, target_slice, own_bias, value in (
            (feat_rows, feat_const, slice(0, S), nodes.feat_bias[selected], nodes.pre_activation[selected]),
            (logit_rows, logit_const, slice(N - K, N), nodes.logit_bias, nodes.logit_value)):
        adjacency[target_slice] = rows_[:, keep]
        constants[target_slice] = const + own_bias
        dropped[target_slice] = rows_[:, left_out].sum(1)
        values[target_slice] = value
    return Attribution(frozen=frozen, nodes=nodes, selected=selected, adjacency=adjacency, constants=constants,
                       dropped=dropped, values=values, seconds=time.perf_counter() - began)

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
    g[torch.arange(top.stop, device=g.device), pos[top]] = seeds[top]
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
        g[torch.arange(a, b, device=g.device), pos[a:b]] = seeds[a:b]
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


def _most_influential(frozen: Frozen, nodes: Nodes, limit: int, batch_size: int, logit_rows: torch.Tensor,
                      run: Callable) -> tuple[torch.Tensor, ...]:
    """(selected, adjacency, constants, dropped, kept candidate columns) of the `limit` features circuit-tracer
    would pick: rows are attributed in batches, most influential on the logits first, re-ranked by the
    partial influence of the rows so far every UPDATE_INTERVAL batches. Logit rows are left to the caller."""
    F, n_all = nodes.n_features, nodes.n_all
    rows = logit_rows.new_zeros(limit, n_all)
    const = logit_rows.new_zeros(limit)
    order = torch.empty(limit, dtype=torch.long)
    done = 0

    def into_buffer(chunk, chunk_rows, chunk_const):
        nonlocal done
        rows[done:done + len(chunk)] = chunk_rows
        const[done:done + len(chunk)] = chunk_const
        order[done:done + len(chunk)] = chunk.cpu()
        done += len(chunk)

    visited = torch.zeros(F, dtype=torch.bool)
    while done < limit:
        influence = _partial_influence(nodes, logit_rows, rows[:done], order[:done].to(rows.device))[:F].cpu()
        rank = torch.argsort(influence, descending=True, stable=True)
        pending = rank[~visited[rank]][:min(UPDATE_INTERVAL * batch_size, limit - done)]
        visited[pending] = True
        run(pending.to(nodes.feat_layer.device), into_buffer)
    selected, by_feature = order.sort()
    by_feature, selected = by_feature.to(rows.device), selected.to(rows.device)
    keep = torch.cat([selected, torch.arange(F, n_all, device=selected.device)])
    N, S = len(keep), limit
    adjacency = rows.new_zeros(N, N)
    constants = rows.new_zeros(N)
    dropped = rows.new_zeros(N)
    constants[:S] = const[by_feature]
    for part in torch.arange(S, device=rows.device).split(1024):  # row blocks: no second copy of the buffer
        block = rows[by_feature[part]]
        adjacency[part] = block[:, keep]
        dropped[part] = block.sum(1) - adjacency[part].sum(1)
    return selected, adjacency, constants, dropped, keep


def _partial_influence(nodes: Nodes, logit_rows: torch.Tensor, rows: torch.Tensor, row_features: torch.Tensor,
                       block: int = 1024) -> torch.Tensor:
    """Influence on the logits of every candidate node through the rows attributed so far (circuit-tracer's
    ranking for --max-feature-nodes): normalised |rows| propagated from the logits' probabilities.

    A feature only feeds later layers, so one pass over the rows, highest layer first, gives the total over
    all paths (each row's own influence is complete before it is spread), |row| normalised block by block."""
    influence = rows.new_zeros(nodes.n_all)

    def spread(weights: torch.Tensor, block_rows: torch.Tensor) -> None:
        norm = block_rows.abs()
        norm /= norm.sum(1, keepdim=True).clamp(min=1e-8)
        influence.add_(weights @ norm)

    spread(nodes.logit_probs, logit_rows)
    layers = nodes.feat_layer[row_features]
    for layer in reversed(range(nodes.n_layers)):
        for part in (layers == layer).nonzero()[:, 0].split(block):
            spread(influence[row_features[part]], rows[part])
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
    bar = _Progress(limit, progress)
    device = logit_rows.device

    def run(batch: torch.Tensor, store: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]) -> None:
        # chunks of one position each where possible (a chunk costs its longest prefix), last position first
        key = nodes.feat_pos[batch] * (L + 1) - nodes.feat_layer[batch]
        batch = batch[torch.argsort(key, descending=True, stable=True)]
        for chunk in batch.split(batch_size) if len(batch) else ():
            rows, const = target_rows(frozen, nodes, nodes.feat_layer[chunk], nodes.feat_pos[chunk],
                                      nodes.feat_read[chunk])
            store(chunk, rows, const)
            bar.step(len(chunk))

    if limit == F:  # every feature: rows go straight into the adjacency (graph order = candidate order)
        selected = torch.arange(F, device=device)
        adjacency = logit_rows.new_zeros(n_all, n_all)
        constants = logit_rows.new_zeros(n_all)
        dropped = logit_rows.new_zeros(n_all)

        def into_graph(chunk, rows, const):
            adjacency[chunk] = rows
            constants[chunk] = const

        run(torch.arange(F, device=device), into_graph)
        keep = torch.arange(n_all, device=device)
    else:
        selected, adjacency, constants, dropped, keep = _most_influential(frozen, nodes, limit, batch_size,
                                                                          logit_rows, run)
    N, S = len(keep), len(selected)
    adjacency[N - K:] = logit_rows[:, keep]
    constants[N - K:] = logit_const
    constants[:S] += nodes.feat_bias[selected]
    constants[N - K:] += nodes.logit_bias
    dropped[N - K:] = logit_rows.sum(1) - adjacency[N - K:].sum(1)
    values = torch.full((N,), float("nan"), device=device)
    values[:S] = nodes.pre_activation[selected]
    values[N - K:] = nodes.logit_value
    return Attribution(frozen=frozen, nodes=nodes, selected=selected, adjacency=adjacency, constants=constants,
                       dropped=dropped, values=values, seconds=time.perf_counter() - began)

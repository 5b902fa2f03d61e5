"""Pruning and scoring as circuit-tracer does it (Ameisen et al. 2025, "Circuit tracing", appendix on pruning).

Influence: normalise |adjacency| so each target's incoming weights sum to 1, then propagate the logits'
probabilities backwards through every path (A + A^2 + ...). Nodes are kept, most influential first, until
they hold `node_threshold` of the total (embeddings and logits always stay); edges of the kept nodes are
scored by normalised weight x (influence of their target + its logit weight) and kept to `edge_threshold`;
then features and errors left without an outgoing edge, and features without an incoming one, are dropped
until nothing changes. Node order is circuit-tracer's: features, errors, embeddings, logits (rows = targets).
"""

from __future__ import annotations

import dataclasses

import torch


def normalize(matrix: torch.Tensor) -> torch.Tensor:
    """|matrix| with each row scaled to sum to 1 (rows of zeros stay zero)."""
    normalized = matrix.abs()
    return normalized.div_(normalized.sum(dim=1, keepdim=True).clamp(min=1e-10))


def influence(normalized: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """logit_weights @ (A + A^2 + ...): every node's total influence on the weighted logits (A a DAG)."""
    current = logit_weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise RuntimeError(f"influence did not converge in {max_iter} steps (is the graph acyclic?)")


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score at which the largest scores first hold `threshold` of their total."""
    ranked = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ranked, 0) / ranked.sum()
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))),
                len(ranked) - 1)
    return ranked[index]


def cumulative_influence(node_influence: torch.Tensor) -> torch.Tensor:
    """Each node's cumulative share of total influence with nodes ranked most influential first."""
    ranked, order = torch.sort(node_influence, descending=True)
    out = torch.zeros_like(node_influence)
    out[order] = torch.cumsum(ranked, 0) / ranked.sum().clamp(min=1e-30)
    return out


@dataclasses.dataclass
class Layout:
    """Where each kind of node sits in the node order."""

    n_features: int
    n_errors: int
    n_tokens: int
    n_logits: int

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens + self.n_logits

    @property
    def errors(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_errors)

    @property
    def tokens(self) -> slice:
        return slice(self.n_features + self.n_errors, self.n_nodes - self.n_logits)

    @property
    def sources_with_inputs(self) -> slice:
        """Features and errors: the nodes that must keep an outgoing edge."""
        return slice(0, self.n_features + self.n_errors)


@dataclasses.dataclass
class Pruned:
    node_mask: torch.Tensor  # [N] bool
    edges: torch.Tensor  # [E, 2] (target, source) node indices of the kept links (non-zero weights)
    node_influence: torch.Tensor  # [N]
    cumulative: torch.Tensor  # [N] circuit-tracer's `influence` field


def prune(adjacency: torch.Tensor, logit_weights: torch.Tensor, layout: Layout, node_threshold: float = 0.8,
          edge_threshold: float = 0.98, node_influence: torch.Tensor | None = None) -> Pruned:
    """circuit-tracer's prune_graph on `adjacency` [N, N] (rows targets). The edge phase runs on the kept
    nodes only, which gives the same masks (dropped nodes' rows and columns are zero there). Links of zero
    weight are never kept. `node_influence`: influence(normalize(adjacency), logit_weights) if known."""
    if node_influence is None:
        node_influence = influence(normalize(adjacency), logit_weights)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[layout.tokens.start:] = True  # embeddings and logits stay
    kept = node_mask.nonzero()[:, 0]
    sub = adjacency[kept][:, kept]
    normalized = normalize(sub)
    weights = logit_weights[kept]
    edge_scores = normalized * (influence(normalized, weights) + weights)[:, None]
    nonzero = edge_scores[sub != 0]
    edge_mask = (edge_scores >= find_threshold(nonzero, edge_threshold)) & (sub != 0) if len(nonzero) else sub != 0
    # features and errors need an outgoing edge, features an incoming one; repeat until stable
    is_source = kept < layout.sources_with_inputs.stop
    is_feature = kept < layout.n_features
    alive = torch.ones(len(kept), dtype=torch.bool)
    while True:
        edge_mask &= alive[:, None] & alive[None, :]
        new = alive.clone()
        new[is_source] &= edge_mask[:, is_source].any(0)
        new[is_feature] &= edge_mask[is_feature].any(1)
        if torch.equal(new, alive):
            break
        alive = new
    node_mask[kept[~alive]] = False
    target, source = edge_mask.nonzero(as_tuple=True)
    return Pruned(node_mask=node_mask, edges=torch.stack([kept[target], kept[source]], 1),
                  node_influence=node_influence, cumulative=cumulative_influence(node_influence))


def graph_scores(adjacency: torch.Tensor, logit_weights: torch.Tensor, layout: Layout,
                 node_mask: torch.Tensor | None = None, normalized: torch.Tensor | None = None,
                 node_influence: torch.Tensor | None = None) -> tuple[float, float]:
    """circuit-tracer's (replacement score, completeness score) of a graph.

    Replacement: the share of the embeddings' and errors' influence on the logits that the embeddings
    hold (1 = everything flows from tokens through features). Completeness: the share of each node's
    normalised input that does not come from error nodes, averaged with weights (influence + logit weight).
    With `node_mask` (a pruned graph), features pruned away count as error nodes: what they carried is no
    longer explained by the graph (the way the circuit-tracing paper scores pruned graphs).
    """
    normalized = normalize(adjacency) if normalized is None else normalized
    node_influence = influence(normalized, logit_weights) if node_influence is None else node_influence
    errors = torch.zeros(len(adjacency), dtype=torch.bool, device=adjacency.device)
    errors[layout.errors] = True
    if node_mask is not None:
        errors[:layout.n_features] = ~node_mask[:layout.n_features]
    token_influence = node_influence[layout.tokens].sum()
    error_influence = node_influence[errors].sum()
    replacement = token_influence / (token_influence + error_influence).clamp(min=1e-30)
    non_error = 1 - normalized[:, errors].sum(-1)
    output_influence = node_influence + logit_weights
    completeness = (non_error * output_influence).sum() / output_influence.sum()
    return float(replacement), float(completeness)

"""Neuron view (Vig 2019, bertviz's "neuron view"): how one query token's attention to one key token is made.

For a layer, a query position i and a key position j <= i, per head: the query vector q_i and the key
vector k_j that the scores use (after the rotary embedding on models that have one, `hook_rot_q` /
`hook_rot_k`), their elementwise product q_i * k_j, whose sum divided by the layer's scale (sqrt(d_head)
unless the model says otherwise) is the attention score at (i, j), and the softmax row: the weights of
query i over every key 0..i. With grouped-query attention several query heads share one key head;
`kv_head[h]` says which. The scores and weights are the model's own (`hook_attn_scores`,
`hook_pattern`), so the table shows the product's sum and the model's score side by side.

    view = neuron_view(model, "The cat sat on the mat", layer=1, query=-1, key=2)
    view.to_frame(); view.figure().show()
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interp.errors import InterpError
from interp.hooks import attn_scores, check_layer, pattern, query_key
from interp.plotting import escape_label, token_labels
from interp.tokens import encode, str_tokens


@dataclasses.dataclass(kw_only=True)
class LayerQK:
    """q, k, scores and pattern of one layer at every position of one prompt (so that picking other tokens
    needs no forward pass)."""

    layer: int
    q: np.ndarray  # [T, heads, d_head], rotated when `rotary`
    k: np.ndarray  # [T, kv_heads, d_head], rotated when `rotary`
    scores: np.ndarray  # [heads, T, T] the model's pre-softmax scores (-inf where masked)
    pattern: np.ndarray  # [heads, T, T]
    scale: float  # the scores are q . k / scale
    rotary: bool

    @property
    def kv_head(self) -> np.ndarray:
        """[heads] the key head each query head reads (grouped-query attention repeats each key head
        heads / kv_heads times, consecutively)."""
        n_heads, n_kv = self.q.shape[1], self.k.shape[1]
        return np.arange(n_heads) // (n_heads // n_kv)


@torch.no_grad()
def layer_qk(model, tokens: torch.Tensor, layer: int) -> LayerQK:
    """The q, k, scores and pattern of `layer` on `tokens` [1, T]; the forward pass stops after that layer."""
    layer = check_layer(model, layer)
    q_name, k_name = query_key(model, layer)
    names = [q_name, k_name, attn_scores(layer), pattern(layer)]
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=layer + 1)
    q, k, scores, weights = (cache[name][0].float().cpu().numpy() for name in names)
    return LayerQK(layer=layer, q=q, k=k, scores=scores, pattern=weights,
                   scale=float(model.blocks[layer].attn.attn_scale), rotary="rot_q" in q_name)


def _position(index: int, n_tokens: int, what: str) -> int:
    if not -n_tokens <= index < n_tokens:
        raise InterpError(f"{what} token {index} is out of range; the prompt has tokens 0..{n_tokens - 1}")
    return index % n_tokens


@dataclasses.dataclass(kw_only=True)
class NeuronView:
    """One query token and one key token of one layer, every head."""

    layer: int
    query: int
    key: int
    tokens: list[str]
    q: np.ndarray  # [heads, d_head] query vector at `query`
    k: np.ndarray  # [heads, d_head] key vector at `key`, of the key head each query head reads
    kv_head: np.ndarray  # [heads]
    scale: float
    score: np.ndarray  # [heads] the model's score at (query, key)
    weights: np.ndarray  # [heads, query + 1] the softmax row of `query` (the model's pattern)
    rotary: bool

    @classmethod
    def select(cls, qk: LayerQK, tokens: list[str], query: int, key: int) -> NeuronView:
        """The view of `qk` at (query, key); negative positions count from the end; key must be <= query
        (causal attention gives later keys no weight)."""
        n = qk.q.shape[0]
        query, key = _position(query, n, "query"), _position(key, n, "key")
        if key > query:
            raise InterpError(f"key token {key} comes after query token {query}; attention is causal, "
                              f"pick a key in 0..{query}")
        kv_head = qk.kv_head
        return cls(layer=qk.layer, query=query, key=key, tokens=list(tokens), q=qk.q[query],
                   k=qk.k[key][kv_head], kv_head=kv_head, scale=qk.scale, score=qk.scores[:, query, key],
                   weights=qk.pattern[:, query, :query + 1], rotary=qk.rotary)

    @property
    def product(self) -> np.ndarray:
        """[heads, d_head] q * k elementwise; `product.sum(-1) / scale` is the attention score."""
        return self.q * self.k

    def to_frame(self) -> pd.DataFrame:
        """One row per head: its key head, sum(q*k), that sum / scale, the model's score, the weight of
        the key in the softmax row and its rank there (1 = the key the query attends to most)."""
        dot = self.product.sum(-1)
        weight = self.weights[:, self.key]
        rank = 1 + (self.weights > weight[:, None]).sum(-1)
        return pd.DataFrame({"head": np.arange(len(dot)), "kv_head": self.kv_head, "q_dot_k": dot,
                             "scale": self.scale, "score_from_product": dot / self.scale,
                             "model_score": self.score, "weight": weight, "rank_of_key": rank})

    def figure(self, heads: list[int] | None = None) -> go.Figure:
        """Heads as rows; columns q, k, q*k (one diverging colour scale each, symmetric about 0) and the
        softmax row over keys 0..query (shaded up to its largest weight) with the chosen key outlined."""
        heads = list(range(self.q.shape[0])) if heads is None else heads
        tok = [escape_label(repr(t)) for t in self.tokens]
        rows = [f"head {h} (k {self.kv_head[h]})" for h in heads]
        after = " after RoPE" if self.rotary else ""
        titles = (f"query q{after}: {self.query} {tok[self.query]}", f"key k{after}: {self.key} {tok[self.key]}",
                  "q * k (sum / scale = score)", f"softmax: weights of query {self.query}")
        fig = make_subplots(rows=1, cols=4, column_widths=[0.2, 0.2, 0.2, 0.4], horizontal_spacing=0.035,
                            shared_yaxes=True, subplot_titles=titles)
        product = self.product[heads]
        for col, values, name in ((1, self.q[heads], "q"), (2, self.k[heads], "k"), (3, product, "q*k")):
            peak = float(np.abs(values).max()) or 1.0
            custom = np.repeat((product.sum(-1) / self.scale)[:, None], values.shape[1], 1)
            fig.add_trace(go.Heatmap(z=values, y=rows, colorscale="RdBu", zmin=-peak, zmax=peak, showscale=False,
                                     customdata=custom,
                                     hovertemplate=f"%{{y}} dim %{{x}}<br>{name} %{{z:.4f}}<br>score "
                                                   "%{customdata:.4f}<extra></extra>"), 1, col)
        keys = token_labels(self.tokens[:self.query + 1])
        fig.add_trace(go.Heatmap(z=self.weights[heads], x=keys, y=rows, colorscale="Blues", zmin=0,
                                 zmax=float(self.weights[heads].max()),
                                 colorbar=dict(title="weight", len=0.8),
                                 hovertemplate="%{y}<br>key %{x}<br>weight %{z:.4f}<extra>click: pick this key"
                                               "</extra>"), 1, 4)
        fig.add_shape(type="rect", x0=self.key - 0.5, x1=self.key + 0.5, y0=-0.5, y1=len(heads) - 0.5,
                      xref="x4", yref="y4", line=dict(color="#d62728", width=2))
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(showticklabels=False, col=4)
        fig.update_layout(title=f"Neuron view, layer {self.layer}: query {self.query} {tok[self.query]} -> key "
                                f"{self.key} {tok[self.key]} (scale {self.scale:.3g})",
                          height=max(260, 34 * len(heads) + 150), margin=dict(l=110, r=20, t=80, b=30))
        return fig

    def summary(self) -> str:
        frame = self.to_frame()
        gap = float(np.abs(frame.score_from_product - frame.model_score).max())
        return (f"layer {self.layer}, query {self.query} {self.tokens[self.query]!r} -> key {self.key} "
                f"{self.tokens[self.key]!r}: {len(frame)} heads, {len(set(self.kv_head.tolist()))} key heads; "
                f"largest |sum(q*k)/scale - model score| {gap:.2e}")


def neuron_view(model, prompt: str, layer: int, query: int = -1, key: int = 0) -> NeuronView:
    """The neuron view of `prompt` on `model` at `layer` for one query and one key token."""
    tokens = encode(model, prompt)
    return NeuronView.select(layer_qk(model, tokens, layer), str_tokens(model, tokens), query, key)

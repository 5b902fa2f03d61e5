"""Plotly figure builders for the dashboard, and standalone offline HTML export.

Token strings are untrusted and plotly reads a few HTML-like tags in labels (`<br>`, `<a>`, `<b>`),
so every token that goes into a label passes through `interp.plotting.escape_label` first. Large grids are given to
plotly as numpy arrays, which plotly sends to the browser as compact base64 typed arrays.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.plotting import escape_label, token_labels

BLUES = "Blues"


def standalone_html(fig: go.Figure | dict) -> str:
    """A complete HTML page with plotly.js inlined: opens offline, no CDN."""
    fig = fig if isinstance(fig, go.Figure) else go.Figure(fig)
    return fig.to_html(include_plotlyjs=True, full_html=True)


def attention_heatmap(pattern: np.ndarray, tokens: list[str], title: str, show_first: bool = True) -> go.Figure:
    """One head's [query, key] pattern; without the first token when `show_first` is off (sinks)."""
    s = 0 if show_first else 1
    z = np.asarray(pattern, dtype=np.float32)[s:, s:]
    labels = token_labels(tokens, s)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale=BLUES, zmin=0, zmax=float(z.max()) if z.size else 1.0,
        hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="query")
    fig.update_xaxes(title="key", tickangle=-60)
    fig.update_layout(title=title, height=720, margin=dict(l=80, r=20, t=50, b=80))
    return fig


def attention_multiples(patterns: np.ndarray, title: str, show_first: bool = True, cols: int = 3) -> go.Figure:
    """Every head of a layer as a small heatmap; each scaled to its own maximum, sent as uint8.

    An overview: clicking a head opens it at full precision.
    """
    s = 0 if show_first else 1
    z = np.asarray(patterns, dtype=np.float32)[:, s:, s:]
    n_heads = z.shape[0]
    peak = z.reshape(n_heads, -1).max(axis=1) if z.size else np.ones(n_heads)
    scaled = np.round(255 * z / np.maximum(peak, 1e-12)[:, None, None]).astype(np.uint8)
    rows = math.ceil(n_heads / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.03, vertical_spacing=0.06,
                        subplot_titles=[f"head {h} (max {peak[h]:.2f})" for h in range(n_heads)])
    for h in range(n_heads):
        fig.add_trace(go.Heatmap(z=scaled[h], zmin=0, zmax=255, coloraxis="coloraxis", hoverinfo="none",
                                 name=f"head {h}"), h // cols + 1, h % cols + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=title, height=280 * rows + 60, coloraxis=dict(colorscale=BLUES, showscale=False),
                      margin=dict(l=20, r=20, t=70, b=20))
    return fig


def sink_map(sink: np.ndarray) -> go.Figure:
    """Mean attention to the first token per layer and head (attention sinks light up)."""
    fig = go.Figure(go.Heatmap(z=np.asarray(sink, dtype=np.float32), colorscale=BLUES, zmin=0, zmax=1,
                               hovertemplate="layer %{y} head %{x}<br>attention to token 0: %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Mean attention to the first token", xaxis=dict(title="head", dtick=1),
                      yaxis=dict(title="layer", dtick=1), height=500)
    return fig


def density_histogram(density: np.ndarray, bins: int = 40) -> go.Figure:
    """log10 firing density of every feature; dead features are counted in the title."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    counts, edges = np.histogram(np.log10(alive), bins=bins) if alive.size else (np.zeros(0), np.zeros(1))
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                           hovertemplate="log10 density %{x:.2f}<br>%{y} features<extra></extra>"))
    fig.update_layout(title=f"Feature density ({density.size - alive.size} dead of {density.size})",
                      xaxis_title="log10 fraction of tokens where the feature fires", yaxis_title="features",
                      height=300, margin=dict(t=50, b=50))
    return fig


def activation_histogram(edges: np.ndarray, counts: np.ndarray, title: str) -> go.Figure:
    """Histogram of one feature's non-zero activations (pre-binned by the statistics writer)."""
    edges, counts = np.asarray(edges, dtype=np.float64), np.asarray(counts)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges) if edges.size > 1 else None,
                           hovertemplate="activation %{x:.3f}<br>%{y} tokens<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="activation", yaxis_title="tokens", height=300,
                      margin=dict(t=50, b=50))
    return fig


def logit_bars(top: list[str], top_values: list[float], bottom: list[str], bottom_values: list[float]) -> go.Figure:
    """The tokens a feature promotes most and least (its decoder direction through the unembedding)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("bottom logits", "top logits"), horizontal_spacing=0.15)
    for col, (toks, vals, colour) in enumerate([(bottom, bottom_values, "#d62728"), (top, top_values, "#1f77b4")], 1):
        labels = token_labels(toks)
        fig.add_trace(go.Bar(x=list(vals), y=labels, orientation="h", marker_color=colour,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), 1, col)
        fig.update_yaxes(autorange="reversed", showticklabels=True, row=1, col=col)
    fig.update_layout(showlegend=False, height=40 + 24 * max(len(top), len(bottom), 1) + 60,
                      margin=dict(t=40, b=30))
    return fig


def tensor_figure(name: str, values: np.ndarray) -> go.Figure | None:
    """A line for a 1-D tensor, a heatmap for a 2-D one, None otherwise (raw result view)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        fig = go.Figure(go.Scatter(y=values, mode="lines+markers"))
    elif values.ndim == 2:
        fig = go.Figure(go.Heatmap(z=values, colorscale="RdBu", zmid=0))
        fig.update_yaxes(autorange="reversed")
    else:
        return None
    fig.update_layout(title=escape_label(name), height=400)
    return fig

"""Plotly figures of an attribution graph: the graph itself (for the offline HTML download of what the
page shows: pruned by the slider, or only the pinned nodes) and the logit nodes' probabilities.

Prompt tokens and node labels are user text: they pass through `escape_label` before plotly sees them.
Edges are drawn as a few line traces (sign x width class), not one trace per edge, so a graph of
thousands of links stays one small figure.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dashboards.graph_data import GraphIndex, hover_lines, link_weight, links_among, node_kind, short_label
from interp.plotting import escape_label, token_labels

COLOURS = {"feature": "#7fb3e0", "error": "#b0b0b0", "embedding": "#86c98a", "logit": "#f5a35c", "other": "#cccccc"}
SYMBOLS = {"feature": "circle", "error": "square", "embedding": "square", "logit": "diamond", "other": "circle"}
POSITIVE, NEGATIVE = "#1f77b4", "#d62728"
WIDTHS = (0.6, 1.5, 3.0, 5.0)  # line width per class of |weight| / max |weight|


def _edge_traces(index: GraphIndex, shown: set[str]) -> list[go.Scatter]:
    """Links between shown nodes as line traces grouped by sign and width class."""
    groups: dict[tuple[bool, int], tuple[list, list]] = {}
    links = index.graph["links"]
    for link in (links[i] for i in links_among(index, shown)):
        weight = link_weight(link)
        width = min(int(len(WIDTHS) * abs(weight) / index.max_weight), len(WIDTHS) - 1)
        xs, ys = groups.setdefault((weight >= 0, width), ([], []))
        (x0, y0), (x1, y1) = index.positions[link["source"]], index.positions[link["target"]]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return [go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                       line=dict(color=POSITIVE if positive else NEGATIVE, width=WIDTHS[width]),
                       opacity=0.35 + 0.15 * width)
            for (positive, width), (xs, ys) in sorted(groups.items())]


def graph_figure(index: GraphIndex, shown: set[str], title: str = "") -> go.Figure:
    """The graph laid out as on the page: layers up, prompt positions across, tokens along the bottom;
    links blue (positive) / red (negative), thicker when larger; hover a node for its facts and links."""
    fig = go.Figure(_edge_traces(index, shown))
    tokens = index.tokens
    for kind, colour in COLOURS.items():
        ids = [i for i in index.positions if i in shown and node_kind(index.nodes[i]) == kind]
        if not ids:
            continue
        fig.add_trace(go.Scatter(
            x=[index.positions[i][0] for i in ids], y=[index.positions[i][1] for i in ids], mode="markers+text",
            name=kind, marker=dict(color=colour, size=12, symbol=SYMBOLS[kind], line=dict(color="#333", width=0.5)),
            text=[escape_label(short_label(index.nodes[i], tokens)) for i in ids], textposition="bottom center",
            textfont=dict(size=8), hoverinfo="text",
            hovertext=["<br>".join(escape_label(line) for line in hover_lines(index, i, shown)) for i in ids]))
    xs, labels = [x for x, _ in index.columns], token_labels([token for _, token in index.columns])
    fig.update_xaxes(tickvals=xs, ticktext=labels, tickangle=-45, showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=[y for y, _ in index.rows], ticktext=[name for _, name in index.rows], showgrid=True,
                     zeroline=False)
    height = max(420, int(max((y for _, y in index.positions.values()), default=0) * 1.1) + 160)
    fig.update_layout(title=escape_label(title), height=min(height, 2400), plot_bgcolor="#fff",
                      hovermode="closest", margin=dict(l=70, r=20, t=50, b=110), legend=dict(orientation="h"))
    return fig


def logit_figure(graph: dict) -> go.Figure:
    """The logit nodes' probabilities (target in orange), largest first."""
    logits = sorted((n for n in graph["nodes"] if node_kind(n) == "logit"),
                    key=lambda n: -float(n.get("token_prob") or 0.0))
    labels = [f"{i}:{escape_label(n.get('clerp') or n['node_id'])}" for i, n in enumerate(logits)]
    probs = np.array([float(n.get("token_prob") or 0.0) for n in logits], dtype=np.float64)
    colours = [COLOURS["logit"] if n.get("is_target_logit") else "#9ab" for n in logits]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker_color=colours,
                           hovertemplate="%{y}<br>probability %{x:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Logit nodes: next-token probability (target in orange)", xaxis_title="probability",
                      height=120 + 26 * max(len(logits), 1), margin=dict(t=50, b=40, l=260))
    return fig

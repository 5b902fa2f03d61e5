"""The page of a saved `attribution_graph` result: an interactive graph viewer that works offline.

The graph is drawn with dash-cytoscape (its scripts are served from the installed package, like
Dash's own): layers up, prompt positions across, tokens along the bottom, links blue (positive) or
red (negative) and thicker when larger. Hover a node for its facts and strongest links; click it for
its card (graph_card.py); the slider prunes feature nodes by influence live; pinned nodes can be
shown alone with the links among them. Downloads: the graph JSON (`to_graph_json()`, circuit-tracer's
schema) and a standalone HTML page (plotly.js inlined) of what the viewer shows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import dash
import dash_cytoscape as cyto
import pandas as pd
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboards.components import graph
from dashboards.context import Context
from dashboards.figures import standalone_html
from dashboards.graph_card import node_card
from dashboards.graph_data import (
    GraphIndex,
    drawn_links,
    hover_lines,
    index_graph,
    kept_ids,
    link_weight,
    links_among,
    long_label,
    node_kind,
    prompt_tokens,
    short_label,
    token_at,
)
from dashboards.graph_figure import COLOURS, NEGATIVE, POSITIVE, graph_figure, logit_figure
from dashboards.views import entry_key, find_entry, load_result, register_view, summary_section, table_section
from interp.errors import InterpError
from interp.workspace import Entry, slug

KIND = "attribution_graph"
MAX_LINKS = 3000  # the strongest links drawn (plus LINKS_PER_NODE of each node's): the page stays light
LINKS_PER_NODE = 4
PINNED = "#8e44ad"
AXIS = "axis:"  # id prefix of the token and layer label nodes (graph node ids never hold a colon)
STYLESHEET = [
    {"selector": "node", "style": {"width": 14, "height": 14, "label": "data(label)", "font-size": 8,
                                   "text-valign": "bottom", "text-margin-y": 2, "border-width": 0.5,
                                   "border-color": "#333", "z-index-compare": "manual", "z-index": 10}},
    *({"selector": f"node.{kind}", "style": {"background-color": colour}} for kind, colour in COLOURS.items()),
    {"selector": "node.error", "style": {"shape": "round-rectangle"}},
    {"selector": "node.embedding", "style": {"shape": "rectangle", "width": 18}},
    {"selector": "node.logit", "style": {"shape": "diamond", "width": 18, "height": 18}},
    {"selector": "node.target", "style": {"border-width": 2.5, "border-color": "#a0522d"}},
    {"selector": "node:selected", "style": {"border-width": 3, "border-color": "#000"}},
    {"selector": "node.axis", "style": {"background-opacity": 0, "border-width": 0, "font-size": 11,
                                        "color": "#333", "text-valign": "center", "events": "no"}},
    {"selector": "edge", "style": {"width": "data(width)", "opacity": "data(opacity)", "curve-style": "straight",
                                   "target-arrow-shape": "triangle", "arrow-scale": 0.5, "z-index-compare": "manual",
                                   "z-index": 1}},  # under the nodes, so a click on a node hits the node
    {"selector": "edge.pos", "style": {"line-color": POSITIVE, "target-arrow-color": POSITIVE}},
    {"selector": "edge.neg", "style": {"line-color": NEGATIVE, "target-arrow-color": NEGATIVE}},
]


# -- data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Loaded:
    """A saved graph as the page uses it: its Result and entry, its index, and the links the viewer draws."""

    result: Any
    entry: Entry
    index: GraphIndex
    drawn: set[int]


def load_graph(ctx: Context, name: str) -> Loaded:
    """The saved graph `name` (indexed once per file version)."""
    entry = find_entry(ctx, KIND, name)
    result = load_result(ctx, entry)
    if result is None:
        raise InterpError(f"no module registers results of kind {KIND!r}; update interp")
    stamp = (entry.path / "result.json").stat().st_mtime_ns

    def prepare() -> tuple[GraphIndex, set[int]]:
        index = index_graph(result.to_graph_json())
        return index, set(drawn_links(index, MAX_LINKS, LINKS_PER_NODE))

    index, drawn = ctx.cache.get(("graph", str(entry.path), stamp), prepare)
    return Loaded(result, entry, index, drawn)


def shown_ids(index: GraphIndex, threshold: float | None, pinned: list[str] | None, only_pinned: bool) -> set[str]:
    """The nodes the viewer shows: only the pinned ones, or those kept at `threshold` plus the pinned."""
    pinned_set = {p for p in pinned or [] if p in index.nodes}
    if only_pinned:
        return pinned_set
    return kept_ids(index.graph, math.inf if threshold is None else float(threshold)) | pinned_set


def elements(index: GraphIndex, drawn: set[int]) -> list[dict]:
    """Cytoscape elements, sent once per page: every node at its fixed position (y flipped: cytoscape's
    grows down) with its influence, token labels under each position, layer labels on the left, and the
    `drawn` links (see `drawn_links`). The slider and the pins change only the stylesheet (`view_stylesheet`)."""
    tokens, out = index.tokens, []
    for node_id, node in index.nodes.items():
        x, y = index.positions[node_id]
        influence = node.get("influence")
        out.append({"data": {"id": node_id, "label": short_label(node, tokens),
                             "influence": float(influence) if isinstance(influence, (int, float)) else 0.0},
                    "position": {"x": x, "y": -y},
                    "classes": " ".join(["gnode", node_kind(node), *["target"] * bool(node.get("is_target_logit"))])})
    left = min((x for x, _ in index.positions.values()), default=0.0) - 70
    out += [{"data": {"id": f"{AXIS}pos{pos}", "label": f"{pos}: {token_at(index.graph, pos)}"},
             "position": {"x": x, "y": 55}, "classes": "axis", "selectable": False, "grabbable": False}
            for pos, (x, _) in enumerate(index.columns)]
    out += [{"data": {"id": f"{AXIS}row{row}", "label": name}, "position": {"x": left, "y": -y}, "classes": "axis",
             "selectable": False, "grabbable": False} for row, (y, name) in enumerate(index.rows)]
    for i in sorted(drawn):
        link = index.graph["links"][i]
        weight = link_weight(link)
        share = min(abs(weight) / index.max_weight, 1.0)
        out.append({"data": {"id": f"link{i}", "source": link["source"], "target": link["target"], "weight": weight,
                             "width": round(0.5 + 6 * share, 2), "opacity": round(0.25 + 0.65 * share, 2)},
                    "classes": "pos" if weight >= 0 else "neg"})
    return out


def view_stylesheet(index: GraphIndex, threshold: float | None, pinned: list[str] | None, only_pinned: bool
                    ) -> list[dict]:
    """STYLESHEET plus the rules of one view: hide every node (pinned only) or the feature nodes above the
    influence threshold, then show and mark the pinned ones. Cytoscape hides the links of hidden nodes."""
    rules = list(STYLESHEET)
    if only_pinned:
        rules.append({"selector": "node.gnode", "style": {"display": "none"}})
    elif threshold is not None:
        rules.append({"selector": f"node.feature[influence > {float(threshold)!r}]", "style": {"display": "none"}})
    for node_id in pinned or []:
        if node_id in index.nodes:  # a known id, quoted as a selector string
            rules.append({"selector": f"node[id = {json.dumps(node_id)}]",
                          "style": {"display": "element", "border-width": 3, "border-color": PINNED}})
    return rules


def view_count(index: GraphIndex, shown: set[str], drawn: set[int]) -> str:
    """The line that says how much of the graph the view shows."""
    among = links_among(index, shown)
    n_drawn = sum(1 for i in among if i in drawn)
    links = f"{n_drawn} of {len(index.graph['links'])} links" if n_drawn == len(among) else (
        f"the {n_drawn} strongest of their {len(among)} links ({len(index.graph['links'])} in all)")
    return f"showing {len(shown)} of {len(index.nodes)} nodes and {links}"


def nodes_frame(graph: dict) -> pd.DataFrame:
    """One row per node, most influential first."""
    rows = [{"node": n["node_id"], "kind": node_kind(n), "layer": str(n.get("layer")), "position": n.get("ctx_idx"),
             "token": token_at(graph, int(n.get("ctx_idx", 0))), "feature": n.get("feature"),
             "activation": n.get("activation"), "influence": n.get("influence"), "probability": n.get("token_prob"),
             "label": n.get("clerp", "")} for n in graph["nodes"]]
    return pd.DataFrame(rows).sort_values("influence", kind="stable", na_position="last").reset_index(drop=True)


def qk_frame(graph: dict) -> pd.DataFrame:
    """Per attention head, how much the target logit depends on its frozen pattern; largest first."""
    return pd.DataFrame(graph["qk"]).sort_values("importance", ascending=False, ignore_index=True)


def _describe(graph: dict) -> list[Any]:
    meta, scores = graph.get("metadata", {}), graph.get("scores", {})
    target = next((n for n in graph["nodes"] if n.get("is_target_logit")), None)
    facts = [f"model: {meta.get('model', '?')}", f"{len(graph['nodes'])} nodes, {len(graph['links'])} links",
             f"target: {target.get('clerp') or target['node_id']}" if target else "no target logit"]
    facts += [f"{name}: {float(scores[key]):.3f}" for key, name in (
        ("replacement", "replacement score"), ("completeness", "completeness score"),
        ("replacement_unpruned", "unpruned replacement"), ("completeness_unpruned", "unpruned completeness"))
        if isinstance(scores.get(key), (int, float))]
    parts: list[Any] = [html.P("prompt tokens: " + " | ".join(prompt_tokens(graph)), className="muted"),
                        html.P(",  ".join(facts), className="muted", id="graph-facts")]
    if meta.get("position0_note"):
        parts.append(html.P(str(meta["position0_note"]), className="muted"))
    return parts


# -- page ----------------------------------------------------------------------------------------
def _controls(index: GraphIndex, count: str) -> html.Div:
    influences = [float(n["influence"]) for n in index.graph["nodes"]
                  if node_kind(n) == "feature" and isinstance(n.get("influence"), (int, float))]
    top = math.ceil(max(influences, default=1.0) * 100) / 100 or 1.0
    return html.Div(className="graph-controls", children=[
        html.Label("node influence threshold (cumulative share; lower keeps fewer features)"),
        html.Div(dcc.Slider(id="graph-threshold", min=0, max=top, step=0.01, value=top, updatemode="drag",
                            marks={0: "0", top: f"{top:g}"}, tooltip={"placement": "bottom", "always_visible": True}),
                 className="graph-slider"),  # fixed height: the slider loads late and must not move the canvas
        html.Div(className="row", children=[
            html.Button("Pin selected node", id="graph-pin"), html.Button("Unpin", id="graph-unpin"),
            html.Button("Clear pins", id="graph-clear"),
            dcc.Checklist(id="graph-only-pinned", options=[{"label": " show only pinned nodes", "value": "only"}],
                          value=[], inline=True),
            html.Button("Download graph JSON", id="graph-dl-json"), html.Button("Download HTML", id="graph-dl-html"),
            dcc.Download(id="graph-download"),
        ]),
        html.Div(count, id="graph-count", className="status"),  # filled now: a later line would move the canvas
    ])


@register_view(KIND)
def graph_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Viewer, hover and card panels, pinned list, logit probabilities, node and QK tables, summary."""
    loaded = load_graph(ctx, entry.name)
    index, key = loaded.index, entry_key(entry)
    graph_json = index.graph
    count = view_count(index, shown_ids(index, None, [], False), loaded.drawn)
    parts: list[Any] = [*_describe(graph_json), dcc.Store(id="graph-ref", data=entry.name),
                        dcc.Store(id="graph-pinned", data=[]), dcc.Store(id="graph-selected", data=None),
                        _controls(index, count),
                        html.Div(className="graph-main", children=[
                            cyto.Cytoscape(id="graph-cyto", elements=elements(index, loaded.drawn),
                                           stylesheet=STYLESHEET, layout={"name": "preset", "fit": True, "padding": 30},
                                           style={"width": "100%", "height": "640px"}, minZoom=0.05, maxZoom=4,
                                           boxSelectionEnabled=False, className="graph-canvas"),
                            html.Div(className="graph-side", children=[
                                html.Div(html.P("Hover a node for its activation and strongest links.",
                                                className="muted"), id="graph-hover", className="graph-hover"),
                                html.Div(html.P("Click a node to see its card.", className="muted"), id="graph-card",
                                         className="graph-card")])]),
                        html.H3("Pinned nodes"), html.Div(_pinned_list(index, []), id="graph-pinned-list"),
                        graph(logit_figure(graph_json), key + "-logits")]
    parts.append(table_section(lambda: nodes_frame(graph_json), key + "-nodes", "Nodes"))
    if graph_json.get("qk"):
        parts.append(table_section(lambda: qk_frame(graph_json), key + "-qk",
                                   "Attention heads whose QK pattern the target depends on"))
    if graph_json.get("checks"):
        parts.append(table_section(lambda: pd.DataFrame(graph_json["checks"]), key + "-checks",
                                   "Interventions: predicted and observed change of the target logit"))
    return parts + summary_section(result)


def _pinned_list(index: GraphIndex, pinned: list[str]) -> Any:
    if not pinned:
        return html.P("No pinned nodes: click a node, then 'Pin selected node'.", className="muted")
    return html.Ul([html.Li(long_label(index.nodes[p], index.tokens)) for p in pinned if p in index.nodes],
                   id="graph-pins")


VIEW = (State("graph-threshold", "value"), State("graph-pinned", "data"), State("graph-only-pinned", "value"),
        State("graph-ref", "data"))  # what every callback needs to know of the view


def register_graph_callbacks(app: Dash, ctx: Context) -> None:
    """View updates (slider, pins), hover, click-for-card, pinning and the two downloads."""

    @app.callback(Output("graph-cyto", "stylesheet"), Output("graph-count", "children"),
                  Output("graph-pinned-list", "children"),
                  Input("graph-threshold", "value"), Input("graph-pinned", "data"), Input("graph-only-pinned", "value"),
                  State("graph-ref", "data"), prevent_initial_call=True)
    def update_view(threshold, pinned, only, name):
        loaded = load_graph(ctx, name)
        index, shown = loaded.index, shown_ids(loaded.index, threshold, pinned, bool(only))
        count = view_count(index, shown, loaded.drawn) + (" (pinned only)" if only else "")
        return view_stylesheet(index, threshold, pinned, bool(only)), count, _pinned_list(index, pinned or [])

    @app.callback(Output("graph-hover", "children"), Input("graph-cyto", "mouseoverNodeData"), *VIEW,
                  prevent_initial_call=True)
    def hover(data, threshold, pinned, only, name):
        index = load_graph(ctx, name).index
        if not data or data.get("id") not in index.nodes:
            raise PreventUpdate
        lines = hover_lines(index, data["id"], shown_ids(index, threshold, pinned, bool(only)))
        return [html.B(lines[0]), *(html.Div(line) for line in lines[1:])]

    @app.callback(Output("graph-card", "children"), Output("graph-selected", "data"),
                  Input("graph-cyto", "tapNodeData"), *VIEW, prevent_initial_call=True)
    def card(data, threshold, pinned, only, name):
        index = load_graph(ctx, name).index
        if not data or data.get("id") not in index.nodes:
            raise PreventUpdate
        return node_card(ctx, index, data["id"], shown_ids(index, threshold, pinned, bool(only))), data["id"]

    @app.callback(Output("graph-pinned", "data"), Input("graph-pin", "n_clicks"), Input("graph-unpin", "n_clicks"),
                  Input("graph-clear", "n_clicks"), State("graph-selected", "data"), State("graph-pinned", "data"),
                  prevent_initial_call=True)
    def pin(_pin, _unpin, _clear, selected, pinned):
        return pinned_after(dash.ctx.triggered_id, selected, pinned or [])

    @app.callback(Output("graph-download", "data"), Input("graph-dl-json", "n_clicks"),
                  Input("graph-dl-html", "n_clicks"), *VIEW, prevent_initial_call=True)
    def download(_json, _html, threshold, pinned, only, name):
        loaded = load_graph(ctx, name)
        filename = slug(loaded.entry.name, 80)
        if dash.ctx.triggered_id == "graph-dl-json":
            return dcc.send_string(json.dumps(loaded.result.to_graph_json(), allow_nan=False),
                                   filename=f"{filename}.json")
        if dash.ctx.triggered_id == "graph-dl-html":
            shown = shown_ids(loaded.index, threshold, pinned, bool(only))
            title = f"{loaded.entry.name}: {loaded.index.graph.get('metadata', {}).get('prompt', '')}"
            return dcc.send_string(standalone_html(graph_figure(loaded.index, shown, title)),
                                   filename=f"{filename}-graph.html")
        raise PreventUpdate


def pinned_after(action: str | None, selected: str | None, pinned: list[str]) -> list[str]:
    """The pinned list after a button: pin / unpin the selected node, or clear."""
    if action == "graph-clear":
        return []
    if not selected:
        raise PreventUpdate
    if action == "graph-pin":
        return pinned if selected in pinned else [*pinned, selected]
    if action == "graph-unpin":
        return [p for p in pinned if p != selected]
    raise PreventUpdate

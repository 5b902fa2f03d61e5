"""The card of one attribution-graph node, shown when it is clicked.

For a transcoder feature: its facts, de-embedding tokens (what drives it directly from the vocabulary),
top logits (what its decoder promotes), its strongest links split into the input-invariant part
(weights only) and the input-dependent part (the source's activation), and its top activating
contexts when the workspace has `interp sae features` statistics of the same transcoder (matched by
the transcoder folder recorded as `sae_path` in the feature set's sae.json). Every text goes into
component children, which React escapes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dash import dcc, html

from dashboards.components import display_token, token_strip
from dashboards.context import Context
from dashboards.feature_store import FEATURES_DIR, META_FILE, feature_set_names, load_feature_set
from dashboards.graph_data import GraphIndex, long_label, node_facts, node_kind, top_links

CARD_LINKS = 8  # strongest incoming and outgoing links listed
CARD_CONTEXTS = 5  # top activating contexts shown (the feature page has them all)


def _folder_key(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def feature_set_for(ctx: Context, sae_path: str) -> str | None:
    """The name of the workspace's feature set computed for the transcoder folder `sae_path`, if any.

    Paths are compared resolved (against the dashboard's working directory when relative); sets whose
    sae.json records no `sae_path` never match.
    """
    wanted = _folder_key(sae_path)
    if not wanted:
        return None
    for name in feature_set_names(ctx):
        meta_file = ctx.inside(FEATURES_DIR, name, META_FILE)
        stamp = meta_file.stat().st_mtime_ns
        recorded = ctx.cache.get(("sae_path", str(meta_file), stamp), lambda: _recorded_path(meta_file))
        if recorded and recorded == wanted:
            return name
    return None


def _recorded_path(meta_file: Path) -> str:
    try:
        value = json.loads(meta_file.read_text()).get("sae_path", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return _folder_key(value) if isinstance(value, str) else ""


def _chips(tokens: Any, chips_id: str) -> html.Div:
    tokens = [str(t) for t in tokens or []]
    if not tokens:
        return html.Div("none recorded", className="muted", id=chips_id)
    return html.Div([html.Span(display_token(t), className="tok chip") for t in tokens], className="strip",
                    id=chips_id)


def _number(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _heads(link: dict, k: int = 3) -> str:
    heads = sorted(link.get("heads") or [], key=lambda h: -abs(float(h[2])))[:k]
    return ", ".join(f"L{int(layer)}H{int(head)} {float(w):+.3g}" for layer, head, w in heads)


def links_table(index: GraphIndex, node_id: str, among: set[str] | None = None) -> html.Table:
    """The node's strongest links: weight = invariant x dependent for feature->feature links, and how
    each cross-position link splits over attention heads."""
    incoming, outgoing = top_links(index, node_id, CARD_LINKS, among)
    header = html.Tr([html.Th(t) for t in ("", "node", "weight", "input-invariant", "input-dependent", "heads (OV)")])
    rows = []
    for arrow, links, end in (("from", incoming, "source"), ("to", outgoing, "target")):
        for link in links:
            other = index.nodes.get(link[end])
            rows.append(html.Tr([html.Td(arrow), html.Td(long_label(other, index.tokens) if other else str(link[end])),
                                 html.Td(_number(link.get("weight"))), html.Td(_number(link.get("invariant"))),
                                 html.Td(_number(link.get("dependent"))), html.Td(_heads(link))]))
    if not rows:
        return html.Table([header, html.Tr(html.Td("no links shown", colSpan=6))], className="list", id="card-links")
    return html.Table([header] + rows, className="list", id="card-links")


def _contexts(ctx: Context, node: dict) -> html.Div:
    sae_path = str(node.get("sae_path") or "")
    name = feature_set_for(ctx, sae_path)
    if name is None:
        return html.Div([html.H4("Top activating contexts"), html.P(
            f"No feature statistics of this transcoder in the workspace; make them with `interp sae features "
            f"{sae_path or 'TRANSCODER_DIR'} --workspace {ctx.root}`.", className="muted")], id="card-contexts")
    feature = int(node.get("feature", -1))
    fs = load_feature_set(ctx, name)
    if feature not in fs.frame.index:
        return html.Div([html.H4("Top activating contexts"), html.P(
            f"Feature {feature} is not in the feature set {name}.", className="muted")], id="card-contexts")
    contexts = fs.contexts(feature)
    top = contexts[contexts["group_rank"] == contexts["group_rank"].min()] if len(contexts) else contexts
    peak = float(fs.row(feature).max_act)
    strips = [html.Div(token_strip(list(r.tokens), list(r.acts), peak), className="context")
              for r in top.head(CARD_CONTEXTS).itertuples(index=False)]
    return html.Div([html.H4(["Top activating contexts (",
                              dcc.Link(f"{name} feature {feature}", href=f"/features/{name}/{feature}"), ")"]),
                     *(strips or [html.P("No contexts are stored for this feature (it may be dead).",
                                         className="muted")])], id="card-contexts")


def node_card(ctx: Context, index: GraphIndex, node_id: str, among: set[str] | None = None) -> list[Any]:
    """The children of the card panel for `node_id`."""
    node = index.nodes.get(node_id)
    if node is None:
        return [html.P("Click a node of the graph to see its card.", className="muted")]
    parts: list[Any] = [html.H3(long_label(node, index.tokens), id="card-title"),
                        html.Div([html.Span(f"{k}: {v}") for k, v in node_facts(node)], className="stats")]
    if node.get("clerp"):
        parts.append(html.P(str(node["clerp"]), className="muted"))
    if node_kind(node) == "feature":
        parts += [html.H4("De-embedding: tokens that drive it directly"), _chips(node.get("de_embedding"),
                                                                              "card-de-embedding"),
                  html.H4("Top logits: tokens its decoder promotes"), _chips(node.get("top_logits"), "card-top-logits")]
    parts += [html.H4("Strongest links"), links_table(index, node_id, among)]
    if node_kind(node) == "feature":
        parts.append(_contexts(ctx, node))
    return parts

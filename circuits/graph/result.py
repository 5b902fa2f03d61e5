"""The saved attribution graph: circuit-tracer's graph-file schema plus our attention, factorisation and
intervention extras (see /work/notes/GRAPH_CONTRACT.md for the fields the dashboard reads).

Node ids follow circuit-tracer / Neuronpedia: features `{layer}_{feature}_{pos}`, MLP errors
`0_{layer}_{pos}`, embeddings `E_{token_id}_{pos}`, logits `{n_layers + 1}_{token_id}_{pos}`. `influence` is
the cumulative share of total influence on the logits with nodes ranked most influential first (so a
smaller number is a more influential node, and keeping `influence <= x` prunes to a node threshold x).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import pandas as pd

from interp.plotting import escape_label
from interp.results import Result, register_result

FEATURE = "cross layer transcoder"
ERROR = "mlp reconstruction error"
EMBEDDING = "embedding"
LOGIT = "logit"
NODE_TYPES = (FEATURE, ERROR, EMBEDDING, LOGIT)
FIGURE_LINKS = 3000  # links drawn by `figure()`, largest |weight| first (a browser stays responsive)


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities turned into None, recursively (graph JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def feature_id(layer: int, index: int, pos: int) -> str:
    return f"{layer}_{index}_{pos}"


def error_id(layer: int, pos: int) -> str:
    """circuit-tracer's error id. It can equal a layer-0 feature's id (feature index = layer); the graph
    builder renames such an error node `0_{layer}_{pos}_error` so that links stay unambiguous."""
    return f"0_{layer}_{pos}"


def embedding_id(token: int, pos: int) -> str:
    return f"E_{token}_{pos}"


def logit_id(n_layers: int, token: int, pos: int) -> str:
    return f"{n_layers + 1}_{token}_{pos}"


def _links_from_frame(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Links back from their Parquet table: fields a link did not have (NaN) dropped, heads as [int, int, float]."""
    links = []
    for link in frame.to_dict("records"):
        link = {k: v for k, v in link.items() if not (isinstance(v, float) and math.isnan(v))}
        if "heads" in link:
            link["heads"] = [[int(h[0]), int(h[1]), float(h[2])] for h in link["heads"]]
        links.append(link)
    return links


def node_row(node: dict[str, Any]) -> int:
    """The figure's row of a node: embeddings 0, layer l at l + 1, logits at n_layers + 1."""
    return 0 if node["layer"] == "E" else int(node["layer"]) + (node["feature_type"] != LOGIT)


@register_result
@dataclasses.dataclass
class AttributionGraph(Result):
    """An attribution graph of one prompt over transcoder features (pruned), ready for a graph viewer.

    metadata: circuit-tracer metadata (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold)
        plus edge_threshold, model, transcoders {layer: folder}, n_layers, position0_note, embedding_note.
    nodes: circuit-tracer nodes; feature nodes also carry de_embedding, top_logits, sae_path.
    links: source, target, weight; feature->feature links also invariant x dependent = weight; every link
        carries its attention split: residual (same position, no head) + heads [[layer, head, weight], ...]
        (the largest single-head paths) + other_heads (the remaining single-head paths) + multi_hop = weight.
    scores: circuit-tracer's replacement / completeness of the unpruned graph, and of the pruned one (the
        features pruned away counted as error nodes).
    qk: per head, how much the target logit depends on its frozen attention pattern.
    checks: interventions in the spliced model beside the graph's predictions (empty unless asked for).
    """

    kind = "attribution_graph"
    metadata: dict[str, Any]
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    scores: dict[str, float]
    qk: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.links, pd.DataFrame):  # as `write` stores them
            self.links = _links_from_frame(self.links)

    def to_graph_json(self) -> dict[str, Any]:
        """The graph file: what `--json` prints and what circuit-tracer's viewers and Neuronpedia read.
        NaN and infinities become null (links are finite by construction: the graph builder refuses a
        forward pass that is not)."""
        out = {"metadata": self.metadata,
               "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
               "nodes": self.nodes, "links": self.links, "scores": self.scores, "qk": self.qk}
        if self.checks:
            out["checks"] = self.checks
        return {k: v if k == "links" else _finite(v) for k, v in out.items()}

    def write(self, folder) -> None:
        """As every result, with the links (10^5 of them in a big graph) as one Parquet table."""
        twin = copy.copy(self)
        twin.links = pd.DataFrame(self.links)
        Result.write(twin, folder)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.to_graph_json()}

    def node(self, node_id: str) -> dict[str, Any]:
        """The node with id `node_id` (KeyError if the pruned graph does not hold it)."""
        for node in self.nodes:
            if node["node_id"] == node_id:
                return node
        raise KeyError(node_id)

    def to_frame(self) -> pd.DataFrame:
        """One row per node, most influential first."""
        tokens = self.metadata.get("prompt_tokens", [])
        rows = []
        for n in self.nodes:
            rows.append({"node_id": n["node_id"], "feature_type": n["feature_type"], "layer": n["layer"],
                         "feature": n["feature"], "ctx_idx": n["ctx_idx"],
                         "token": tokens[n["ctx_idx"]] if n["ctx_idx"] < len(tokens) else "",
                         "activation": n.get("activation"), "influence": n.get("influence"),
                         "token_prob": n.get("token_prob", 0.0), "clerp": n.get("clerp", "")})
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame = frame.sort_values("influence", na_position="last", kind="stable").reset_index(drop=True)
        return frame

    def checks_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.checks, columns=["node_id", "intervention", "predicted", "observed"])

    def figure(self):
        """The pruned graph: layers up, positions across (token labels), edges coloured by sign, width by |weight|."""
        import plotly.graph_objects as go

        tokens = self.metadata.get("prompt_tokens", [])
        n_layers = int(self.metadata.get("n_layers", 0))
        cells: dict[tuple[int, int], list[dict]] = {}
        for n in self.nodes:
            cells.setdefault((node_row(n), n["ctx_idx"]), []).append(n)
        where: dict[str, tuple[float, float]] = {}
        for (row, pos), group in cells.items():
            for i, n in enumerate(group):  # spread a cell's nodes across its column
                where[n["node_id"]] = (pos + (i + 1) / (len(group) + 1) - 0.5, row)
        fig = go.Figure()
        links = sorted(self.links, key=lambda link: -abs(link["weight"]))[:FIGURE_LINKS]
        biggest = abs(links[0]["weight"]) if links and links[0]["weight"] else 1.0
        buckets: dict[tuple[bool, int], tuple[list, list]] = {}
        for link in links:
            if link["source"] not in where or link["target"] not in where:
                continue
            level = min(3, int(4 * abs(link["weight"]) / biggest))
            xs, ys = buckets.setdefault((link["weight"] >= 0, level), ([], []))
            (x0, y0), (x1, y1) = where[link["source"]], where[link["target"]]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        for (positive, level), (xs, ys) in sorted(buckets.items()):
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line={"color": "#2a7de1" if positive else "#e1432a", "width": 0.5 + 1.5 * level},
                                     opacity=0.35 + 0.15 * level))
        colors = {FEATURE: "#555555", ERROR: "#bbbbbb", EMBEDDING: "#3a9d5d", LOGIT: "#8a4fbf"}
        for kind in NODE_TYPES:
            members = [n for n in self.nodes if n["feature_type"] == kind]
            if not members:
                continue
            fig.add_trace(go.Scatter(
                x=[where[n["node_id"]][0] for n in members], y=[where[n["node_id"]][1] for n in members],
                mode="markers", name=kind, marker={"color": colors[kind], "size": 9},
                text=[_hover(n) for n in members], hoverinfo="text"))
        shown = f" (the {len(links)} strongest of {len(self.links)} links)" if len(links) < len(self.links) else ""
        fig.update_layout(
            title=escape_label(f"attribution graph: {self.metadata.get('prompt', '')!r}{shown}"), plot_bgcolor="white",
            xaxis={"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [escape_label(t) for t in tokens],
                   "title": "position"},
            yaxis={"tickmode": "array", "tickvals": list(range(n_layers + 2)),
                   "ticktext": ["emb", *[f"L{i}" for i in range(n_layers)], "logit"], "title": "layer"})
        return fig

    def summary(self) -> str:
        meta = self.metadata
        counts = pd.Series([n["feature_type"] for n in self.nodes]).value_counts().to_dict()
        logits = [n for n in self.nodes if n["feature_type"] == LOGIT]
        lines = [f"attribution graph of {meta.get('prompt', '')!r} ({meta.get('model', '')}, "
                 f"{len(meta.get('transcoders', {}))} transcoder layers)",
                 "logits: " + ", ".join(n["clerp"] for n in logits),
                 f"nodes: {len(self.nodes)} ({', '.join(f'{v} {k}' for k, v in counts.items())}), links: {len(self.links)}",
                 "scores: " + ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items() if v is not None)]
        if meta.get("position0_note"):
            lines.append(meta["position0_note"])
        features = self.to_frame()
        features = features[features["feature_type"] == FEATURE].head(12)
        if not features.empty:
            extra = {n["node_id"]: n for n in self.nodes}
            features = features.assign(
                de_embedding=[" ".join(map(repr, extra[i].get("de_embedding", [])[:4])) for i in features["node_id"]],
                top_logits=[" ".join(map(repr, extra[i].get("top_logits", [])[:4])) for i in features["node_id"]])
            lines.append("most influential features:")
            lines.append(features[["node_id", "token", "activation", "influence", "de_embedding", "top_logits"]]
                         .to_string(index=False))
        if self.qk:
            lines.append("heads whose attention pattern the target logit depends on most: " + ", ".join(
                f"L{h['layer']}H{h['head']} {h['importance']:+.3f}" for h in self.qk[:6]))
        if self.checks:
            lines.append("interventions (target logit minus mean logit):")
            lines.append(self.checks_frame().to_string(index=False))
            if meta.get("check_spearman") is not None:
                lines.append(f"Spearman rank correlation, predicted vs observed: {meta['check_spearman']:.3f}")
        return "\n".join(lines)


def _hover(node: dict[str, Any]) -> str:
    parts = [node["node_id"], node["feature_type"]]
    if node.get("activation") is not None:
        parts.append(f"activation {node['activation']:.3f}")
    if node.get("influence") is not None:
        parts.append(f"influence {node['influence']:.3f}")
    if node.get("clerp"):
        parts.append(node["clerp"])
    if node.get("de_embedding"):
        parts.append("de-embedding: " + " ".join(map(repr, node["de_embedding"][:5])))
    if node.get("top_logits"):
        parts.append("top logits: " + " ".join(map(repr, node["top_logits"][:5])))
    return "<br>".join(escape_label(p) for p in parts)

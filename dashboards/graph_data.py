"""Attribution-graph JSON (GRAPH_CONTRACT.md, `AttributionGraph.to_graph_json()`) for the graph page.

Pure functions over the graph dict: the nodes the threshold keeps, a node index with each node's links,
the links among shown nodes (and which ones a viewer draws), a fixed layout (layers up, prompt positions
across) and the text shown on hover. The layout is computed once for the whole graph, so nodes stay put
while the slider prunes.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict
from typing import Any

from dashboards.components import display_token

KINDS = {"cross layer transcoder": "feature", "mlp reconstruction error": "error", "embedding": "embedding",
         "logit": "logit"}
PER_ROW = 4  # nodes side by side in one (layer, position) cell before wrapping
DX, DY = 46.0, 40.0  # spacing of nodes inside a cell (px)
COLUMN_GAP, ROW_GAP = 34.0, 80.0


def node_kind(node: dict) -> str:
    """"feature", "error", "embedding", "logit" (or "other") from circuit-tracer's `feature_type`."""
    return KINDS.get(str(node.get("feature_type", "")), "other")


def link_weight(link: dict) -> float:
    """A link's weight as a float; 0 for a missing or non-finite one (graph JSON writes NaN as null)."""
    value = link.get("weight")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _influence(node: dict) -> float:
    value = node.get("influence")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def kept_ids(graph: dict, threshold: float) -> set[str]:
    """Ids of the nodes kept at `threshold`: feature nodes with influence <= threshold (influence is the
    cumulative share, smaller = more influential), and every embedding, error and logit node."""
    return {n["node_id"] for n in graph["nodes"] if node_kind(n) != "feature" or _influence(n) <= threshold}


def prompt_tokens(graph: dict) -> list[str]:
    tokens = graph.get("metadata", {}).get("prompt_tokens") or []
    return [str(t) for t in tokens]


def token_at(graph: dict, pos: int) -> str:
    tokens = prompt_tokens(graph)
    return tokens[pos] if 0 <= pos < len(tokens) else ""


def short_label(node: dict, tokens: list[str]) -> str:
    """A few characters to draw beside a node."""
    kind, pos = node_kind(node), int(node.get("ctx_idx", 0))
    if kind == "embedding":
        return display_token(tokens[pos]) if 0 <= pos < len(tokens) else "emb"
    if kind == "error":
        return "err"
    if kind == "logit":
        return f"{node.get('clerp') or node.get('feature')}"[:28]
    clerp = str(node.get("clerp") or "")
    return clerp[:20] if clerp else str(node.get("feature", ""))


def long_label(node: dict, tokens: list[str]) -> str:
    """One line naming a node: what it is, where it is."""
    kind, pos = node_kind(node), int(node.get("ctx_idx", 0))
    where = f"pos {pos} {display_token(tokens[pos])!r}" if 0 <= pos < len(tokens) else f"pos {pos}"
    if kind == "feature":
        name = f"feature {node.get('feature')} @ L{node.get('layer')}"
    elif kind == "error":
        name = f"MLP error @ L{node.get('layer')}"
    else:
        name = str(node.get("clerp") or f"{kind} {node.get('feature')}")
    return f"{name}, {where}"


@dataclasses.dataclass
class GraphIndex:
    """A graph dict with its nodes by id, each node's links, and the fixed layout.

    `positions[node_id] = (x, y)` in pixels with y growing upwards (embeddings at the bottom, logits
    on top, one column per prompt position); `columns` and `rows` give the label anchors.
    """

    graph: dict
    nodes: dict[str, dict]
    incoming: dict[str, list[dict]]
    outgoing: dict[str, list[dict]]
    positions: dict[str, tuple[float, float]]
    columns: list[tuple[float, str]]  # (x, token) per prompt position
    rows: list[tuple[float, str]]  # (y, label) per layer row
    max_weight: float

    @property
    def tokens(self) -> list[str]:
        return prompt_tokens(self.graph)


def _row_of(node: dict, n_layers: int) -> int:
    kind = node_kind(node)
    if kind == "embedding":
        return 0
    if kind == "logit":
        return n_layers + 1
    try:
        return min(int(node.get("layer", 0)), n_layers - 1) + 1
    except (TypeError, ValueError):
        return n_layers + 1


def _n_layers(graph: dict) -> int:
    declared = graph.get("metadata", {}).get("n_layers")
    if isinstance(declared, int) and declared > 0:
        return declared
    layers = [int(n["layer"]) for n in graph["nodes"] if node_kind(n) in ("feature", "error")
              and str(n.get("layer", "")).isdigit()]
    return max(layers, default=0) + 1


def index_graph(graph: dict) -> GraphIndex:
    """Index and lay out `graph` (see GraphIndex)."""
    nodes = {n["node_id"]: n for n in graph["nodes"]}
    incoming: dict[str, list[dict]] = defaultdict(list)
    outgoing: dict[str, list[dict]] = defaultdict(list)
    for link in graph["links"]:
        incoming[link["target"]].append(link)
        outgoing[link["source"]].append(link)
    n_layers = _n_layers(graph)
    cells: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for node in graph["nodes"]:
        cells[_row_of(node, n_layers), int(node.get("ctx_idx", 0))].append(node)
    n_pos = max([p + 1 for _, p in cells] + [len(prompt_tokens(graph))])
    n_rows = n_layers + 2
    sub_rows = [1] * n_rows
    for (row, _), members in cells.items():
        sub_rows[row] = max(sub_rows[row], math.ceil(len(members) / PER_ROW))
    bottoms = [0.0]
    for row in range(n_rows - 1):
        bottoms.append(bottoms[-1] + sub_rows[row] * DY + ROW_GAP)
    width = PER_ROW * DX + COLUMN_GAP
    positions: dict[str, tuple[float, float]] = {}
    for (row, pos), members in cells.items():
        members.sort(key=lambda n: (node_kind(n) != "feature", _influence(n), str(n["node_id"])))
        for i, node in enumerate(members):
            across = min(len(members) - (i // PER_ROW) * PER_ROW, PER_ROW)
            left = pos * width + (width - across * DX) / 2
            positions[node["node_id"]] = (left + (i % PER_ROW + 0.5) * DX, bottoms[row] + (i // PER_ROW) * DY)
    tokens = prompt_tokens(graph)
    columns = [(pos * width + width / 2, tokens[pos] if pos < len(tokens) else "") for pos in range(n_pos)]
    names = ["embeddings"] + [f"L{layer}" for layer in range(n_layers)] + ["logits"]
    rows = [(bottoms[row] + (sub_rows[row] - 1) * DY / 2, names[row]) for row in range(n_rows)]
    return GraphIndex(graph, nodes, dict(incoming), dict(outgoing), positions, columns, rows,
                      max((abs(link_weight(l)) for l in graph["links"]), default=1.0) or 1.0)


def top_links(index: GraphIndex, node_id: str, k: int = 5, among: set[str] | None = None
              ) -> tuple[list[dict], list[dict]]:
    """The `k` strongest incoming and outgoing links of a node (by |weight|), optionally only those
    whose other end is in `among`."""
    def strongest(links: list[dict], end: str) -> list[dict]:
        shown = [l for l in links if among is None or l[end] in among]
        return sorted(shown, key=lambda l: -abs(link_weight(l)))[:k]

    return (strongest(index.incoming.get(node_id, []), "source"),
            strongest(index.outgoing.get(node_id, []), "target"))


def links_among(index: GraphIndex, shown: set[str]) -> list[int]:
    """Indices (in `graph["links"]`) of the links whose both ends are in `shown`."""
    return [i for i, l in enumerate(index.graph["links"]) if l["source"] in shown and l["target"] in shown]


def drawn_links(index: GraphIndex, limit: int, per_node: int) -> list[int]:
    """Indices of the links a viewer draws when the graph has too many: the `limit` strongest by |weight|,
    and each node's `per_node` strongest links, in or out (so that every node, and a subgraph of pinned
    nodes, keeps its main links); in graph order."""
    links = index.graph["links"]
    if len(links) <= limit:
        return list(range(len(links)))
    strength = [abs(link_weight(l)) for l in links]
    keep = set(heapq.nlargest(limit, range(len(links)), key=strength.__getitem__))
    ends: dict[str, list[int]] = defaultdict(list)
    for i, link in enumerate(links):
        ends[link["source"]].append(i)
        ends[link["target"]].append(i)
    for members in ends.values():
        keep.update(heapq.nlargest(per_node, members, key=strength.__getitem__))
    return sorted(keep)


def _number(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def node_facts(node: dict) -> list[tuple[str, str]]:
    """(name, value) pairs worth showing for a node: activation, influence, probability, ..."""
    facts = [("node", str(node["node_id"])), ("layer", str(node.get("layer"))),
             ("position", str(node.get("ctx_idx")))]
    if node_kind(node) == "feature":
        facts.append(("feature", str(node.get("feature"))))
    if node.get("activation") is not None:
        facts.append(("activation", _number(node.get("activation"))))
    facts.append(("influence", _number(node.get("influence"))))
    if node_kind(node) == "logit":
        facts.append(("probability", _number(node.get("token_prob"))))
        facts.append(("target", "yes" if node.get("is_target_logit") else "no"))
    return facts


def hover_lines(index: GraphIndex, node_id: str, among: set[str] | None = None, k: int = 5) -> list[str]:
    """The hover text of a node: its label, facts and its strongest links (shown ones only)."""
    node = index.nodes[node_id]
    tokens = index.tokens
    lines = [long_label(node, tokens), ",  ".join(f"{name} {value}" for name, value in node_facts(node))]
    incoming, outgoing = top_links(index, node_id, k, among)
    for title, links, end in (("from", incoming, "source"), ("to", outgoing, "target")):
        for link in links:
            other = index.nodes.get(link[end])
            name = long_label(other, tokens) if other else str(link[end])
            lines.append(f"{title} {name}: {link_weight(link):+.4g}")
    return lines

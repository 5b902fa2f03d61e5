"""The attribution-graph page, server side: pure graph functions against plain references, then the
page and its callbacks through the Flask test client (the same HTTP requests the browser sends)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dashboards.app import create_app
from dashboards.graph_data import index_graph, node_kind, pinned_subgraph, prune
from dashboards.synthetic import HOSTILE_TOKEN, synthetic_graph, write_synthetic_features
from interp.results import Result, register_result

NAME = "fact"


@register_result
@dataclasses.dataclass
class StandInGraph(Result):
    """The contract's fields and `to_graph_json()`, until circuits/graph/result.py lands."""

    kind = "attribution_graph"
    metadata: dict
    nodes: list
    links: list
    scores: dict
    qk: list

    def to_graph_json(self) -> dict:
        return {"metadata": self.metadata, "nodes": self.nodes, "links": self.links, "scores": self.scores,
                "qk": self.qk}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.nodes)

    def summary(self) -> str:
        return f"{len(self.nodes)} nodes"


@pytest.fixture(scope="module")
def transcoders(tmp_path_factory) -> dict[int, str]:
    root = tmp_path_factory.mktemp("tc")
    return {layer: str(root / f"layer-{layer:02d}") for layer in range(3)}


@pytest.fixture(scope="module")
def graph(transcoders) -> dict:
    return synthetic_graph(n_layers=3, features_per_cell=3, transcoders=transcoders)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, graph, transcoders):
    ws = tmp_path_factory.mktemp("ws")
    StandInGraph(**graph).save(ws, NAME)
    write_synthetic_features(ws, "tc1", n_features=512, n_top=4, quantiles=1, per_quantile=1, context_len=8,
                             meta={"sae_path": transcoders[1], "hook": "blocks.1.ln2.hook_normalized"})
    return ws


@pytest.fixture(scope="module")
def app(workspace):
    return create_app(workspace)


@pytest.fixture(scope="module")
def client(app):
    return app.server.test_client()


def call(app, client, key: str, values: dict[str, Any], changed: str) -> dict | None:
    """POST one callback as the browser does; {component id: {property: value}}, or None when it
    does not update (PreventUpdate)."""
    cb = app.callback_map[key]
    outputs = [{"id": o.component_id, "property": o.component_property}
               for o in (cb["output"] if isinstance(cb["output"], list) else [cb["output"]])]
    fill = lambda spec: {**spec, "value": values.get(f"{spec['id']}.{spec['property']}")}  # noqa: E731
    body = {"output": key, "outputs": outputs if isinstance(cb["output"], list) else outputs[0],
            "inputs": [fill(s) for s in cb["inputs"]], "state": [fill(s) for s in cb["state"]],
            "changedPropIds": [changed]}
    response = client.post("/_dash-update-component", json=body)
    if response.status_code == 204:
        return None
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return response.get_json()["response"]


def find(tree: Any, ident: str) -> dict | None:
    """The component with id `ident` in a JSON component tree."""
    if isinstance(tree, list):
        return next((hit for child in tree if (hit := find(child, ident)) is not None), None)
    if not isinstance(tree, dict):
        return None
    props = tree.get("props", {})
    if props.get("id") == ident:
        return tree
    return find(props.get("children"), ident)


def text(tree: Any) -> str:
    return json.dumps(tree)


def view(threshold=None, pinned=(), only=()) -> dict[str, Any]:
    return {"graph-threshold.value": threshold, "graph-pinned.data": list(pinned),
            "graph-only-pinned.value": list(only), "graph-ref.data": NAME}


def edges(response: dict) -> list[dict]:
    return [e for e in response["graph-cyto"]["elements"] if "source" in e["data"]]


def shown_nodes(response: dict) -> set[str]:
    return {e["data"]["id"] for e in response["graph-cyto"]["elements"]
            if "source" not in e["data"] and not e["data"]["id"].startswith("axis:")}


def shown_links(response: dict) -> set[tuple[str, str]]:
    return {(e["data"]["source"], e["data"]["target"]) for e in edges(response)}


def a_feature(graph: dict, layer: str) -> dict:
    """The most influential feature node of `layer` that has feature->feature links in."""
    targets = {l["target"] for l in graph["links"] if "invariant" in l}
    return min((n for n in graph["nodes"] if node_kind(n) == "feature" and n["layer"] == layer
                and n["node_id"] in targets), key=lambda n: n["influence"])


def reference_kept(graph: dict, threshold: float) -> list[str]:
    """GRAPH_CONTRACT.md's rule, written out: feature nodes with influence <= threshold, and all others."""
    return [n["node_id"] for n in graph["nodes"]
            if n["feature_type"] != "cross layer transcoder" or n["influence"] <= threshold]


# -- graph functions ------------------------------------------------------------------------------
def test_prune_keeps_influential_features_and_every_other_node(graph):
    for threshold in (0.0, 0.3, 0.6, 1.0):
        pruned = prune(graph, threshold)
        expected = reference_kept(graph, threshold)
        assert [n["node_id"] for n in pruned["nodes"]] == expected
        assert pruned["links"] == [l for l in graph["links"] if l["source"] in expected and l["target"] in expected]
    assert len(prune(graph, 0.3)["nodes"]) < len(prune(graph, 0.6)["nodes"]) < len(graph["nodes"])
    pins = [graph["nodes"][i]["node_id"] for i in (0, 9, 20, -1)]
    sub = pinned_subgraph(graph, pins)
    assert {n["node_id"] for n in sub["nodes"]} == set(pins)
    assert all(l["source"] in pins and l["target"] in pins for l in sub["links"])


def test_layout_puts_layers_up_and_positions_across(graph):
    index = index_graph(graph)

    def row(n):
        return {"embedding": -1, "logit": 99}.get(node_kind(n)) or int(n["layer"])

    nodes = graph["nodes"]
    for a in nodes:
        for b in nodes:
            (xa, ya), (xb, yb) = index.positions[a["node_id"]], index.positions[b["node_id"]]
            if row(a) < row(b):
                assert ya < yb, (a["node_id"], b["node_id"])
            if a["ctx_idx"] < b["ctx_idx"]:
                assert xa < xb, (a["node_id"], b["node_id"])
    assert len(set(index.positions.values())) == len(nodes)  # no two nodes on one spot
    assert [token for _, token in index.columns] == graph["metadata"]["prompt_tokens"]
    assert [name for _, name in index.rows] == ["embeddings", "L0", "L1", "L2", "logits"]


# -- page and callbacks ---------------------------------------------------------------------------
def test_home_lists_the_graph_and_its_page_renders(app, client, graph):
    home = call(app, client, "page.children", {"url.pathname": "/", "url.search": ""}, "url.pathname")
    assert f"/result/attribution_graph/{NAME}" in text(home)
    page = call(app, client, "page.children", {"url.pathname": f"/result/attribution_graph/{NAME}",
                                               "url.search": ""}, "url.pathname")["page"]["children"]
    cyto = find(page, "graph-cyto")
    assert cyto["namespace"] == "dash_cytoscape" and cyto["props"]["layout"]["name"] == "preset"
    ids = {e["data"]["id"] for e in cyto["props"]["elements"] if "source" not in e["data"]}
    assert {n["node_id"] for n in graph["nodes"]} < ids  # all nodes at first, plus axis labels
    assert find(page, "graph-threshold")["props"]["value"] >= max(n["influence"] for n in graph["nodes"]
                                                                    if node_kind(n) == "feature")
    assert '"type": "Graph"' in text(page) and '"type": "DataTable"' in text(page)  # logits figure, node table
    assert "message error" not in text(page) and HOSTILE_TOKEN in text(page)  # prompt token as text


def test_slider_prunes_live(app, client, graph):
    for threshold in (0.25, 0.5, 0.8):
        response = call(app, client, "..graph-cyto.elements...graph-count.children...graph-pinned-list.children..",
                        view(threshold), "graph-threshold.value")
        kept = set(reference_kept(graph, threshold))
        assert shown_nodes(response) == kept
        assert shown_links(response) == {(l["source"], l["target"]) for l in graph["links"]
                                         if l["source"] in kept and l["target"] in kept}
        assert response["graph-count"]["children"].startswith(f"showing {len(kept)} of {len(graph['nodes'])} nodes")
    shown = edges(response)
    assert {e["classes"] for e in shown} == {"pos", "neg"}
    assert all(e["classes"] == ("pos" if e["data"]["weight"] >= 0 else "neg") for e in shown)  # colour by sign
    by_size = sorted(shown, key=lambda e: abs(e["data"]["weight"]))
    assert by_size[0]["data"]["width"] < by_size[-1]["data"]["width"]  # weighted by size
    assert [e["data"]["width"] for e in by_size] == sorted(e["data"]["width"] for e in by_size)


def test_hover_shows_activation_and_top_links(app, client, graph):
    node = a_feature(graph, "1")
    response = call(app, client, "graph-hover.children", {"graph-cyto.mouseoverNodeData": {"id": node["node_id"]},
                                                          **view(1.0)}, "graph-cyto.mouseoverNodeData")
    shown = text(response)
    assert f"activation {node['activation']:.4g}" in shown
    strongest = max((l for l in graph["links"] if l["target"] == node["node_id"]), key=lambda l: abs(l["weight"]))
    assert f"{strongest['weight']:+.4g}" in shown
    assert call(app, client, "graph-hover.children", {"graph-cyto.mouseoverNodeData": {"id": "axis:pos0"},
                                                      **view(1.0)}, "graph-cyto.mouseoverNodeData") is None


def test_click_gives_the_feature_card(app, client, graph, transcoders):
    node = a_feature(graph, "1")  # layer 1 has a feature set in the workspace, matched by sae_path
    response = call(app, client, "..graph-card.children...graph-selected.data..",
                    {"graph-cyto.tapNodeData": {"id": node["node_id"]}, **view(1.0)}, "graph-cyto.tapNodeData")
    card = response["graph-card"]["children"]
    assert response["graph-selected"]["data"] == node["node_id"]
    chips = lambda ident: [c["props"]["children"] for c in find(card, ident)["props"]["children"]]  # noqa: E731
    from dashboards.components import display_token

    assert chips("card-de-embedding") == [display_token(t) for t in node["de_embedding"]]
    assert chips("card-top-logits") == [display_token(t) for t in node["top_logits"]]
    link = max((l for l in graph["links"] if l["target"] == node["node_id"] and "invariant" in l),
               key=lambda l: abs(l["weight"]))
    table = text(find(card, "card-links"))
    assert f"{link['invariant']:.4g}" in table and f"{link['dependent']:.4g}" in table
    contexts = find(card, "card-contexts")
    assert f"/features/tc1/{node['feature']}" in text(contexts) and '"className": "strip"' in text(contexts)
    other = a_feature(graph, "2")  # no feature set for layer 2's transcoder: the card says how to make one
    card2 = call(app, client, "..graph-card.children...graph-selected.data..",
                 {"graph-cyto.tapNodeData": {"id": other["node_id"]}, **view(1.0)}, "graph-cyto.tapNodeData")
    assert f"interp sae features {transcoders[2]}" in text(card2)


def test_pins_build_a_subgraph(app, client, graph):
    pinned: list[str] = []
    chosen = [a_feature(graph, "1")["node_id"], a_feature(graph, "2")["node_id"],
              next(n["node_id"] for n in graph["nodes"] if n["is_target_logit"])]
    for node_id in chosen + chosen[:1]:  # pinning twice keeps one copy
        pinned = call(app, client, "graph-pinned.data", {"graph-pin.n_clicks": 1, "graph-selected.data": node_id,
                                                         "graph-pinned.data": pinned}, "graph-pin.n_clicks")[
            "graph-pinned"]["data"]
    assert pinned == chosen
    response = call(app, client, "..graph-cyto.elements...graph-count.children...graph-pinned-list.children..",
                    view(0.0, pinned, ["only"]), "graph-only-pinned.value")
    assert shown_nodes(response) == set(chosen)
    assert shown_links(response) == {(l["source"], l["target"]) for l in pinned_subgraph(graph, chosen)["links"]}
    assert len(find(response["graph-pinned-list"]["children"], "graph-pins")["props"]["children"]) == 3
    # pinned nodes stay in the pruned view too, marked
    pruned = call(app, client, "..graph-cyto.elements...graph-count.children...graph-pinned-list.children..",
                  view(0.0, pinned), "graph-threshold.value")
    assert set(chosen) <= shown_nodes(pruned)
    assert all("pinned" in e["classes"] for e in pruned["graph-cyto"]["elements"] if e["data"]["id"] in chosen)
    unpinned = call(app, client, "graph-pinned.data", {"graph-unpin.n_clicks": 1, "graph-selected.data": chosen[0],
                                                       "graph-pinned.data": pinned}, "graph-unpin.n_clicks")
    assert unpinned["graph-pinned"]["data"] == chosen[1:]
    cleared = call(app, client, "graph-pinned.data", {"graph-clear.n_clicks": 1, "graph-pinned.data": pinned},
                   "graph-clear.n_clicks")
    assert cleared["graph-pinned"]["data"] == []


def test_downloads_graph_json_and_offline_html(app, client, workspace):
    saved = Result.read(workspace / "attribution_graph" / NAME)
    got = call(app, client, "graph-download.data", {"graph-dl-json.n_clicks": 1, **view(0.5)},
               "graph-dl-json.n_clicks")["graph-download"]["data"]
    assert got["filename"] == f"{NAME}.json" and json.loads(got["content"]) == saved.to_graph_json()
    page = call(app, client, "graph-download.data", {"graph-dl-html.n_clicks": 1, **view(0.5)},
                "graph-dl-html.n_clicks")["graph-download"]["data"]
    html = page["content"]
    assert page["filename"] == f"{NAME}-graph.html" and html.lower().startswith("<!doctype html>")
    assert len(html) > 3_000_000 and not re.search(r"""src=["']?(https?:)?//""", html)  # plotly.js inlined
    assert HOSTILE_TOKEN not in html and "&lt;script&gt;window.__pwned=1" in html  # the token, escaped
    figure = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", html, re.S).group(1))
    markers = {t["name"]: len(t["x"]) for t in figure if t.get("mode") == "markers+text"}
    assert sum(markers.values()) == len(reference_kept(saved.to_graph_json(), 0.5))  # the pruned view, as shown


def test_cytoscape_scripts_are_served_locally(client):
    shell = client.get("/").get_data(as_text=True)
    srcs = re.findall(r'<script src="([^"]+)"', shell)
    bundle = [s for s in srcs if "dash_cytoscape" in s]
    assert bundle and all(s.startswith("/") for s in srcs), srcs
    assert client.get(bundle[0]).status_code == 200


# -- in Chromium ----------------------------------------------------------------------------------
from test_dashboard_browser import browser, page, shot, visit  # noqa: E402,F401  (fixtures: offline, no errors)

from dashboards.app import Server  # noqa: E402

NODE_XY = """([id]) => { const el = document.getElementById('graph-cyto'); const cy = el._cyreg.cy;
  const box = el.getBoundingClientRect(); const p = cy.getElementById(id).renderedPosition();
  return [box.left + p.x, box.top + p.y]; }"""


@pytest.fixture(scope="module")
def server(app):
    with Server(app, port=0) as s:
        yield s


@pytest.mark.browser
def test_graph_page_in_chromium_click_a_node_see_its_card(page, server, graph):
    visit(page, server, f"/result/attribution_graph/{NAME}", "#graph-cyto canvas")
    page.wait_for_function("document.getElementById('graph-count')?.textContent.startsWith('showing')")
    assert page.locator("#graph-facts").count() == 1 and page.get_by_text(HOSTILE_TOKEN).count() >= 1
    node = a_feature(graph, "1")
    page.wait_for_function(f"document.getElementById('graph-cyto')._cyreg?.cy?.getElementById('{node['node_id']}')"
                           ".length == 1")
    x, y = page.evaluate(NODE_XY, [node["node_id"]])
    page.mouse.move(x, y)
    page.wait_for_function(f"document.getElementById('graph-hover')?.textContent.includes('node {node['node_id']},')")
    page.mouse.click(x, y)
    page.wait_for_selector("#card-title")
    assert page.locator("#card-title").inner_text().startswith(f"feature {node['feature']} @ L1")
    assert page.locator("#card-de-embedding .chip").count() == len(node["de_embedding"])
    assert page.locator("#card-contexts .strip").count() >= 1
    shot(page, "graph_card")
    page.click("#graph-pin")
    page.wait_for_selector("#graph-pins li")
    page.check("#graph-only-pinned input")
    page.wait_for_function("document.getElementById('graph-count')?.textContent.startsWith('showing 1 of')")
    page.wait_for_function("document.getElementById('graph-cyto')._cyreg.cy.nodes(':visible').not('.axis')"
                           ".length == 1")
    with page.expect_download() as info:
        page.click("#graph-dl-json")
    assert json.loads(Path(info.value.path()).read_text()) == graph
    shot(page, "graph_pinned")

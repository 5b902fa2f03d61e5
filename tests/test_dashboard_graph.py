"""The attribution-graph page: pure graph functions against plain references; the page and its callbacks
through the Flask test client (the same HTTP requests the browser sends), on a synthetic graph and on one
built from a trained tiny transcoder set; then in headless Chromium (marked `browser`; offline, no markup
run): hover, click for the card, prune by the slider, pin, download, and the offline HTML opened alone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from circuits.graph.result import AttributionGraph
from dashboards.app import create_app
from dashboards.graph_data import index_graph, kept_ids, links_among, node_kind
from dashboards.synthetic import HOSTILE_TOKEN, synthetic_graph, write_synthetic_features
from interp.results import Result

NAME = "fact"


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
    AttributionGraph(**graph).save(ws, NAME)
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


def page_of(app, client, name: str = NAME) -> list:
    """The children of a graph's page, as the route callback sends them."""
    return call(app, client, "page.children", {"url.pathname": f"/result/attribution_graph/{name}", "url.search": ""},
                "url.pathname")["page"]["children"]


def hidden_by(rules: list[dict]) -> list[str]:
    """The selectors of the rules that hide elements."""
    return [r["selector"] for r in rules if r["style"].get("display") == "none"]


def shown_again(rules: list[dict]) -> list[str]:
    """The node ids that rules show again (the pinned ones): `node[id = "..."]` with display element."""
    return [json.loads(r["selector"][len("node[id = "):-1]) for r in rules if r["style"].get("display") == "element"]


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
def test_threshold_keeps_influential_features_and_every_other_node(graph):
    index = index_graph(graph)
    for threshold in (0.0, 0.3, 0.6, 1.0):
        expected = reference_kept(graph, threshold)
        assert kept_ids(graph, threshold) == set(expected)
        assert links_among(index, set(expected)) == [i for i, l in enumerate(graph["links"])
                                                     if l["source"] in expected and l["target"] in expected]
    assert len(kept_ids(graph, 0.3)) < len(kept_ids(graph, 0.6)) < len(graph["nodes"])


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
UPDATE = "..graph-cyto.stylesheet...graph-count.children...graph-pinned-list.children.."


def test_home_lists_the_graph_and_its_page_renders(app, client, graph):
    home = call(app, client, "page.children", {"url.pathname": "/", "url.search": ""}, "url.pathname")
    assert f"/result/attribution_graph/{NAME}" in text(home)
    page = page_of(app, client)
    cyto = find(page, "graph-cyto")
    assert cyto["namespace"] == "dash_cytoscape" and cyto["props"]["layout"]["name"] == "preset"
    nodes = {e["data"]["id"]: e for e in cyto["props"]["elements"] if "source" not in e["data"]}
    assert {n["node_id"] for n in graph["nodes"]} < set(nodes)  # every node, plus the axis labels
    for node in graph["nodes"]:  # what the slider's rule reads
        assert nodes[node["node_id"]]["data"]["influence"] == node["influence"]
        assert node_kind(node) in nodes[node["node_id"]]["classes"].split()
    links = [e for e in cyto["props"]["elements"] if "source" in e["data"]]
    assert [(e["data"]["source"], e["data"]["target"]) for e in links] == [(l["source"], l["target"])
                                                                           for l in graph["links"]]
    assert {e["classes"] for e in links} == {"pos", "neg"}
    assert all(e["classes"] == ("pos" if e["data"]["weight"] >= 0 else "neg") for e in links)  # colour by sign
    by_size = sorted(links, key=lambda e: abs(e["data"]["weight"]))  # weighted by size
    assert by_size[0]["data"]["width"] < by_size[-1]["data"]["width"]
    assert [e["data"]["width"] for e in by_size] == sorted(e["data"]["width"] for e in by_size)
    assert find(page, "graph-threshold")["props"]["value"] >= max(n["influence"] for n in graph["nodes"]
                                                                    if node_kind(n) == "feature")
    assert find(page, "graph-count")["props"]["children"] == (f"showing {len(graph['nodes'])} of "
                                                              f"{len(graph['nodes'])} nodes and {len(links)} of "
                                                              f"{len(links)} links")
    assert '"type": "Graph"' in text(page) and '"type": "DataTable"' in text(page)  # logits figure, node table
    assert "message error" not in text(page) and HOSTILE_TOKEN in text(page)  # prompt token as text


def test_slider_prunes_live(app, client, graph):
    for threshold in (0.25, 0.5, 0.8):
        response = call(app, client, UPDATE, view(threshold), "graph-threshold.value")
        rules = response["graph-cyto"]["stylesheet"]
        assert hidden_by(rules) == [f"node.feature[influence > {threshold}]"] and not shown_again(rules)
        kept = set(reference_kept(graph, threshold))
        among = [l for l in graph["links"] if l["source"] in kept and l["target"] in kept]
        assert response["graph-count"]["children"] == (f"showing {len(kept)} of {len(graph['nodes'])} nodes and "
                                                       f"{len(among)} of {len(graph['links'])} links")
    assert len(hidden_by(call(app, client, UPDATE, view(None), "graph-threshold.value")["graph-cyto"]
                         ["stylesheet"])) == 0


def test_the_viewer_draws_the_strongest_links_and_each_nodes_own(graph):
    from dashboards.graph_data import drawn_links

    index = index_graph(graph)
    assert drawn_links(index, len(graph["links"]), 2) == list(range(len(graph["links"])))
    strength = [abs(l["weight"]) for l in graph["links"]]
    drawn = drawn_links(index, 10, 2)
    expected = set(sorted(range(len(strength)), key=lambda i: -strength[i])[:10])
    for node in graph["nodes"]:
        own = [i for i, l in enumerate(graph["links"]) if node["node_id"] in (l["source"], l["target"])]
        expected |= set(sorted(own, key=lambda i: -strength[i])[:2])
    assert drawn == sorted(expected) and len(drawn) < len(graph["links"])


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
    response = call(app, client, UPDATE, view(0.0, pinned, ["only"]), "graph-only-pinned.value")
    rules = response["graph-cyto"]["stylesheet"]
    assert hidden_by(rules) == ["node.gnode"] and shown_again(rules) == chosen  # every node hidden, pins shown
    among = [l for l in graph["links"] if l["source"] in chosen and l["target"] in chosen]
    assert response["graph-count"]["children"] == (f"showing 3 of {len(graph['nodes'])} nodes and {len(among)} of "
                                                   f"{len(graph['links'])} links (pinned only)")
    assert len(find(response["graph-pinned-list"]["children"], "graph-pins")["props"]["children"]) == 3
    pruned = call(app, client, UPDATE, view(0.0, pinned), "graph-threshold.value")  # pins stay in a pruned view
    assert hidden_by(pruned["graph-cyto"]["stylesheet"]) == ["node.feature[influence > 0.0]"]
    assert shown_again(pruned["graph-cyto"]["stylesheet"]) == chosen
    kept = set(reference_kept(graph, 0.0)) | set(chosen)
    assert pruned["graph-count"]["children"].startswith(f"showing {len(kept)} ")
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


def test_a_real_graph_page_matches_its_feature_statistics(tmp_path, tiny_llama):
    """A graph built by `interp graph`'s API on a trained tiny set: every page part renders, and a feature's
    card finds the statistics `interp sae features` wrote for its transcoder (by the recorded folder)."""
    from transcoder_sets import train_tiny_set

    from circuits.graph import GraphConfig
    from circuits.graph import graph as build_graph
    from interp.sae import load_sae
    from interp.sae.features import feature_statistics

    folder = train_tiny_set(tiny_llama, tmp_path / "set", [0, 1], tokens=4096)
    ws = tmp_path / "ws"
    every_node = GraphConfig(node_threshold=1.0)  # a random model's features matter little: keep them all
    built = build_graph(tiny_llama, "The cat <b>sat", folder, every_node)
    built.save(ws, "real")
    feature_statistics(tiny_llama, load_sae(folder / "layer-01"), ws, path=folder / "layer-01", name="tc-layer-1",
                       tokens=1024, n_top=3, quantiles=1, per_quantile=1, progress=False)
    real = create_app(ws)
    client = real.server.test_client()
    page = page_of(real, client, "real")
    assert "message error" not in text(page) and find(page, "graph-cyto") is not None
    layer1 = [n for n in built.nodes if node_kind(n) == "feature" and str(n["layer"]) == "1"]
    assert layer1, "the tiny set found no layer-1 feature on this prompt"
    values = {"graph-cyto.tapNodeData": {"id": layer1[0]["node_id"]}, "graph-threshold.value": 1.0,
              "graph-pinned.data": [], "graph-only-pinned.value": [], "graph-ref.data": "real"}
    card = call(real, client, "..graph-card.children...graph-selected.data..", values, "graph-cyto.tapNodeData")
    contexts = text(find(card["graph-card"]["children"], "card-contexts"))
    assert f"/features/tc-layer-1/{layer1[0]['feature']}" in contexts
    assert len(find(card["graph-card"]["children"], "card-de-embedding")["props"]["children"]) == len(
        layer1[0]["de_embedding"]) > 0


# -- in Chromium ----------------------------------------------------------------------------------
from test_dashboard_browser import browser, page, shot, visit  # noqa: E402,F401  (fixtures: offline, no errors)

from dashboards.app import Server  # noqa: E402

VISIBLE = "document.getElementById('graph-cyto')._cyreg.cy.nodes(':visible').not('.axis').map(n => n.id())"
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

    page.focus("#graph-threshold [role=slider]")  # the slider, by keyboard: down to 0, then 40 steps up
    page.keyboard.press("Home")
    for _ in range(40):
        page.keyboard.press("ArrowRight")
    threshold = float(page.get_attribute("#graph-threshold [role=slider]", "aria-valuenow"))
    kept = set(reference_kept(graph, threshold))
    assert 0 < threshold < 1 and len(kept) < len(graph["nodes"])
    page.wait_for_function(f"document.getElementById('graph-count')?.textContent.startsWith('showing {len(kept)} of')")
    page.wait_for_function(f"{VISIBLE}.length == {len(kept)}")
    assert set(page.evaluate(VISIBLE)) == kept  # what cytoscape draws is the contract's pruned graph
    shot(page, "graph_pruned")

    page.click("#graph-pin")
    page.wait_for_selector("#graph-pins li")
    page.check("#graph-only-pinned input")
    page.wait_for_function("document.getElementById('graph-count')?.textContent.startsWith('showing 1 of')")
    page.wait_for_function(f"{VISIBLE}.length == 1")
    assert page.evaluate(VISIBLE) == [node["node_id"]]
    with page.expect_download() as info:
        page.click("#graph-dl-json")
    assert json.loads(Path(info.value.path()).read_text()) == AttributionGraph(**graph).to_graph_json()
    shot(page, "graph_pinned")


@pytest.mark.browser
def test_the_offline_html_opens_without_network(page, server, browser, graph, tmp_path):
    visit(page, server, f"/result/attribution_graph/{NAME}", "#graph-cyto canvas")
    with page.expect_download() as info:
        page.click("#graph-dl-html")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    offline = browser.new_page()
    requests: list[str] = []
    offline.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    offline.on("request", lambda r: requests.append(r.url))
    offline.goto(saved.as_uri())
    offline.wait_for_selector(".js-plotly-plot .scatterlayer", timeout=60_000)
    n_markers = offline.evaluate("document.querySelector('.js-plotly-plot').data"
                                 ".filter(t => t.mode === 'markers+text').reduce((n, t) => n + t.x.length, 0)")
    assert n_markers == len(graph["nodes"])  # the slider starts at its top: every node
    assert offline.evaluate("window.__pwned") is None
    assert requests == [saved.as_uri()], requests
    offline.close()

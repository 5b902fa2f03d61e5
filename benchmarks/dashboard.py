"""Dashboard time to first render, measured in headless Chromium.

    .venv/bin/python benchmarks/dashboard.py [--model smollm2-135m] [--features 16384] [--tokens 256]

Writes a synthetic 16k-feature SAE in the FEATURES_SCHEMA.md layout into a temporary workspace, serves
the dashboard, and times (navigation or click -> content drawn): the home page (reference), the
feature list (cold: first read of the files; warm), a feature page (cold and warm), a synthetic
attribution graph's page (30 layers x 10 tokens: first render, then a node's card), and the attention
browser on a 256-token prompt on the live model (all heads of layer 0, another layer, one head, the
client-side hover; then the model view's first render of every layer x head, a click on a thumbnail
that opens it in the head view, and the neuron view of that head). Also reports, per step, the seconds
the server spent in callbacks and the bytes of callback responses (what the browser receives). Prints a
table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PLOT = "document.querySelector('.figure .js-plotly-plot')"  # the head view's (the first on the attention page)
MODEL_PLOT = "document.querySelector('#attn-model-box .js-plotly-plot')"
# pixel position, inside the plot area, of head x, layer y of the model view
THUMBNAIL_XY = f"([x, y]) => {{ const l = {MODEL_PLOT}._fullLayout; return [l.xaxis.c2p(x), l.yaxis.c2p(y)]; }}"
GRAPH_LAYERS, GRAPH_TOKENS = 30, 10  # the default model's depth, a 10-token prompt


def prompt_of(model, n_tokens: int) -> str:
    """About `n_tokens` tokens of built-in text (the corpus, else a repeated sentence)."""
    try:
        from interp.corpus import load_corpus

        text = " ".join(doc for _, doc in zip(range(50), load_corpus()))
    except Exception:  # the corpus is optional here: any text of that length will do
        text = "The quick brown fox jumps over the lazy dog. " * 200
    ids = model.to_tokens(text, prepend_bos=False)[0, :n_tokens]
    return model.tokenizer.decode(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--features", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for any one step")
    args = parser.parse_args()
    torch.set_num_threads(2)

    import flask
    from playwright.sync_api import sync_playwright

    from circuits.graph.result import AttributionGraph
    from dashboards.app import Server, create_app
    from dashboards.synthetic import synthetic_graph, write_synthetic_features
    from interp.lens import logit_lens

    rows: list[tuple[str, float, float, int]] = []
    ws = Path(tempfile.mkdtemp(prefix="interp-dash-bench-"))
    t = time.perf_counter()
    write_synthetic_features(ws, "sae16k", n_features=args.features, hostile=False)
    graph = synthetic_graph(n_layers=GRAPH_LAYERS, tokens=[f" w{i}" for i in range(GRAPH_TOKENS)], features_per_cell=4)
    AttributionGraph(**graph).save(ws, "graph")
    top_feature = min((n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"),
                      key=lambda n: n["influence"])["node_id"]
    files_s = time.perf_counter() - t
    app = create_app(ws, model_spec=args.model)
    t = time.perf_counter()
    model = app.interp_context.model()
    load_s = time.perf_counter() - t
    prompt = prompt_of(model, args.tokens)
    n_tokens = model.to_tokens(prompt, prepend_bos=False).shape[1]
    logit_lens(model, "The capital of France is").save(ws, "lens")

    server_s = [0.0]

    @app.server.before_request
    def _start() -> None:
        flask.g.started = time.perf_counter()

    @app.server.after_request
    def _stop(response):
        if flask.request.path.endswith("_dash-update-component"):
            server_s[0] += time.perf_counter() - flask.g.started
        return response

    with Server(app, port=0) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(args.timeout * 1000)
        received = [0]

        def count(response) -> None:
            if "_dash-update-component" in response.url:
                received[0] += int(response.headers.get("content-length", 0))

        page.on("response", count)

        def timed(name: str, action, ready: str) -> None:
            received[0], server_s[0] = 0, 0.0
            start = time.perf_counter()
            action()
            page.wait_for_function(ready)
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            rows.append((name, time.perf_counter() - start, server_s[0], received[0]))
            print(f"{name}: {rows[-1][1]:.3f} s", file=sys.stderr)

        url = server.url.rstrip("/")
        exists = "!!document.querySelector('{}')".format
        timed("home page (reference)", lambda: page.goto(url + "/"), exists("#results"))
        timed("feature list, cold", lambda: page.goto(url + "/features/sae16k"), exists("#feat-table"))
        timed("feature list, warm", lambda: page.goto(url + "/features/sae16k?sort=max_act"), exists("#feat-table"))
        timed("feature list, next page", lambda: page.click("#feat-next"),
              "document.getElementById('feat-page-label')?.textContent.startsWith('page 2')")
        def search() -> None:
            page.fill("#feat-search", "ka")
            page.press("#feat-search", "Enter")

        timed("feature list, search 'ka'", search,
              f"location.search.includes('q=ka') && !!document.querySelector('#feat-table') && !document."
              f"getElementById('feat-page-label')?.textContent.includes('({args.features} features)')")
        for label, feature in (("cold", args.features * 3 // 4), ("warm", args.features // 3)):
            timed(f"feature page, {label}", lambda f=feature: page.goto(f"{url}/features/sae16k/{f}"),
                  exists("#feat-contexts"))

        graph_ready = ("document.getElementById('graph-cyto')?._cyreg?.cy?.nodes().length > 0 && "
                       "!!document.querySelector('#graph-cyto canvas')")
        name = f"graph page ({len(graph['nodes'])} nodes, {len(graph['links'])} links)"
        timed(name, lambda: page.goto(url + "/result/attribution_graph/graph"), graph_ready)
        tap = f"() => {{ document.getElementById('graph-cyto')._cyreg.cy.getElementById('{top_feature}').emit('tap'); }}"
        timed("graph page, click a node (card)", lambda: page.evaluate(tap), exists("#card-title"))
        others = sum(n["feature_type"] != "cross layer transcoder" for n in graph["nodes"])

        def prune_all() -> None:
            page.focus("#graph-threshold [role=slider]")
            page.keyboard.press("Home")

        timed("graph page, slider to 0 (prune every feature)", prune_all,
              f"document.getElementById('graph-count')?.textContent.startsWith('showing {others} of')")

        page.goto(url + "/attention")
        page.wait_for_selector("#attn-prompt")
        page.fill("#attn-prompt", prompt)
        heads = model.cfg.n_heads
        timed(f"attention {n_tokens} tok, layer 0 all heads", lambda: page.click("#attn-run"),
              f"document.querySelectorAll('#attn-strip .tok').length == {n_tokens} && "
              f"{PLOT}?._fullData?.length == {heads}")
        last = model.cfg.n_layers - 1

        def to_last_layer() -> None:
            page.focus("#attn-layer [role=slider]")
            page.keyboard.press("End")

        timed(f"attention, layer {last} all heads", to_last_layer,
              f"{PLOT}?.layout?.title?.text?.startsWith('layer {last},')")
        timed(f"attention, layer {last} head 3", lambda: page.check("#attn-head input[value='3']"),
              f"{PLOT}?._fullData?.length == 1 && {PLOT}.layout.title.text.startsWith('layer {last} head 3')")
        timed("attention, hover a token (client side)",
              lambda: page.hover(f"#attn-strip .tok[data-i='{n_tokens - 1}']"),
              f"document.getElementById('attn-hover-info')?.textContent.includes('token {n_tokens - 1}')")
        timed(f"model view {n_tokens} tok, {model.cfg.n_layers}x{heads} heads, first render",
              lambda: page.check("#attn-view input[value='model']"),
              f"{MODEL_PLOT}?._fullData?.length == 2 && !!document.querySelector('#attn-model-box image')")
        layer, head = model.cfg.n_layers * 2 // 3, heads - 2

        def click_thumbnail() -> None:
            x, y = page.evaluate(THUMBNAIL_XY, [head, layer])
            page.locator("#attn-model-box .nsewdrag[data-subplot='xy']").click(position={"x": x, "y": y})

        timed(f"model view, click L{layer} H{head} (opens head view)", click_thumbnail,
              f"{PLOT}?._fullData?.length == 1 && {PLOT}.layout.title.text.startsWith('layer {layer} head {head}')")
        timed(f"neuron view, L{layer} H{head}, last token", lambda: page.check("#attn-view input[value='neuron']"),
              "document.querySelector('#attn-neuron-box .js-plotly-plot')?._fullData?.length == 4")
        browser.close()

    reference = rows[0][1]
    print(f"model {args.model}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads; prompt {n_tokens} tokens; "
          f"{args.features} synthetic features (files written in {files_s:.1f} s; model load {load_s:.1f} s)",
          file=sys.stderr)
    print(f"{'step':44} {'seconds':>8} {'x home':>7} {'server s':>9} {'KB recv':>8}")
    for name, seconds, on_server, size in rows:
        print(f"{name:44} {seconds:8.3f} {seconds / reference:7.1f} {on_server:9.3f} {size / 1024:8.1f}")
    print(json.dumps({"model": args.model, "tokens": n_tokens, "features": args.features,
                      "files_s": round(files_s, 2), "model_load_s": round(load_s, 2),
                      "steps": [{"step": n, "seconds": round(s, 3), "ratio_to_home": round(s / reference, 2),
                                 "server_seconds": round(srv, 3), "bytes": b} for n, s, srv, b in rows]}))


if __name__ == "__main__":
    main()

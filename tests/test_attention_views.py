"""bertviz's model and neuron views (dashboards/attention_model.py, attention_neuron.py): the arithmetic against
the model's own hooks and a plain reference, the thumbnails against a loop, the page's callbacks, and Chromium."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from dashboards.app import Server, create_app
from dashboards.attention_model import PAD, ModelView, _BLUES, model_view, png_data_uri
from dashboards.attention_neuron import NeuronView, layer_qk, neuron_view
from interp.errors import InterpError
from interp.tokens import encode
from test_dashboard_graph import call

PROMPT = "The cat sat on the mat because it was warm."


def array(value) -> np.ndarray:
    """A figure's array as JSON carries it: a list, or plotly's base64 typed array {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in str(value.get("shape", len(flat))).split(",")])
    return np.asarray(value)


# -- neuron view: the arithmetic --------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_neuron_view_product_sums_to_the_models_scores(spec, request):
    model = request.getfixturevalue(spec.replace("-", "_"))
    tokens = encode(model, PROMPT)
    _, cache = model.run_with_cache(tokens)  # a full pass, every hook: the reference
    rotary = model.cfg.positional_embedding_type == "rotary"
    d_head, n_heads = model.cfg.d_head, model.cfg.n_heads
    for layer in range(model.cfg.n_layers):
        qk = layer_qk(model, tokens, layer)
        q_ref = cache[f"blocks.{layer}.attn.hook_{'rot_' if rotary else ''}q"][0]
        k_ref = cache[f"blocks.{layer}.attn.hook_{'rot_' if rotary else ''}k"][0]
        k_ref = k_ref.repeat_interleave(n_heads // k_ref.shape[1], dim=1)  # GQA: each key head serves a group
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][0]
        weights = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        for query, key in ((tokens.shape[1] - 1, 0), (tokens.shape[1] - 1, 7), (12, 12), (5, 2)):
            view = NeuronView.select(qk, [""] * tokens.shape[1], query, key)
            assert view.rotary == rotary
            np.testing.assert_allclose(view.q, q_ref[query].numpy(), atol=1e-6)
            np.testing.assert_allclose(view.k, k_ref[key].numpy(), atol=1e-6)
            # sum(q * k) / sqrt(d_head) is the model's score at that cell, head by head
            np.testing.assert_allclose(view.product.sum(-1) / np.sqrt(d_head), scores[:, query, key].numpy(),
                                       atol=1e-5)
            frame = view.to_frame()
            np.testing.assert_allclose(frame.score_from_product, frame.model_score, atol=1e-5)
            # the softmax row: the model's pattern, and the softmax of the q . k_j / sqrt(d) of keys 0..query
            np.testing.assert_allclose(view.weights, weights[:, query, :query + 1].numpy(), atol=1e-6)
            row = torch.einsum("hd,jhd->hj", q_ref[query], k_ref[:query + 1]) / np.sqrt(d_head)
            np.testing.assert_allclose(view.weights, row.softmax(-1).numpy(), atol=1e-5)
            assert (frame.weight == view.weights[:, key]).all()
        top = int(weights[0, 9, :10].argmax())  # the key head 0 of query 9 attends to most has rank 1
        assert NeuronView.select(qk, [""] * tokens.shape[1], 9, top).to_frame().rank_of_key[0] == 1


def test_neuron_view_on_llama_shows_rotated_vectors_and_shared_key_heads(tiny_llama):
    view = neuron_view(tiny_llama, PROMPT, layer=1, query=-1, key=3)
    assert view.kv_head.tolist() == [0, 0, 1, 1]  # 4 query heads, 2 key heads
    np.testing.assert_array_equal(view.k[0], view.k[1])
    _, cache = tiny_llama.run_with_cache(encode(tiny_llama, PROMPT), names_filter=["blocks.1.attn.hook_q"])
    assert not np.allclose(view.q, cache["blocks.1.attn.hook_q"][0, -1].numpy(), atol=1e-3)  # after RoPE
    assert view.query == len(view.tokens) - 1 and view.figure().data[3].z.shape == (4, view.query + 1)
    assert view.figure(heads=[2]).data[0].z.shape == (1, tiny_llama.cfg.d_head)


def test_neuron_view_rejects_bad_positions(tiny_gpt2):
    for query, key, words in ((3, 5, "comes after query token 3"), (99, 0, "query token 99 is out of range"),
                              (-1, -99, "key token -99 is out of range")):
        with pytest.raises(InterpError, match=words) as info:
            neuron_view(tiny_gpt2, "Hello there", layer=0, query=query, key=key)
        assert "\n" not in str(info.value)
    with pytest.raises(InterpError, match="out of range"):
        neuron_view(tiny_gpt2, "Hello there", layer=3)


# -- model view: thumbnails, mosaic, figure ------------------------------------------------------------
def block_max(p: np.ndarray, side: int) -> np.ndarray:
    """Plain reference: [heads, T, T] -> [heads, side, side] maxima of equal blocks (T divisible by side)."""
    b = p.shape[-1] // side
    out = np.zeros((p.shape[0], side, side), np.float32)
    for h in range(p.shape[0]):
        for i in range(side):
            for j in range(side):
                out[h, i, j] = p[h, i * b:(i + 1) * b, j * b:(j + 1) * b].max()
    return out


def random_patterns(layers: int, heads: int, n: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, n, n, generator=g) * 3
    return scores.masked_fill(torch.ones(n, n).triu(1).bool(), -torch.inf).softmax(-1).numpy()


def test_model_view_thumbnails_are_block_maxima_shaded_per_head():
    p = random_patterns(2, 3, 64)
    view = ModelView.of(p, size=16)
    assert view.thumbnails.shape == (2, 3, 16, 16) and view.thumbnails.dtype == np.uint8 and view.n_tokens == 64
    for layer in range(2):
        ref = block_max(p[layer], 16)
        peak = p[layer, :, 1:].reshape(3, -1).max(1)  # query 0 can only attend to itself: not the peak
        assert (ref.reshape(3, -1).max(1) == 1).all()
        np.testing.assert_allclose(view.peak[layer], peak, rtol=1e-6)
        shade = 255 * np.sqrt(np.clip(ref / peak[:, None, None], 0, 1))
        np.testing.assert_allclose(view.thumbnails[layer], shade, atol=0.5 + 1e-3)
        np.testing.assert_allclose(view.first[layer], p[layer, :, 1:, 0].mean(-1), rtol=1e-6)
    hidden = ModelView.of(p, size=16, show_first=False)  # 63 tokens: uneven blocks, first row/column gone
    assert hidden.thumbnails.shape == (2, 3, 16, 16) and not hidden.show_first
    np.testing.assert_allclose(hidden.peak, p[:, :, 1:, 1:].reshape(2, 3, -1).max(-1), rtol=1e-6)
    assert ModelView.of(p[:, :, :5, :5], size=16).thumbnails.shape == (2, 3, 5, 5)  # short prompts: 1 px a cell
    assert ModelView.of(p[:, :, :1, :1], show_first=False).thumbnails.shape == (2, 3, 1, 1)


def decode_png(uri: str) -> np.ndarray:
    """The RGB pixels of an unfiltered 8-bit RGB PNG data URI (what png_data_uri writes)."""
    import base64
    import struct

    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT" and zlib.crc32(data[37:41 + idat_len]) == struct.unpack(">I", data[41 + idat_len:45 + idat_len])[0]
    rows = np.frombuffer(zlib.decompress(data[41:41 + idat_len]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_model_view_is_one_png_of_every_head_at_its_grid_cell():
    view = ModelView.of(random_patterns(30, 9, 256, seed=1))  # the default model's geometry at 256 tokens
    assert view.shape == (30, 9) and view.thumbnails.shape == (30, 9, 32, 32)
    pixels = decode_png(png_data_uri(view.mosaic()))
    pitch = 32 + 2 * PAD
    assert pixels.shape == (30 * pitch, 9 * pitch, 3)
    for layer, head in ((0, 0), (17, 4), (29, 8)):
        cell = pixels[layer * pitch + PAD:layer * pitch + PAD + 32, head * pitch + PAD:head * pitch + PAD + 32]
        np.testing.assert_array_equal(cell, _BLUES[view.thumbnails[layer, head]])
        assert (pixels[layer * pitch, head * pitch:(head + 1) * pitch] == 255).all()  # white gutter
    fig = view.figure()
    image, grid = fig.data
    assert image.type == "image" and image.source.startswith("data:image/png;base64,")
    assert grid.type == "heatmap" and np.asarray(grid.z).shape == (30, 9)
    assert len(fig.to_json()) < 1_500_000  # random patterns compress badly; 270 uint8 heatmaps would be 17.7 MB


def test_model_view_of_a_model_matches_its_saved_patterns(tiny_llama):
    from dashboards.attention import attention_patterns

    live = model_view(tiny_llama, PROMPT, show_first=False)
    saved = ModelView.of(attention_patterns(tiny_llama, PROMPT).pattern.float(), show_first=False)
    assert live.shape == (3, 4) and live.n_tokens == len(PROMPT)
    np.testing.assert_allclose(live.peak, saved.peak, atol=2e-3)  # saved patterns are float16


# -- the attention page's callbacks ---------------------------------------------------------------------
MODEL_FIG = '{"index":"attention-model","type":"fig"}'
NEURON_FIG = '{"index":"attention-neuron","type":"fig"}'
HEAD_FIG = '{"index":"attention","type":"fig"}'
OPEN_HEAD = "..attn-head.value...attn-layer.value...attn-view.value.."


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(tmp_path_factory.mktemp("ws"), model_spec="tiny-llama")


@pytest.fixture(scope="module")
def client(app):
    return app.server.test_client()


def live(app, client, prompt: str = PROMPT) -> dict:
    """The attention page's source for a typed prompt, as the Run button makes it."""
    out = call(app, client, "..attn-source.data...attn-status.children...attn-prompt.value...attn-layer.max..."
                            "attn-layer.marks...attn-head.options..",
               {"attn-run.n_clicks": 1, "attn-prompt.value": prompt}, "attn-run.n_clicks")
    return out["attn-source"]["data"]


def test_model_view_callback_draws_the_grid_and_fills_the_head_views_cache(app, client):
    source = live(app, client)
    fig = call(app, client, MODEL_FIG + ".figure", {"attn-source.data": source, "attn-view.value": "model",
                                                    "attn-first.value": ["show"]}, "attn-view.value")
    image, grid = fig[MODEL_FIG]["figure"]["data"]
    assert image["type"] == "image" and grid["type"] == "heatmap" and array(grid["z"]).shape == (3, 4)
    assert image["source"].startswith("data:image/png;base64,")
    assert call(app, client, MODEL_FIG + ".figure", {"attn-source.data": source, "attn-view.value": "head"},
                "attn-view.value") is None  # hidden: nothing computed
    ctx = app.interp_context
    seeded = [key for key in ctx.cache._items if key[:1] == ("attn-live",) and key[2] == PROMPT]
    assert sorted(key[3] for key in seeded) == [0, 1, 2]  # one pass filled every layer for the head view


def test_a_click_on_a_thumbnail_opens_that_head_in_the_head_view(app, client):
    click = {"points": [{"curveNumber": 1, "x": 3, "y": 2, "z": 0.5}]}
    out = call(app, client, OPEN_HEAD, {MODEL_FIG + ".clickData": click, "attn-head.value": "all"},
               MODEL_FIG + ".clickData")
    assert out == {"attn-head": {"value": "3"}, "attn-layer": {"value": 2}, "attn-view": {"value": "head"}}
    assert call(app, client, OPEN_HEAD, {MODEL_FIG + ".clickData": {"points": [{"curveNumber": 0, "x": 3.2, "y": 1}]}},
                MODEL_FIG + ".clickData") is None
    multiples = call(app, client, OPEN_HEAD, {HEAD_FIG + ".clickData": {"points": [{"curveNumber": 2}]},
                                              "attn-head.value": "all"}, HEAD_FIG + ".clickData")
    assert multiples["attn-head"] == {"value": "2"} and "attn-view" not in multiples


def test_neuron_view_callbacks_pick_tokens_and_explain_the_score(app, client):
    source = live(app, client)
    out = call(app, client, "..attn-query.options...attn-query.value..", {"attn-source.data": source},
               "attn-source.data")
    assert out["attn-query"]["value"] == len(PROMPT) - 1 and out["attn-query"]["options"][4]["label"] == "4: c"
    keys = call(app, client, "..attn-key.options...attn-key.value..",
                {"attn-query.value": 5, "attn-key.value": None, "attn-source.data": source}, "attn-query.value")
    assert len(keys["attn-key"]["options"]) == 6 and keys["attn-key"]["value"] == 4
    picked = call(app, client, "..attn-key.options...attn-key.value..",
                  {NEURON_FIG + ".clickData": {"points": [{"curveNumber": 3, "x": "2:e", "y": "head 0 (k 0)"}]},
                   "attn-query.value": 5, "attn-key.value": 4, "attn-source.data": source}, NEURON_FIG + ".clickData")
    assert picked == {"attn-key": {"value": 2}}
    values = {"attn-source.data": source, "attn-view.value": "neuron", "attn-layer.value": 1, "attn-head.value": "all",
              "attn-query.value": 5, "attn-key.value": 2}
    key = f"..{NEURON_FIG}.figure...attn-neuron-table.children...attn-neuron-status.children.."
    out = call(app, client, key, values, "attn-key.value")
    assert [t["type"] for t in out[NEURON_FIG]["figure"]["data"]] == ["heatmap"] * 4
    status = out["attn-neuron-status"]["children"]
    assert "rotary" in status and "4 query heads share 2 key heads" in status
    rows = out["attn-neuron-table"]["children"]["props"]["data"]
    expected = neuron_view(app.interp_context.model(), PROMPT, layer=1, query=5, key=2).to_frame()
    assert [r["kv_head"] for r in rows] == [0, 0, 1, 1]
    np.testing.assert_allclose([r["model_score"] for r in rows], expected.model_score, rtol=1e-4)
    one = call(app, client, key, {**values, "attn-head.value": "1"}, "attn-head.value")
    assert len(one[NEURON_FIG]["figure"]["data"][0]["y"]) == 1
    bad = call(app, client, key, {**values, "attn-query.value": 2, "attn-key.value": 5}, "attn-key.value")
    assert "comes after query token 2" in json.dumps(bad["attn-neuron-status"])


def test_neuron_view_without_a_model_says_how_to_get_one(tmp_path, tiny_gpt2):
    from dashboards.attention import attention_patterns

    attention_patterns(tiny_gpt2, PROMPT).save(tmp_path, "cat")
    app = create_app(tmp_path)
    client = app.server.test_client()
    source = call(app, client, "..attn-source.data...attn-status.children...attn-prompt.value...attn-layer.max..."
                               "attn-layer.marks...attn-head.options..", {"attn-saved.value": "saved:cat"},
                  "attn-saved.value")["attn-source"]["data"]
    key = f"..{NEURON_FIG}.figure...attn-neuron-table.children...attn-neuron-status.children.."
    out = call(app, client, key, {"attn-source.data": source, "attn-view.value": "neuron", "attn-layer.value": 0,
                                  "attn-query.value": 3, "attn-key.value": 1}, "attn-view.value")
    assert "--model" in json.dumps(out["attn-neuron-status"])
    fig = call(app, client, MODEL_FIG + ".figure", {"attn-source.data": source, "attn-view.value": "model",
                                                    "attn-first.value": []}, "attn-view.value")
    assert array(fig[MODEL_FIG]["figure"]["data"][1]["z"]).shape == (3, 4)  # saved patterns need no model


def test_the_url_and_the_saved_results_page_open_a_view(tmp_path, tiny_gpt2):
    from dashboards.app import render
    from dashboards.attention import attention_page, attention_patterns
    from dashboards.context import Context

    def boxes(query: dict) -> dict:
        return {c.id: c.style for c in attention_page(Context(tmp_path), query) if str(getattr(c, "id", "")).endswith("-box")}

    hidden = {"display": "none"}
    assert boxes({"view": "model"}) == {"attn-head-box": hidden, "attn-model-box": None, "attn-neuron-box": hidden}
    assert boxes({"view": "<b>"}) == {"attn-head-box": None, "attn-model-box": hidden, "attn-neuron-box": hidden}
    attention_patterns(tiny_gpt2, PROMPT).save(tmp_path, "cat")
    page = json.dumps(render(Context(tmp_path), "/result/attention/cat", ""),
                      default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))
    assert "/attention?saved=cat&view=model" in page and "/attention?saved=cat&view=head" in page


# -- in Chromium -----------------------------------------------------------------------------------------
from test_dashboard_browser import browser, page, shot, visit  # noqa: E402,F401  (fixtures: offline, no errors)

MODEL_PLOT = "document.querySelector('#attn-model-box .js-plotly-plot')"
HEAD_PLOT = "document.querySelector('#attn-head-box .js-plotly-plot')"
NEURON_PLOT = "document.querySelector('#attn-neuron-box .js-plotly-plot')"
CELL_XY = """([plot, n, x, y]) => { const l = document.querySelector(plot)._fullLayout;
  const xa = l['xaxis' + n], ya = l['yaxis' + n]; return [xa.c2p(xa.d2c(x)), ya.c2p(ya.d2c(y))]; }"""


@pytest.fixture(scope="module")
def server(app):
    with Server(app, port=0) as s:
        yield s


def click_cell(page, plot: str, x, y, subplot: str = "") -> None:
    """Click subplot `subplot` ("", "2", ...) of a plotly figure at data coordinates (x, y)."""
    px, py = page.evaluate(CELL_XY, [plot, subplot, x, y])
    drag = f"{plot} .nsewdrag[data-subplot='x{subplot}y{subplot}']"
    page.locator(drag).click(position={"x": px, "y": py})


@pytest.mark.browser
def test_model_view_and_neuron_view_in_chromium(page, server, app):
    prompt = ("The quick brown fox jumps over the lazy dog. " * 6)[:256]  # 256 byte tokens on tiny-llama
    visit(page, server, "/attention")
    page.fill("#attn-prompt", prompt)
    page.click("#attn-run")
    page.wait_for_function("document.querySelectorAll('#attn-strip .tok').length == 256")
    page.check("#attn-view input[value='model']")
    page.wait_for_function(f"{MODEL_PLOT}?._fullData?.length == 2 && !!document.querySelector('#attn-model-box image')")
    assert page.evaluate(f"{MODEL_PLOT}._fullData[1].z.length") == 3
    assert page.evaluate(f"{MODEL_PLOT}._fullData[1].z[0].length") == 4
    size = page.evaluate("""() => new Promise(r => { const img = new Image();
      img.onload = () => r([img.naturalHeight, img.naturalWidth]);
      img.src = document.querySelector('#attn-model-box .js-plotly-plot').data[0].source; })""")
    assert size == [3 * (32 + 2 * PAD), 4 * (32 + 2 * PAD)]  # 3 x 4 thumbnails of 32 px in one image
    assert not page.locator("#attn-head-box").is_visible() and not page.locator("#attn-neuron-box").is_visible()
    shot(page, "attention_model_view")

    plot = "#attn-model-box .js-plotly-plot"
    click_cell(page, plot, 3, 2)
    page.wait_for_function(f"{HEAD_PLOT}?.layout?.title?.text?.startsWith('layer 2 head 3')")
    assert page.locator("#attn-view input[value='head']").is_checked()
    assert page.locator("#attn-head input[value='3']").is_checked()
    assert page.get_attribute("#attn-layer [role=slider]", "aria-valuenow") == "2"
    assert not page.locator("#attn-model-box").is_visible()

    page.check("#attn-view input[value='neuron']")
    page.wait_for_function(f"{NEURON_PLOT}?._fullData?.length == 4")
    assert page.locator("#attn-neuron-status").inner_text().count("rotary") == 1
    assert page.evaluate(f"{NEURON_PLOT}._fullData[0].z.length") == 1  # head 3 only
    page.check("#attn-head input[value='all']")
    page.wait_for_function(f"{NEURON_PLOT}?._fullData?.[0]?.z?.length == 4")
    assert page.locator("#attn-neuron-table td[data-dash-column='kv_head']").all_inner_texts() == ["0", "0", "1", "1"]
    shot(page, "attention_neuron_view")  # a click on the softmax row picks its key: test_neuron_view_callbacks_pick_tokens_and_explain_the_score

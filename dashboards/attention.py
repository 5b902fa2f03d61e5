"""Attention browser: patterns of a typed prompt (live, on the loaded model) or of saved ones.

The server computes one layer at a time, on demand (`stop_at_layer` ends the forward pass there)
and caches it, so 30 layers x 9 heads x 256 tokens never travel at once. The browser gets the
selected layer as small uint8 heatmaps (an overview, click a head to open it), or one head at full
precision, plus one [T, T] pattern as base64 uint16 that `assets/attention.js` uses to shade tokens
on hover without a round trip. Saved patterns (`AttentionResult`) are read layer by layer from the
safetensors file, never loaded whole.

Besides this head view, the page has bertviz's two other scales (Vig 2019): the model view (every layer
x head as one image of thumbnails, `attention_model.py`; clicking one opens it in the head view) and the
neuron view (q, k, q*k and the softmax row for one query and one key token, `attention_neuron.py`).
"""

from __future__ import annotations

import base64
import dataclasses
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from dash import ClientsideFunction, Dash, Input, Output, State, ctx as callback_ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from dashboards.attention_model import ModelView, all_layer_patterns
from dashboards.attention_neuron import NeuronView, layer_qk
from dashboards.components import display_token, frame_table, graph, message, token_strip
from dashboards.context import Context
from dashboards.figures import attention_heatmap, attention_multiples, sink_map
from dashboards.views import (
    entry_key,
    figure_section,
    find_entry,
    register_view,
    saved_prompt,
    stored_meta,
    summary_section,
    table_section,
)
from interp.errors import InterpError
from interp.hooks import check_layer, pattern
from interp.plotting import escape_label
from interp.results import Result, register_result
from interp.tokens import encode, str_tokens
from interp.workspace import Entry, Workspace

FIG_KEY = "attention"
MODEL_FIG_KEY = "attention-model"
NEURON_FIG_KEY = "attention-neuron"
VIEWS = {"head": "head view", "model": "model view (all layers x heads)", "neuron": "neuron view (q, k, q*k)"}
MAX_SAVED_OPTIONS = 200
MAX_TOKENS = 512  # a layer is heads x T x T cells; beyond this the page would stall


@register_result
@dataclasses.dataclass
class AttentionResult(Result):
    """Every layer's attention pattern on one prompt, saved so the browser can reopen it offline."""

    kind = "attention"
    model: str
    prompt: str
    tokens: list[str]
    pattern: torch.Tensor  # [layers, heads, query, key], float16

    def sink(self) -> np.ndarray:
        """[layers, heads] mean attention to the first token over the queries after it."""
        p = self.pattern.float()
        return p[:, :, 1:, 0].mean(-1).numpy() if p.shape[-1] > 1 else np.zeros(p.shape[:2], np.float32)

    def to_frame(self) -> pd.DataFrame:
        p = self.pattern.float()
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean(-1)  # [layers, heads]
        layers, heads = np.meshgrid(np.arange(p.shape[0]), np.arange(p.shape[1]), indexing="ij")
        return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(),
                             "attention_to_first": self.sink().ravel(), "entropy": entropy.numpy().ravel()})

    def figure(self):
        return sink_map(self.sink())

    def summary(self) -> str:
        frame = self.to_frame()
        return (f"attention patterns of {self.prompt!r} ({len(self.tokens)} tokens, {self.pattern.shape[0]} layers "
                f"x {self.pattern.shape[1]} heads); mean attention to the first token "
                f"{frame.attention_to_first.mean():.3f}")


@torch.no_grad()
def attention_patterns(model, prompt: str) -> AttentionResult:
    """All attention patterns of `prompt` (float16), ready to `.save(workspace)`."""
    tokens = encode(model, prompt)
    stack = torch.from_numpy(np.stack(all_layer_patterns(model, tokens)))
    return AttentionResult(model=getattr(model.cfg, "spec", model.cfg.model_name), prompt=prompt,
                           tokens=str_tokens(model, tokens), pattern=stack.half())


@torch.no_grad()
def layer_pattern(model, tokens: torch.Tensor, layer: int) -> np.ndarray:
    """[heads, T, T] attention of one layer; the forward pass stops right after that layer."""
    layer = check_layer(model, layer)
    _, cache = model.run_with_cache(tokens, names_filter=pattern(layer), stop_at_layer=layer + 1)
    return cache[pattern(layer)][0].float().cpu().numpy()


@register_view("attention")
def attention_view(result: AttentionResult, entry: Entry, ctx: Context) -> list[Any]:
    """The sink map and per-head table, and links that reopen the patterns in the browser (head view, model view)."""
    key = entry_key(entry)
    links = [dcc.Link(text, href="/attention?" + urllib.parse.urlencode({"saved": entry.name, "view": view}))
             for text, view in (("Open in the attention browser", "head"), ("model view (every layer x head)", "model"))]
    return [html.Div([links[0], " | ", links[1]]), figure_section(result, key),
            table_section(result.to_frame, key, "Per head"), *summary_section(result)]


# -- sources: a typed prompt on the live model, or a saved AttentionResult -----------------------
def live_source(ctx: Context, prompt: str) -> dict[str, Any]:
    model = ctx.model()
    tokens = encode(model, prompt)
    if tokens.shape[1] > MAX_TOKENS:
        raise InterpError(f"the prompt has {tokens.shape[1]} tokens; the attention browser shows at most "
                          f"{MAX_TOKENS}, shorten it")
    return {"type": "live", "prompt": prompt, "tokens": str_tokens(model, tokens),
            "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads}


def read_patterns(entry: Entry, read: Callable[[Any], Any]) -> Any:
    """`read(f)` on the entry's saved patterns (an open safetensors file, read lazily); a damaged file
    becomes an InterpError that names it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(entry.path / "tensors.safetensors"), "pt") as f:
            return read(f)
    except (OSError, ValueError, IndexError, SafetensorError) as e:
        raise InterpError(f"{entry.kind}/{entry.name}/tensors.safetensors is damaged ({type(e).__name__}: {e}); "
                          "save the patterns again") from e


def saved_source(ctx: Context, name: str) -> dict[str, Any]:
    entry = find_entry(ctx, "attention", name)
    prompt, tokens = saved_prompt(entry), stored_meta(entry)["json"].get("tokens")
    if not isinstance(tokens, list):
        raise InterpError(f"attention/{entry.name}/result.json holds no tokens; save the patterns again")

    def shape(f) -> tuple[int, int]:
        n_layers, n_heads, _, _ = f.get_slice("pattern").get_shape()
        return n_layers, n_heads

    n_layers, n_heads = read_patterns(entry, shape)
    return {"type": "saved", "name": entry.name, "prompt": prompt, "tokens": tokens,
            "n_layers": n_layers, "n_heads": n_heads}


def source_layer(ctx: Context, source: dict[str, Any], layer: int) -> np.ndarray:
    """[heads, T, T] float32 for one layer of a source (cached)."""
    if not 0 <= layer < source["n_layers"]:
        raise InterpError(f"layer {layer} is out of range 0..{source['n_layers'] - 1}")
    if source["type"] == "saved":
        entry = find_entry(ctx, "attention", source["name"])

        def read() -> np.ndarray:
            return read_patterns(entry, lambda f: f.get_slice("pattern")[layer].float().numpy())

        return ctx.cache.get(("attn-saved", str(entry.path), layer), read)

    def compute() -> np.ndarray:
        model = ctx.model()
        with ctx.model_lock:
            return layer_pattern(model, encode(model, source["prompt"]), layer)

    return ctx.cache.get(_live_key(ctx, source, layer), compute)


def _live_key(ctx: Context, source: dict[str, Any], layer: int) -> tuple:
    return "attn-live", ctx.model_spec, source["prompt"], layer


def source_layers(ctx: Context, source: dict[str, Any]) -> list[np.ndarray]:
    """Every layer's [heads, T, T] float32 of a source. A live prompt runs ONE forward pass for all layers
    and leaves each layer in the cache `source_layer` reads, so opening a head from the model view needs
    no further pass."""
    if source["type"] != "live":
        return [source_layer(ctx, source, layer) for layer in range(source["n_layers"])]
    model = ctx.model()
    with ctx.model_lock:
        layers = all_layer_patterns(model, encode(model, source["prompt"]))
    return [ctx.cache.get(_live_key(ctx, source, layer), lambda p=p: p) for layer, p in enumerate(layers)]


def source_model_view(ctx: Context, source: dict[str, Any], show_first: bool) -> ModelView:
    """The model view of a source (cached per source and first-token setting)."""
    key = ("attn-model", source["type"], source.get("name"), ctx.model_spec, source["prompt"], show_first)
    return ctx.cache.get(key, lambda: ModelView.of(source_layers(ctx, source), show_first=show_first))


def source_neuron_view(ctx: Context, source: dict[str, Any], layer: int, query: int, key: int) -> NeuronView:
    """The neuron view of a source's prompt on the live model (saved patterns hold no q or k); the layer's
    q, k, scores and pattern are cached, so other tokens need no forward pass."""
    model = ctx.model()

    def compute() -> tuple:
        tokens = encode(model, source["prompt"])
        with ctx.model_lock:
            return layer_qk(model, tokens, layer), str_tokens(model, tokens)

    qk, tokens = ctx.cache.get(("attn-qk", ctx.model_spec, source["prompt"], layer), compute)
    return NeuronView.select(qk, tokens, query, key)


def token_options(tokens: list[str]) -> list[dict[str, Any]]:
    """Dropdown options 'i: token' (shown as text) with the position as value."""
    return [{"label": f"{i}: {display_token(t)}", "value": i} for i, t in enumerate(tokens)]


def saved_options(ctx: Context) -> list[dict[str, str]]:
    """Saved attention results first, then prompts of other saved results (these run live)."""
    options = []
    for entry in Workspace(ctx.root).entries():
        try:
            prompt = saved_prompt(entry)
        except InterpError:
            continue
        short = prompt if len(prompt) < 60 else prompt[:57] + "..."
        if entry.kind == "attention":
            options.append({"label": f"saved patterns: {short}", "value": f"saved:{entry.name}"})
        elif ctx.has_model:
            options.append({"label": f"{entry.kind} prompt: {short}", "value": f"prompt:{entry.kind}/{entry.name}"})
    options.sort(key=lambda o: not o["value"].startswith("saved:"))
    return options[:MAX_SAVED_OPTIONS]


def encode_pattern(p: np.ndarray) -> str:
    """[T, T] probabilities as base64 little-endian uint16 (resolution 1.5e-5)."""
    return base64.b64encode(np.round(np.clip(p, 0, 1) * 65535).astype("<u2").tobytes()).decode("ascii")


# -- page ----------------------------------------------------------------------------------------
def attention_page(ctx: Context, query: dict[str, str]) -> list[Any]:
    prompt = query.get("prompt", "")
    saved = f"saved:{query['saved']}" if query.get("saved") else None
    view = query.get("view") if query.get("view") in VIEWS else "head"

    def box(name: str, children: list[Any]) -> html.Div:
        return html.Div(id=f"attn-{name}-box", children=children, style=None if view == name else {"display": "none"})

    note = None if ctx.has_model else message(
        "No model is loaded, so typed prompts cannot run; open saved patterns below, or start the dashboard "
        "with --model SPEC.")
    return [
        html.H2("Attention"),
        note,
        html.Div(className="row", children=[
            dcc.Textarea(id="attn-prompt", value=prompt, placeholder="Type a prompt", className="prompt",
                         disabled=not ctx.has_model),
            html.Button("Run", id="attn-run", disabled=not ctx.has_model),
        ]),
        dcc.Dropdown(id="attn-saved", options=saved_options(ctx), value=saved, placeholder="or open a saved one",
                     className="wide"),
        html.Div(id="attn-status", className="status"),
        dcc.RadioItems(id="attn-view", value=view, inline=True, className="views",
                       options=[{"label": label, "value": value} for value, label in VIEWS.items()]),
        html.Div(className="controls", children=[
            html.Label("layer"), dcc.Slider(id="attn-layer", min=0, max=1, step=1, value=0),
            html.Label("head"), dcc.RadioItems(id="attn-head", options=[{"label": "all", "value": "all"}],
                                               value="all", inline=True),
            dcc.Checklist(id="attn-first", options=[{"label": "show first token", "value": "show"}],
                          value=["show"], inline=True),
            dcc.RadioItems(id="attn-mode", inline=True, value="from", options=[
                {"label": "hover: where the token attends", "value": "from"},
                {"label": "hover: what attends to the token", "value": "to"}]),
        ]),
        html.Div(id="attn-tokens", className="strip-box"),
        box("head", [html.Div(id="attn-hover-info", className="muted"), dcc.Loading(graph({}, FIG_KEY))]),
        box("model", [html.P("Every head of every layer, pooled to a thumbnail (block maxima) and scaled to its own "
                             "largest weight; click one to open it in the head view.", className="muted"),
                      dcc.Loading(graph({}, MODEL_FIG_KEY))]),
        box("neuron", [
            html.Div(className="row", children=[
                html.Label("query token"), dcc.Dropdown(id="attn-query", clearable=False, className="token-pick"),
                html.Label("key token"), dcc.Dropdown(id="attn-key", clearable=False, className="token-pick")]),
            html.Div(id="attn-neuron-status", className="status"),
            dcc.Loading(graph({}, NEURON_FIG_KEY)),
            html.Div(id="attn-neuron-table"),
        ]),
        dcc.Store(id="attn-source"), dcc.Store(id="attn-hover"), html.Div(id="attn-js-sink", hidden=True),
    ]


def register_attention_callbacks(app: Dash, ctx: Context) -> None:
    fig_id = {"type": "fig", "index": FIG_KEY}
    model_fig_id = {"type": "fig", "index": MODEL_FIG_KEY}
    neuron_fig_id = {"type": "fig", "index": NEURON_FIG_KEY}

    @app.callback(Output("attn-source", "data"), Output("attn-status", "children"), Output("attn-prompt", "value"),
                  Output("attn-layer", "max"), Output("attn-layer", "marks"), Output("attn-head", "options"),
                  Input("attn-run", "n_clicks"), Input("attn-saved", "value"), State("attn-prompt", "value"))
    def choose_source(n_clicks, saved, prompt):
        trigger = callback_ctx.triggered_id
        try:
            if saved and trigger != "attn-run" and saved.startswith("saved:"):
                source = saved_source(ctx, saved.removeprefix("saved:"))
            elif saved and trigger != "attn-run" and saved.startswith("prompt:"):
                kind, _, name = saved.removeprefix("prompt:").partition("/")
                source = live_source(ctx, saved_prompt(find_entry(ctx, kind, name)))
            elif prompt and ctx.has_model:
                source = live_source(ctx, prompt)
            else:
                raise PreventUpdate
        except InterpError as e:
            return None, message(str(e), "error"), no_update, no_update, no_update, no_update
        n_layers, n_heads = source["n_layers"], source["n_heads"]
        marks = {layer: str(layer) for layer in range(0, n_layers, max(1, n_layers // 10))}
        heads = [{"label": "all", "value": "all"}] + [{"label": str(h), "value": str(h)} for h in range(n_heads)]
        status = f"{len(source['tokens'])} tokens, {n_layers} layers x {n_heads} heads"
        return source, status, source["prompt"], n_layers - 1, marks, heads

    @app.callback(Output("attn-tokens", "children"), Input("attn-source", "data"), Input("attn-first", "value"))
    def show_tokens(source, first):
        if not source:
            raise PreventUpdate
        return token_strip(source["tokens"], strip_id="attn-strip", hide_first="show" not in (first or []))

    @app.callback(Output(fig_id, "figure"), Output("attn-hover", "data"),
                  Input("attn-source", "data"), Input("attn-layer", "value"), Input("attn-head", "value"),
                  Input("attn-first", "value"))
    def show_layer(source, layer, head, first):
        if not source:
            raise PreventUpdate
        layer = min(int(layer or 0), source["n_layers"] - 1)
        show_first = "show" in (first or [])
        try:
            patterns = source_layer(ctx, source, layer)
        except InterpError as e:  # e.g. the saved patterns were deleted meanwhile
            return go.Figure(layout={"title": escape_label(str(e))}), None
        label = escape_label(source["prompt"][:60])
        if head in (None, "all") or int(head) >= patterns.shape[0]:
            fig = attention_multiples(patterns, f"layer {layer}, all heads: {label}", show_first)
            hover, hover_label = patterns.mean(0), f"layer {layer}, mean over heads"
        else:
            h = int(head)
            fig = attention_heatmap(patterns[h], source["tokens"], f"layer {layer} head {h}: {label}", show_first)
            hover, hover_label = patterns[h], f"layer {layer} head {h}"
        data = {"T": int(hover.shape[0]), "b64": encode_pattern(hover), "first": show_first, "label": hover_label}
        return fig, data

    @app.callback(Output("attn-head", "value"), Output("attn-layer", "value"), Output("attn-view", "value"),
                  Input(fig_id, "clickData"), Input(model_fig_id, "clickData"), State("attn-head", "value"),
                  prevent_initial_call=True)
    def open_head(click, model_click, head):
        """A click on a head of the layer's multiples opens that head; one on a model-view thumbnail (the
        heatmap over the image, trace 1) opens its layer and head in the head view."""
        if callback_ctx.triggered_id == model_fig_id:
            point = ((model_click or {}).get("points") or [{}])[0]
            if point.get("curveNumber") != 1 or not all(isinstance(point.get(a), int) for a in "xy"):
                raise PreventUpdate
            return str(point["x"]), point["y"], "head"
        if head not in (None, "all") or not click or not click.get("points"):
            raise PreventUpdate
        return str(click["points"][0]["curveNumber"]), no_update, no_update

    @app.callback(Output(model_fig_id, "figure"), Input("attn-source", "data"), Input("attn-view", "value"),
                  Input("attn-first", "value"))
    def show_model_view(source, view, first):
        if not source or view != "model":
            raise PreventUpdate
        try:
            return source_model_view(ctx, source, "show" in (first or [])).figure()
        except InterpError as e:
            return go.Figure(layout={"title": escape_label(str(e))})

    @app.callback(Output("attn-query", "options"), Output("attn-query", "value"), Input("attn-source", "data"))
    def query_options(source):
        if not source:
            raise PreventUpdate
        return token_options(source["tokens"]), len(source["tokens"]) - 1

    @app.callback(Output("attn-key", "options"), Output("attn-key", "value"), Input("attn-query", "value"),
                  Input(neuron_fig_id, "clickData"), State("attn-key", "value"), State("attn-source", "data"))
    def key_options(query, click, key, source):
        """Keys 0..query; a click on the softmax row (trace 3, x = 'j:token') picks key j."""
        if not source or query is None:
            raise PreventUpdate
        if callback_ctx.triggered_id == neuron_fig_id:
            point = ((click or {}).get("points") or [{}])[0]
            if point.get("curveNumber") != 3 or not str(point.get("x", "")).partition(":")[0].isdigit():
                raise PreventUpdate
            return no_update, int(str(point["x"]).partition(":")[0])
        query = int(query)
        return token_options(source["tokens"][:query + 1]), key if key is not None and key <= query else max(query - 1, 0)

    @app.callback(Output(neuron_fig_id, "figure"), Output("attn-neuron-table", "children"),
                  Output("attn-neuron-status", "children"), Input("attn-source", "data"), Input("attn-view", "value"),
                  Input("attn-layer", "value"), Input("attn-head", "value"), Input("attn-query", "value"),
                  Input("attn-key", "value"))
    def show_neuron_view(source, view, layer, head, query, key):
        if not source or view != "neuron" or query is None or key is None:
            raise PreventUpdate
        try:
            nv = source_neuron_view(ctx, source, int(layer or 0), int(query), int(key))
        except InterpError as e:
            return go.Figure(), None, message(str(e), "error")
        n_heads, n_kv = len(nv.kv_head), len(set(nv.kv_head.tolist()))
        heads = None if head in (None, "all") or int(head) >= n_heads else [int(head)]
        notes = [f"layer {nv.layer}: score = sum(q * k) / {nv.scale:.4g}; the table sets it beside the model's "
                 "own score (hook_attn_scores) and the key's weight in the softmax row."]
        if nv.rotary:
            notes.append("q and k are shown after the rotary position embedding (hook_rot_q, hook_rot_k).")
        if n_kv < n_heads:
            notes.append(f"Grouped-query attention: {n_heads} query heads share {n_kv} key heads "
                         f"({n_heads // n_kv} each); 'k' in a row's name is the key head it reads.")
        if source["type"] == "saved":
            notes.append("Saved patterns hold no q or k: these come from the loaded model on the saved prompt.")
        return nv.figure(heads), frame_table(nv.to_frame(), NEURON_FIG_KEY), " ".join(notes)

    app.clientside_callback(ClientsideFunction("interp", "showAttentionView"), Output("attn-head-box", "style"),
                            Output("attn-model-box", "style"), Output("attn-neuron-box", "style"),
                            Input("attn-view", "value"))

    app.clientside_callback(ClientsideFunction("interp", "setAttention"), Output("attn-js-sink", "title"),
                            Input("attn-hover", "data"), Input("attn-mode", "value"))

"""Attention browser: patterns of a typed prompt (live, on the loaded model) or of saved ones.

The server computes one layer at a time, on demand (`stop_at_layer` ends the forward pass there)
and caches it, so 30 layers x 9 heads x 256 tokens never travel at once. The browser gets the
selected layer as small uint8 heatmaps (an overview, click a head to open it), or one head at full
precision, plus one [T, T] pattern as base64 uint16 that `assets/attention.js` uses to shade tokens
on hover without a round trip. Saved patterns (`AttentionResult`) are read layer by layer from the
safetensors file, never loaded whole.
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

from dashboards.components import graph, message, token_strip
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
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    stack = torch.stack([cache[pattern(layer)][0] for layer in range(model.cfg.n_layers)])
    return AttentionResult(model=getattr(model.cfg, "spec", model.cfg.model_name), prompt=prompt,
                           tokens=str_tokens(model, tokens), pattern=stack.half().cpu())


@torch.no_grad()
def layer_pattern(model, tokens: torch.Tensor, layer: int) -> np.ndarray:
    """[heads, T, T] attention of one layer; the forward pass stops right after that layer."""
    layer = check_layer(model, layer)
    _, cache = model.run_with_cache(tokens, names_filter=pattern(layer), stop_at_layer=layer + 1)
    return cache[pattern(layer)][0].float().cpu().numpy()


@register_view("attention")
def attention_view(result: AttentionResult, entry: Entry, ctx: Context) -> list[Any]:
    """The sink map and per-head table, and a link that reopens the patterns in the browser."""
    key = entry_key(entry)
    link = dcc.Link("Open in the attention browser", href="/attention?" + urllib.parse.urlencode({"saved": entry.name}))
    return [html.Div(link), figure_section(result, key), table_section(result.to_frame, key, "Per head"),
            *summary_section(result)]


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

    return ctx.cache.get(("attn-live", ctx.model_spec, source["prompt"], layer), compute)


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
        html.Div(id="attn-hover-info", className="muted"),
        dcc.Loading(graph({}, FIG_KEY)),
        dcc.Store(id="attn-source"), dcc.Store(id="attn-hover"), html.Div(id="attn-js-sink", hidden=True),
    ]


def register_attention_callbacks(app: Dash, ctx: Context) -> None:
    fig_id = {"type": "fig", "index": FIG_KEY}

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

    @app.callback(Output("attn-head", "value"), Input(fig_id, "clickData"), State("attn-head", "value"),
                  prevent_initial_call=True)
    def open_head(click, head):
        if head not in (None, "all") or not click or not click.get("points"):
            raise PreventUpdate
        return str(click["points"][0]["curveNumber"])

    app.clientside_callback(ClientsideFunction("interp", "setAttention"), Output("attn-js-sink", "title"),
                            Input("attn-hover", "data"), Input("attn-mode", "value"))

"""SAE feature pages: a searchable, paged feature list and one page per feature.

The list is paged on the server: the URL carries `q`, `sort` and `page`, so a page of 16k features
costs one in-memory sort (cached) and 50 table rows. A prompt box runs the saved SAE on a typed
text (live model needed) and shows the features that fire on each token. Feature sets of attention-output
SAEs (`hook_z`) also show each head's share of a feature's weights and, under each top context, which
earlier tokens the activation at its maximum reads from (direct feature attribution, summed over heads).
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any

import numpy as np
import torch
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboards.components import display_token, graph, message, token_strip
from dashboards.context import Context
from dashboards.feature_store import SORTS, FeatureSet, load_feature_set
from dashboards.figures import activation_histogram, density_histogram, logit_bars
from interp.errors import InterpError
from interp.sae.attention import head_share_figure
from interp.tokens import encode, str_tokens

PAGE_SIZE = 50
SORT_LABELS = {"density": "density (high first)", "density-asc": "density (low first)",
               "max_act": "max activation", "feature": "feature id"}
FIRING_PER_TOKEN = 5


def list_url(name: str, q: str = "", sort: str = "density", page: int = 0) -> str:
    params = {k: v for k, v, default in (("q", q, ""), ("sort", sort, "density"), ("page", str(page), "0"))
              if v != default}
    return f"/features/{name}" + ("?" + urllib.parse.urlencode(params) if params else "")


def _tokens_text(values, limit: int = 8) -> str:
    return "  ".join(repr(str(v)) for v in list(values)[:limit]) if values is not None else ""


def _number(value: Any, digits: int = 3) -> str:
    value = float(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else "-"


def feature_list_page(ctx: Context, name: str, query: dict[str, str]) -> list[Any]:
    fs = load_feature_set(ctx, name)
    q, sort = query.get("q", ""), query.get("sort", "density")
    sort = sort if sort in SORTS else "density"
    ids = fs.search(q, sort)
    pages = max(1, math.ceil(len(ids) / PAGE_SIZE))
    page = min(max(int(query["page"]) if query.get("page", "").isdigit() else 0, 0), pages - 1)
    shown = fs.frame.loc[ids[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]]
    has_tokens, has_logits = "top_tokens" in shown, "top_logits" in shown
    titles = ["feature", "density", "max act"] + ["fires on"] * has_tokens + ["top logits"] * has_logits
    header = html.Tr([html.Th(t) for t in titles])
    rows = [html.Tr([
        html.Td(dcc.Link(str(int(r.feature)), href=f"/features/{name}/{int(r.feature)}")),
        html.Td(_number(r.density)), html.Td(_number(r.max_act)),
        *([html.Td(_tokens_text(r.top_tokens), className="toks")] if has_tokens else []),
        *([html.Td(_tokens_text(r.top_logits, 6), className="toks")] if has_logits else []),
    ]) for r in shown.itertuples(index=False)]
    return [
        html.H2(f"Features: {name}"),
        html.P(_describe(fs), className="muted"),
        graph(density_histogram(fs.frame["density"].to_numpy()), f"features-{name}-density"),
        html.Div(className="row", children=[
            dcc.Input(id="feat-search", value=q, debounce=True, type="search", className="wide",
                      placeholder="feature id, or a token it fires on (Enter)"),
            dcc.RadioItems(id="feat-sort", value=sort, inline=True,
                           options=[{"label": label, "value": key} for key, label in SORT_LABELS.items()]),
        ]),
        _pager(name, q, sort, page, pages, len(ids), top=True),
        html.Table([header] + rows, className="list", id="feat-table") if rows else message(
            f"No feature matches {q!r}."),
        _pager(name, q, sort, page, pages, len(ids), top=False),
        html.H3("Which features fire on a text"),
        _prompt_box(ctx, fs),
    ]


def _pager(name: str, q: str, sort: str, page: int, pages: int, total: int, top: bool) -> html.Div:
    """Previous / page i of n / next; only the top pager has ids and the go-to box (ids are unique)."""
    ident = (lambda i: {"id": i}) if top else (lambda i: {})
    links = [dcc.Link("< previous", href=list_url(name, q, sort, page - 1)) if page > 0 else html.Span(""),
             html.Span(f"page {page + 1} of {pages} ({total} features)", **ident("feat-page-label")),
             dcc.Link("next >", href=list_url(name, q, sort, page + 1), **ident("feat-next"))
             if page + 1 < pages else html.Span("")]
    if top:
        links.append(dcc.Input(id="feat-goto", type="number", min=1, max=pages, placeholder="go to page",
                               debounce=True))
    return html.Div(links, className="pager")


def _describe(fs: FeatureSet) -> str:
    keys = ("model", "hook", "hook_out", "arch", "d_in", "d_sae", "n_tokens", "corpus")
    return ",  ".join(f"{k}: {fs.meta[k]}" for k in keys if k in fs.meta)


def _prompt_box(ctx: Context, fs: FeatureSet) -> html.Div:
    if not ctx.has_model:
        return message("Start the dashboard with --model SPEC to run this SAE on typed text.")
    if fs.sae_folder() is None:
        return message("This feature set has no saved SAE (sae/cfg.json); the statistics writer can add it.")
    return html.Div([
        html.Div(className="row", children=[
            dcc.Textarea(id="feat-prompt", placeholder="Type a text", className="prompt"),
            html.Button("Run", id="feat-run"),
        ]),
        dcc.Loading(html.Div(id="feat-prompt-out")),
    ])


def feature_page(ctx: Context, name: str, feature: int) -> list[Any]:
    fs = load_feature_set(ctx, name)
    row = fs.row(feature)
    ids = fs.order("feature")
    at = int(np.searchsorted(ids, feature))
    nav = html.Div(className="pager", children=[
        dcc.Link("< previous", href=f"/features/{name}/{ids[at - 1]}") if at > 0 else html.Span(""),
        dcc.Link("feature list", href=list_url(name)),
        dcc.Link("next >", href=f"/features/{name}/{ids[at + 1]}") if at + 1 < len(ids) else html.Span(""),
    ])
    stats = [("density", _number(row.density, 4)), ("max activation", _number(row.max_act))]
    if "mean_act" in row:
        stats.append(("mean activation when firing", _number(row.mean_act)))
    parts: list[Any] = [
        html.H2(f"Feature {feature} of {name}"),
        html.P(str(row["label"]), className="muted") if str(row.get("label", "") or "") else None,
        nav,
        html.Div([html.Span(f"{k}: {v}") for k, v in stats], className="stats"),
    ]
    if "top_tokens" in row:
        parts.append(html.P("fires most on: " + _tokens_text(row.top_tokens, 20), className="muted"))
    if "hist_counts" in row and "hist_edges" in row and len(row.hist_counts):
        parts.append(graph(activation_histogram(row.hist_edges, row.hist_counts, "Activation density"),
                           f"feature-{name}-{feature}-hist"))
    if all(c in row for c in ("top_logits", "top_logit_values", "bottom_logits", "bottom_logit_values")):
        parts.append(graph(logit_bars(list(row.top_logits), list(row.top_logit_values), list(row.bottom_logits),
                                      list(row.bottom_logit_values)), f"feature-{name}-{feature}-logits"))
    if _present(row.get("enc_head_shares")) and _present(row.get("dec_head_shares")):
        parts.append(graph(head_share_figure(list(row.enc_head_shares), list(row.dec_head_shares),
                                             "share of the feature's weight norm per head"),
                           f"feature-{name}-{feature}-heads"))
    parts.append(_contexts_section(fs, feature, float(row.max_act)))
    return [p for p in parts if p is not None]


def _present(value: Any) -> bool:
    """Whether an optional list cell holds values (not None / NaN / empty)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and len(value) > 0


def _source_strip(r) -> html.Div | None:
    """Under a top context of a hook_z SAE: the window's tokens shaded by how much the activation at the
    maximum reads from each (attribution summed over heads), then the per-head totals."""
    attr = getattr(r, "source_attr", None)
    if not _present(attr):
        return None
    heads = getattr(r, "head_attr", None)
    head_text = "  ".join(f"H{h} {float(a):+.3g}" for h, a in enumerate(heads)) if _present(heads) else ""
    before = getattr(r, "attr_before", None)
    tail = f";  from earlier tokens {float(before):+.3g}" if before is not None and math.isfinite(before) else ""
    peak = max((abs(float(a)) for a in attr), default=1.0) or 1.0
    return html.Div([html.Span("reads from: ", className="muted"), token_strip(list(r.tokens), list(attr), peak),
                      html.Span(f"by head: {head_text}{tail}", className="muted")], className="source-attr")


def _contexts_section(fs: FeatureSet, feature: int, peak: float) -> html.Div:
    contexts = fs.contexts(feature)
    if contexts.empty:
        return message("No activating contexts are stored for this feature (it may be dead).")
    sections = []
    for group, frame in contexts.groupby("group_rank", sort=True):
        title = str(frame["group"].iloc[0])
        strips = [html.Div([c for c in (token_strip(list(r.tokens), list(r.acts), peak), _source_strip(r)) if c is not None],
                           className="context") for r in frame.itertuples(index=False)]
        sections.append(html.Div([html.H4(f"{title} ({len(strips)})")] + strips, className="group"))
    return html.Div([html.H3("Activating contexts")] + sections, id="feat-contexts")


# -- live: which features fire on a typed text ---------------------------------------------------
def _stop_layer(hook: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) + 1 if match else None


@torch.no_grad()
def features_on_text(ctx: Context, fs: FeatureSet, text: str, k: int = FIRING_PER_TOKEN
                     ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(tokens, top-k feature ids [T, k], their activations [T, k]) of the saved SAE on `text`."""
    from interp.sae.io import load_sae

    hook = fs.meta.get("hook")
    model = ctx.model()
    if not hook or hook not in model.hook_dict:
        raise InterpError(f"the feature set's hook {hook!r} is not a hook of {ctx.model_spec}; "
                          "start the dashboard with the model the SAE was trained on")
    sae = ctx.cache.get(("sae", str(fs.folder)), lambda: load_sae(fs.sae_folder(), device=ctx.device))
    with ctx.model_lock:
        tokens = encode(model, text)
        _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=_stop_layer(hook))
    x = cache[hook][0].reshape(tokens.shape[1], -1)  # hook_z: heads concatenated, as the SAE was trained
    acts = sae.encode(x.to(next(sae.parameters()).dtype))
    values, ids = acts.topk(min(k, acts.shape[-1]), dim=-1)
    return str_tokens(model, tokens), ids, values


def register_feature_callbacks(app: Dash, ctx: Context) -> None:
    @app.callback(Output("url", "search"), Input("feat-search", "value"),
                  Input("feat-sort", "value"), Input("feat-goto", "value"), State("url", "pathname"),
                  prevent_initial_call=True)
    def navigate(q, sort, goto, pathname):
        name = (pathname or "").rstrip("/").split("/")[-1]
        url = list_url(name, q or "", sort or "density", max(int(goto) - 1, 0) if goto else 0)
        return "?" + url.partition("?")[2] if "?" in url else ""

    @app.callback(Output("feat-prompt-out", "children"), Input("feat-run", "n_clicks"),
                  State("feat-prompt", "value"), State("url", "pathname"), prevent_initial_call=True)
    def run_prompt(n_clicks, text, pathname):
        if not text:
            raise PreventUpdate
        name = (pathname or "").rstrip("/").split("/")[-1]
        try:
            fs = load_feature_set(ctx, name)
            tokens, ids, values = features_on_text(ctx, fs, text)
        except InterpError as e:
            return message(str(e), "error")
        rows = [html.Tr([html.Td(str(i)), html.Td(display_token(tok), className="toks"), html.Td([
            html.Span([dcc.Link(str(int(f)), href=f"/features/{name}/{int(f)}"), f" ({float(a):.2f})  "])
            for f, a in zip(ids[i].tolist(), values[i].tolist()) if a > 0])])
            for i, tok in enumerate(tokens)]
        return html.Table([html.Tr([html.Th("#"), html.Th("token"), html.Th("top features (activation)")])] + rows,
                          className="list", id="feat-prompt-table")


"""Reusable page pieces: a graph with its offline-HTML download button, tables, token strips, messages.

Untrusted text (tokens, prompts, result fields) only ever goes into component children or
attributes, which React escapes; nothing here renders raw HTML.
"""

from __future__ import annotations

import json
import math

import pandas as pd
from dash import MATCH, Dash, Input, Output, State, dash_table, dcc, html
from dash.exceptions import PreventUpdate

from dashboards.figures import standalone_html
from interp.workspace import slug


def graph(fig, key: str, **kwargs) -> html.Div:
    """A plotly graph plus a button that downloads it as a standalone HTML file."""
    return html.Div(className="figure", children=[
        dcc.Graph(id={"type": "fig", "index": key}, figure=fig, config={"displaylogo": False}, **kwargs),
        html.Button("Download HTML", id={"type": "dl-btn", "index": key}, className="download"),
        dcc.Download(id={"type": "dl", "index": key}),
    ])


def register_downloads(app: Dash) -> None:
    """One pattern-matching callback serves the download button of every `graph()` on every page."""

    @app.callback(Output({"type": "dl", "index": MATCH}, "data"),
                  Input({"type": "dl-btn", "index": MATCH}, "n_clicks"),
                  State({"type": "fig", "index": MATCH}, "figure"),
                  State({"type": "fig", "index": MATCH}, "id"),
                  prevent_initial_call=True)
    def download(n_clicks, figure, ident):
        if not n_clicks or not figure:
            raise PreventUpdate
        return dcc.send_string(standalone_html(figure), filename=f"{slug(str(ident['index']), 80)}.html")


def message(text: str, kind: str = "info") -> html.Div:
    """A boxed sentence for the page (missing data, bad input, what to do next)."""
    return html.Div(text, className=f"message {kind}")


def _cell(value):
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else str(value)
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value, default=str)[:300]


def frame_table(frame: pd.DataFrame, key: str, page_size: int = 20) -> dash_table.DataTable:
    """A paged, sortable table of a DataFrame (lists and arrays shown as short JSON text)."""
    frame = frame.reset_index(drop=frame.index.name is None and isinstance(frame.index, pd.RangeIndex))
    columns = [str(c) for c in frame.columns]
    records = [{c: _cell(v) for c, v in zip(columns, row)} for row in frame.itertuples(index=False)]
    return dash_table.DataTable(
        id={"type": "table", "index": key}, columns=[{"name": c, "id": c} for c in columns], data=records,
        page_size=page_size, sort_action="native", style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "monospace", "fontSize": 13, "maxWidth": 420, "overflow": "hidden",
                    "textOverflow": "ellipsis", "whiteSpace": "pre"})


def display_token(token: str) -> str:
    """A token as shown in strips: newlines and tabs made visible, spaces kept."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def token_strip(tokens: list[str], acts: list[float] | None = None, peak: float | None = None,
                strip_id: str | None = None, hide_first: bool = False) -> html.Div:
    """Tokens as spans, shaded by `acts / peak` when given; each span's title shows its activation."""
    spans = []
    peak = peak or max((a for a in (acts or []) if a > 0), default=1.0)
    for i, token in enumerate(tokens):
        props: dict = {"className": "tok hidden" if hide_first and i == 0 else "tok", "data-i": str(i)}
        if acts is not None:
            a = float(acts[i])
            props["title"] = f"{a:.3f}"
            if a > 0:
                props["style"] = {"backgroundColor": f"rgba(255,120,0,{min(a / peak, 1.0):.3f})"}
        spans.append(html.Span(display_token(token), **props))
    return html.Div(spans, className="strip", **({"id": strip_id} if strip_id else {}))

"""Pages of `interp ffn` results (Geva et al. 2022): the sub-updates per layer and a search box over the
whole-model neuron table ("which neurons promote ' Paris'?").

The table is a `neurons` result in the same workspace, saved by `interp ffn --workspace` once per set of
weights; an `ffn` page finds the one whose weights fingerprint matches its own, so it searches the table
of its own model and never another's. Tokens are untrusted text: they go into table cells only, which React escapes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboards.components import frame_table, message
from dashboards.context import Context
from dashboards.views import attention_link, entry_key, figure_section, find_entry, load_result, register_view, \
    summary_section, table_section
from interp.errors import InterpError
from interp.ffn.table import saved_table
from interp.workspace import Entry

TABLE_KIND = "neurons"
SHOWN = 50  # neurons listed per search
MAX_QUERY_CHARS = 100


def search_results(ctx: Context, name: str, query: Any) -> pd.DataFrame:
    """The neurons of the table `name` whose top or bottom tokens match `query` (case and spaces ignored)."""
    from interp.ffn import search_table

    if not isinstance(query, str) or not query.strip():
        raise InterpError("type a token, e.g. Paris")
    if len(query) > MAX_QUERY_CHARS:
        raise InterpError(f"the token is longer than {MAX_QUERY_CHARS} characters; type one token")
    table = load_result(ctx, find_entry(ctx, TABLE_KIND, name))
    return search_table(table.table, query, top=SHOWN, loose=True)


def _results_table(frame: pd.DataFrame, query: str) -> Any:
    if frame.empty:
        return message(f"No neuron has {query!r} among its value vector's top or bottom tokens.")
    return frame_table(frame, f"neuron-search-{len(frame)}")


def search_box(ctx: Context, table_name: str, query: str) -> html.Div:
    """The search box over the neuron table `table_name`, showing the results of `query` at first."""
    try:
        first = _results_table(search_results(ctx, table_name, query), query)
    except InterpError as e:
        first = message(str(e))
    return html.Div(className="section", children=[
        html.H3("Which neurons promote a token?"),
        html.P("Neurons whose value vector has the token among its top tokens (side +1: promoted when the "
               "coefficient is positive) or bottom tokens (side -1: promoted when it is negative).",
               className="muted"),
        dcc.Store(id="neuron-table", data=table_name),
        dcc.Input(id="neuron-query", value=query, debounce=True, type="search", className="wide",
                  placeholder="a token, e.g. Paris (Enter)"),
        dcc.Loading(html.Div(first, id="neuron-results")),
    ])


@register_view("ffn")
def ffn_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """The figure, the per-layer answer readings, the sub-updates, and the neuron search for the answer."""
    key = entry_key(entry)
    found = saved_table(ctx.root, result.weights)
    search = (search_box(ctx, found.name, result.answer) if found else
              message(f"This workspace has no neuron table for these weights; run `interp ffn ... --model "
                      f"{result.model} --workspace {ctx.root}` to add it."))
    return [attention_link(result), figure_section(result, key),
            table_section(lambda: result.per_layer, key + "-layers", "The answer per layer"),
            table_section(result.to_frame, key, "Largest sub-updates per layer"), search, *summary_section(result)]


@register_view(TABLE_KIND)
def neurons_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """The value-vector norms and the search box (first showing the strongest neuron's top token)."""
    strongest = result.table.loc[result.table["value_norm"].idxmax()]
    return [figure_section(result, entry_key(entry)), search_box(ctx, entry.name, str(strongest["top_tokens"][0])),
            *summary_section(result)]


def register_ffn_callbacks(app: Dash, ctx: Context) -> None:
    @app.callback(Output("neuron-results", "children"), Input("neuron-query", "value"), State("neuron-table", "data"),
                  prevent_initial_call=True)
    def search(query, name):
        if not name:
            raise PreventUpdate
        try:
            return _results_table(search_results(ctx, name, query), query)
        except InterpError as e:
            return message(str(e), "error")

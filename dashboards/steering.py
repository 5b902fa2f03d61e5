"""The page of a saved `steer` result: the dose-response beside the random control, the generations per
coefficient side by side, and (with a model loaded) a live box that steers a typed prompt with the saved vector.

The live box runs the dashboard's model greedily, with and without the saved vector at a typed
coefficient, under the model lock (the server answers from many threads). Generations are untrusted text:
they go into component children and table cells only, which React escapes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboards.components import message
from dashboards.context import Context
from dashboards.views import entry_key, figure_section, find_entry, load_result, register_view, summary_section, table_section
from interp.errors import InterpError
from interp.workspace import Entry

KIND = "steer"
LIVE_TOKENS = 24
MAX_PROMPT_CHARS = 2000


def _live_box(result, entry: Entry, ctx: Context) -> html.Div:
    if not ctx.has_model:
        return message("Start the dashboard with --model SPEC to steer a typed prompt with this vector.")
    return html.Div(className="section", children=[
        html.H3("Try it"),
        dcc.Store(id="steer-entry", data=entry.name),
        html.Div(className="row", children=[
            dcc.Textarea(id="steer-prompt", value=result.prompt, className="prompt"),
            html.Label("coefficient"),
            dcc.Input(id="steer-coef", type="number", value=max(result.coefs, key=abs), debounce=True),
            dcc.Dropdown(id="steer-positions", options=["all", "prompt", "last"], value=result.positions,
                         clearable=False, style={"width": "8em"}),
            html.Button("Generate", id="steer-run"),
        ]),
        dcc.Loading(html.Div(id="steer-live")),
    ])


@register_view(KIND)
def steer_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Dose-response figure with the control, the measures, the generations side by side, the live box."""
    key = entry_key(entry)
    return [figure_section(result, key),
            table_section(result.side_by_side, key + "-generations", "Generations per coefficient (vector | control)"),
            table_section(result.to_frame, key, "Measures per coefficient"),
            _live_box(result, entry, ctx), *summary_section(result)]


def live_generations(ctx: Context, name: str, prompt: str, coef: Any, positions: str) -> tuple[str, str]:
    """(unsteered, steered) greedy continuations of `prompt` on the dashboard's model, the saved vector of
    steer result `name` added at `coef`."""
    from interp.models.loader import spec_name
    from interp.steering import steering
    from interp.steering.run import continuation, generate
    from interp.tokens import encode

    if not isinstance(coef, (int, float)) or isinstance(coef, bool) or not math.isfinite(coef):
        raise InterpError("type a finite coefficient, e.g. 4")
    if len(prompt or "") > MAX_PROMPT_CHARS:
        raise InterpError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters; shorten it")
    result = load_result(ctx, find_entry(ctx, KIND, name))
    if spec_name(str(result.model)) != spec_name(str(ctx.model_spec)):
        raise InterpError(f"this vector was made for {result.model}, but the dashboard runs {ctx.model_spec}; "
                          f"start it with --model {result.model}")
    model = ctx.model()
    with ctx.model_lock:
        tokens = encode(model, prompt or "")
        plain = generate(model, tokens, LIVE_TOKENS, 1, 0)
        with steering(model, result.vector, result.hook, float(coef), positions, tokens.shape[1]):
            steered = generate(model, tokens, LIVE_TOKENS, 1, 0)
    return tuple(continuation(model, out[0], tokens.shape[1]) for out in (plain, steered))


def register_steering_callbacks(app: Dash, ctx: Context) -> None:
    @app.callback(Output("steer-live", "children"), Input("steer-run", "n_clicks"), State("steer-entry", "data"),
                  State("steer-prompt", "value"), State("steer-coef", "value"), State("steer-positions", "value"),
                  prevent_initial_call=True)
    def run(n_clicks, name, prompt, coef, positions):
        if not n_clicks or not name:
            raise PreventUpdate
        try:
            with torch.no_grad():
                plain, steered = live_generations(ctx, name, prompt, coef, positions)
        except InterpError as e:
            return message(str(e), "error")
        return html.Div(className="pair", children=[
            html.Div([html.B("without steering"), html.Pre(plain, className="generation")]),
            html.Div([html.B(f"coefficient {coef:g}"), html.Pre(steered, className="generation")])])

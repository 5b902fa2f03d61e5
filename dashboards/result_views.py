"""Dedicated pages for results whose generic page (figure, `to_frame()`, summary) misses what matters:

- `edit`: scores before and after the edit, and per case what was asked, its scores and generations;
- `trace`: the three heatmaps side by side, where each kind peaks, its effect per token group, and
  one token x layer table per kind.

Imported once by the app, which registers them. Generations and tokens are untrusted text: they go
into component children and table cells only, which React escapes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import html

from dashboards.context import Context
from dashboards.views import (
    attempt,
    attention_link,
    entry_key,
    figure_section,
    register_view,
    summary_section,
    table_section,
)
from interp.workspace import Entry

PHASES = {"pre": "before", "post": "after"}
CASE_SCORES = ("efficacy", "paraphrase", "neighborhood", "fluency", "generation")


# -- edit ----------------------------------------------------------------------------------------
def _asked(requests: list[dict], case_id: Any, subject: Any) -> dict[str, Any]:
    """The rewrite prompt and targets of the request for this case (matched by case id and subject,
    else by subject); blank when the case was an evaluation record rather than an edit."""
    rewrites = [(r.get("case_id"), r.get("requested_rewrite") or {}) for r in requests]
    found = next((rw for cid, rw in rewrites if cid == case_id and rw.get("subject") == subject), None)
    found = found or next((rw for _, rw in rewrites if rw.get("subject") == subject), {})
    prompt = found.get("prompt", "")
    return {"prompt": prompt.replace("{}", str(subject)) if prompt else "",
            "target_true": (found.get("target_true") or {}).get("str", ""),
            "target_new": (found.get("target_new") or {}).get("str", "")}


def edit_cases(result) -> pd.DataFrame:
    """One row per evaluated case: what was asked, then each score and the generation before and after.

    Rows of a phase are in case order, so the n-th "pre" row and the n-th "post" row are one case.
    """
    cases = result.cases.assign(n=result.cases.groupby("phase", sort=False).cumcount())
    phases = list(dict.fromkeys(cases["phase"]))
    shown = [c for c in CASE_SCORES if c in cases.columns]
    wide = cases.pivot(index="n", columns="phase", values=shown)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([shown, phases]))
    wide.columns = [f"{value} {PHASES.get(phase, phase)}" for value, phase in wide.columns]
    keys = cases.drop_duplicates("n").set_index("n")[["case_id", "subject"]]
    asked = pd.DataFrame([_asked(result.requests, c, s) for c, s in zip(keys["case_id"], keys["subject"])],
                         index=keys.index)
    return pd.concat([keys, asked, wide], axis=1).reset_index(drop=True)


def generations_section(cases: pd.DataFrame) -> html.Div:
    """Each case's generation before and after the edit, side by side, in full (the table cuts them)."""
    before, after = f"generation {PHASES['pre']}", f"generation {PHASES['post']}"
    blocks = []
    for fields in cases.to_dict("records"):
        case = fields["case_id"]
        label = f"case {case}: {fields['subject']}" if pd.notna(case) else str(fields["subject"])
        blocks.append(html.Div([html.H4(label), html.Div([
            html.Div([html.B(column.split()[-1]), html.Pre(text if isinstance(text := fields.get(column), str) else "",
                                                           className="generation")])
            for column in (before, after)], className="pair")], className="case"))
    return html.Div([html.H3("Generations"), *blocks], className="section")


@register_view("edit")
def edit_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Before/after comparison: mean scores per phase, the figure, per-case scores and generations."""
    key = entry_key(entry)
    return [table_section(result.scores, key + "-scores", "Scores before (pre) and after (post) the edit"),
            figure_section(result, key),
            table_section(lambda: edit_cases(result), key + "-cases", "Per case, before and after"),
            attempt(lambda: generations_section(edit_cases(result)), "generations"),
            *summary_section(result)]


# -- trace ---------------------------------------------------------------------------------------
def trace_peaks(result) -> pd.DataFrame:
    """One row per kind: the cell where restoring helps most."""
    return pd.DataFrame([{"kind": kind, **result.peak(kind)} for kind in result.scores])


def trace_groups(result) -> pd.DataFrame:
    """Mean indirect effect per kind, token group (the paper's six) and layer."""
    from circuits.tracing import GROUPS

    rows = []
    for kind in result.scores:
        for group, values in zip(GROUPS, result.group_effects(kind).tolist()):
            rows.append({"kind": kind, "group": group, **{f"L{layer}": v for layer, v in enumerate(values)}})
    return pd.DataFrame(rows)


def trace_grid(result, kind: str) -> pd.DataFrame:
    """The heatmap of one kind as a table: a row per token, a column per layer."""
    scores = result.scores[kind]
    start, end = result.subject_range
    frame = pd.DataFrame(scores.tolist(), columns=[f"L{layer}" for layer in range(scores.shape[1])])
    frame.insert(0, "subject", [start <= t < end for t in range(len(result.tokens))])
    frame.insert(0, "token", result.tokens)
    frame.insert(0, "position", range(len(result.tokens)))
    return frame


@register_view("trace")
def trace_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Causal trace: the kinds side by side, where each peaks, per-group effects and per-kind tables."""
    key = entry_key(entry)
    grids = [table_section(lambda kind=kind: trace_grid(result, kind), f"{key}-{kind}",
                           f"{kind}: restored probability per token and layer") for kind in result.scores]
    return [attention_link(result), figure_section(result, key), *summary_section(result),
            table_section(lambda: trace_peaks(result), key + "-peaks", "Where each kind peaks"),
            table_section(lambda: trace_groups(result), key + "-groups", "Mean indirect effect per token group"),
            *grids]

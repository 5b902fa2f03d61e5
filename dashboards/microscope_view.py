"""The page of an LLM-Microscope result (`interp.microscope`): the figure and summary, then per layer
(linearity, intrinsic dimension, pooling weight), per token class, the removal test, per token, and the logit
lens's top token per position and layer. Tokens are untrusted text and only ever fill table cells."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dashboards.context import Context
from dashboards.views import entry_key, figure_section, register_view, summary_section, table_section
from interp.workspace import Entry


def lens_table(result) -> pd.DataFrame:
    """One row per position of the lens text: its token, then the top token read at each layer."""
    frame = pd.DataFrame({"position": range(len(result.lens_tokens)), "token": result.lens_tokens})
    for layer, row in zip(result.layers, result.lens_top):
        frame[f"top@{layer}"] = row
    return frame


@register_view("microscope")
def microscope_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Figure, summary and the five tables of a microscope run (the removal table on corpus runs only)."""
    key = entry_key(entry)
    removal = [table_section(lambda: result.removal, key + "-removal",
                             "Perplexity when a class is deleted (control: as many random content tokens)")]
    return [figure_section(result, key), *summary_section(result),
            table_section(result.layer_frame, key + "-layers", "Per layer"),
            table_section(lambda: result.classes, key + "-classes", "Per token class"),
            *(removal if len(result.removal) else []),
            table_section(result.to_frame, key + "-tokens", "Per token"),
            table_section(lambda: lens_table(result), key + "-lens", "Logit lens: top token per layer")]

"""Text that goes into plotly figures, made safe to show literally.

Plotly reads a subset of HTML in every text it draws (titles, axis and tick labels, legend names,
hover text, annotations, heatmap cell text): `<a href=...>` becomes a live link, `<b>` bold, `<br>`
a line break. Prompts, tokens, answers, model specs and file names are user text, so every figure
passes them through `escape_label` before placing them. Plotly decodes the entities back, so the
text stays visible exactly as typed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def escape_label(text: object) -> str:
    """`str(text)` with `&`, `<`, `>` as HTML entities and newlines as a visible `\\n`, for any plotly text."""
    return html.escape(str(text).replace("\n", "\\n"), quote=False)


def token_labels(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Unique, escaped axis labels 'i:token' (plotly merges equal category labels) of `tokens[start:]`."""
    return [f"{i}:{escape_label(t)}" for i, t in enumerate(tokens[start:], start)]

"""Pages of the probe analyses whose generic page misses what matters:

- `probe_trajectory`: the detector beside the best single-layer probe (held-out scores) first, the
  figure, single-layer scores per layer, the detector's weights, then the held-out statements with
  their trajectory features;
- `probe_checkpoints`: the figure, accuracy at each checkpoint's best layer, then per layer.

Imported once by the app, which registers them. Statements are untrusted text: they go into table
cells only, which React escapes.
"""

from __future__ import annotations

from typing import Any

from dashboards.context import Context
from dashboards.views import entry_key, figure_section, register_view, summary_section, table_section
from interp.workspace import Entry


@register_view("probe_trajectory")
def trajectory_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Held-out scores, figure, per-layer probe scores, detector weights, held-out statements."""
    key = entry_key(entry)
    held = lambda: result.statements[result.statements.split == "held-out"]  # noqa: E731
    return [table_section(lambda: result.scores, key + "-scores", "Held-out: detector vs best single-layer probe"),
            figure_section(result, key),
            table_section(lambda: result.layer_scores, key + "-layers",
                          "Single-layer probes per layer (cv: inside the training split)"),
            table_section(lambda: result.weights, key + "-weights", "Detector weights (standardised features)"),
            table_section(held, key, "Held-out statements and their trajectory features"),
            *summary_section(result)]


@register_view("probe_checkpoints")
def checkpoints_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Figure, best-layer accuracy per checkpoint, per-layer accuracy per checkpoint."""
    key = entry_key(entry)
    return [figure_section(result, key),
            table_section(result.to_frame, key, "Best layer per checkpoint (cross-validated)"),
            table_section(lambda: result.layers, key + "-layers", "Every layer of every checkpoint"),
            *summary_section(result)]

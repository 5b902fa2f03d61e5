"""Pages for the outlier results whose generic page would hide their second table:

- `domain_sinks`: the heads x domains figure, the heads that switch between domains, every head's rates;
- `secondary_sinks`: the figure, the sinks per creating MLP block, the norm relations, every sink;
- `massive_dynamics`: the measured course beside the fitted curve per layer, and the fitted parameters.

Imported once by the app, which registers them.
"""

from __future__ import annotations

from typing import Any

from dashboards.context import Context
from dashboards.views import entry_key, figure_section, register_view, summary_section, table_section
from interp.workspace import Entry


@register_view("domain_sinks")
def domain_sinks_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Active and dormant heads: figure, switching heads, all heads."""
    key = entry_key(entry)
    return [figure_section(result, key), *summary_section(result),
            table_section(result.switching, key + "-switching", "Heads that switch between domains"),
            table_section(result.heads, key + "-heads", "Sink rate per head and domain")]


@register_view("secondary_sinks")
def secondary_sinks_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Secondary sinks: figure, creating MLPs, norm relations, tokens, events."""
    key = entry_key(entry)
    return [figure_section(result, key), *summary_section(result),
            table_section(result.mlp_layers, key + "-mlp", "Secondary sinks per creating MLP block"),
            table_section(result.relations, key + "-relations",
                          "Creating MLP output norm vs sink score and lifetime (correlation)"),
            table_section(result.tokens, key + "-tokens", "Secondary sinks per token"),
            table_section(result.to_frame, key + "-events", "Every secondary sink")]


@register_view("massive_dynamics")
def massive_dynamics_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Massive-activation dynamics: data beside the fitted curves, then the parameters per layer."""
    key = entry_key(entry)
    return [figure_section(result, key), table_section(result.to_frame, key, "Fitted curve per layer"),
            *summary_section(result), table_section(lambda: result.data, key + "-data", "Measured values")]

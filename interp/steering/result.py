"""The dose-response of one steering vector beside a random direction of the same norm."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import torch

from interp.results import Result, register_result

CONDITIONS = ("vector", "random")
SIDE_EFFECTS = ("kl", "fluency")
LABELS = {
    "p_positive": "P(positive), steered run",
    "p_positive_text": "P(positive), text re-read",
    "logit_diff": "logit difference",
    "feature_act": "feature activation downstream",
    "feature_logits": "feature's top-logit gap",
    "kl": "KL on neutral prompts",
    "fluency": "fluency (n-gram entropy)",
}


@register_result
@dataclasses.dataclass
class SteerResult(Result):
    """Per coefficient and condition ("vector", "random": the control), the behaviour measure of the
    vector's source, the side effects and the generations; `interp.steering.measure` defines each column."""

    kind = "steer"
    model: str
    prompt: str
    source: str  # the vector's SPEC (or "tensor")
    hook: str
    positions: str
    coefs: list[float]
    max_new_tokens: int
    samples: int  # 1: greedy; more: top-5 samples, seeded alike in every condition
    seed: int
    vector_norm: float
    behaviour: str  # "probe", "feature", "tokens" or "" (the source defines none)
    behaviour_columns: list[str]
    behaviour_info: dict[str, Any]
    neutral_prompts: int
    vector: torch.Tensor  # [width] float32: what coefficient 1 adds
    frame: pd.DataFrame  # coef, condition, *behaviour_columns, kl, fluency
    generations: pd.DataFrame  # coef, condition, sample, text (the generated continuation)

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    @property
    def measures(self) -> list[str]:
        return [*self.behaviour_columns, *SIDE_EFFECTS]

    def side_by_side(self) -> pd.DataFrame:
        """One row per coefficient and sample: the steered and the control generation next to each other."""
        wide = self.generations.pivot_table(index=["coef", "sample"], columns="condition", values="text",
                                            aggfunc="first", sort=False)
        return wide.reindex(columns=[c for c in CONDITIONS if c in wide.columns]).reset_index()

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        measures = self.measures
        fig = make_subplots(rows=1, cols=len(measures), subplot_titles=[LABELS.get(m, m) for m in measures])
        for col, measure in enumerate(measures, start=1):
            for condition, dash, colour in (("vector", "solid", "#1f77b4"), ("random", "dash", "#7f7f7f")):
                rows = self.frame[self.frame.condition == condition].sort_values("coef")
                fig.add_trace(go.Scatter(x=rows.coef, y=rows[measure], mode="lines+markers", name=condition,
                                         legendgroup=condition, showlegend=col == 1,
                                         line=dict(dash=dash, color=colour)), 1, col)
        fig.update_xaxes(title_text="coefficient")
        fig.update_layout(height=380, title=escape_label(
            f"Steering with {self.source} at {self.hook} ({self.positions} positions, |v| {self.vector_norm:.3g}); "
            f"control: a random direction of the same norm"))
        return fig

    def summary(self) -> str:
        info = "; ".join(f"{k}: {v}" for k, v in self.behaviour_info.items())
        lines = [f"steering {self.model} with {self.source} at {self.hook}, positions {self.positions}, "
                 f"|vector| {self.vector_norm:.4g}, {self.samples} sample(s) of {self.max_new_tokens} tokens",
                 f"  behaviour measure: {self.behaviour or 'none (the source defines none)'}" + (f" ({info})" if info else ""),
                 self.frame.round(4).to_string(index=False), "generations (vector | random control):"]
        for row in self.side_by_side().itertuples(index=False):
            fields = row._asdict()
            texts = " | ".join(repr(fields.get(c, "")) for c in CONDITIONS)
            lines.append(f"  coef {fields['coef']:g} #{fields['sample']}: {texts}")
        return "\n".join(lines)

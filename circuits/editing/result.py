"""`EditResult`: what an edit did and how it scored, for the terminal, JSON, workspaces and plots."""

from __future__ import annotations

import dataclasses

import pandas as pd

from interp.results import Result, register_result

from circuits.editing.evaluate import METRICS, aggregate


@register_result
@dataclasses.dataclass
class EditResult(Result):
    kind = "edit"
    model: str
    method: str
    layers: list[int]
    requests: list[dict]  # CounterFact-format records of the edits
    cases: pd.DataFrame  # one row per evaluated case and phase ("pre" / "post")
    edit_seconds: float
    seconds: float
    saved_model: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """The per-case scores, before and after."""
        return self.cases

    def scores(self) -> pd.DataFrame:
        """Scores averaged over cases, one row per phase."""
        return aggregate(self.cases)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["scores"] = {phase: {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
                         for phase, row in self.scores().iterrows()}
        return out

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        table = self.scores()
        fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6], subplot_titles=(
            "scores (mean over cases)", "per case: P(new) - P(true) on the rewrite prompt"))
        for phase, row in table.iterrows():
            names = [*METRICS, "score"]
            fig.add_trace(go.Bar(x=names, y=[row[n] for n in names], name=phase), 1, 1)
        for phase, part in self.cases.groupby("phase", sort=False):
            fig.add_trace(go.Bar(x=[escape_label(c) for c in part["case_id"]], y=part["efficacy_magnitude"],
                                 name=f"{phase} magnitude"), 1, 2)
        fig.update_layout(title=escape_label(f"{self.method.upper()} at layers {self.layers} on {self.model}"),
                          barmode="group", height=500)
        return fig

    def summary(self) -> str:
        table = self.scores()
        cols = [c for c in (*METRICS, "score", "efficacy_magnitude", "neighborhood_magnitude", "fluency")
                if c in table.columns]
        lines = [f"{self.method.upper()} at layers {self.layers}: {len(self.requests)} edit(s) in "
                 f"{self.edit_seconds:.1f} s ({self.seconds:.1f} s with scoring)",
                 table[cols].to_string(float_format=lambda x: f"{x:.3f}")]
        for phase in ("pre", "post"):
            part = self.cases[self.cases["phase"] == phase].head(3)
            for _, row in part.iterrows():
                lines.append(f"[{phase}] {row['generation']!r}")
        if self.saved_model:
            lines.append(f"edited model saved to {self.saved_model}")
        return "\n".join(lines)

"""The average indirect effect over many facts (the paper's Figure 2): trace each fact the model knows
and average the indirect effect per token group and layer, as ROME's average-effect notebook does
(each token of a multi-token group counts once, so middle and further tokens weigh by their number).
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch
from tqdm import tqdm

from circuits.facts import FACTS_PATH, fact_prompt, load_facts
from circuits.tracing import GROUPS, KINDS, KIND_COLORS, check_kinds, group_positions, resolve_noise_std, trace
from interp.errors import InterpError
from interp.results import Result, register_result


def trace_facts(model, facts: str = "builtin", limit: int | None = 50, kinds=KINDS, samples: int = 10,
                noise: float = 3.0, noise_std: float | None = None, window: int = 10, seed: int = 1,
                split: str | None = None) -> TraceStudyResult:
    """Trace the first `limit` facts of `facts` ('builtin' or a CounterFact file) that the model answers
    correctly, and average the indirect effects per token group."""
    began = time.perf_counter()
    kinds = check_kinds(kinds)
    if limit is not None and limit < 1:
        raise InterpError(f"--limit must be at least 1 (got {limit})")
    path = FACTS_PATH if facts == "builtin" else facts
    records = load_facts(verified_only=True, model=model, split=split, path=path)[:limit]
    if not records:
        raise InterpError(f"the model answers none of the facts in {facts} correctly; nothing to trace")
    std = resolve_noise_std(model, noise, noise_std)
    L = model.cfg.n_layers
    sums = {k: torch.zeros(len(GROUPS), L) for k in kinds}
    counts = torch.zeros(len(GROUPS))
    highs, lows, case_ids = [], [], []
    for record in tqdm(records, desc="tracing facts"):
        result = trace(model, fact_prompt(record), record["requested_rewrite"]["subject"], kinds=kinds,
                       samples=samples, noise_std=std, window=window, seed=seed, progress=False)
        groups = group_positions(len(result.tokens), tuple(result.subject_range))
        for kind in kinds:
            ie = result.indirect_effect(kind)
            for g, rows in enumerate(groups.values()):
                sums[kind][g] += ie[rows].sum(0)
        counts += torch.tensor([float(len(rows)) for rows in groups.values()])
        highs.append(result.high)
        lows.append(result.low)
        case_ids.append(record["case_id"])
    return TraceStudyResult(
        model=str(getattr(model.cfg, "spec", model.cfg.model_name)), facts=str(facts), case_ids=case_ids,
        high=sum(highs) / len(highs), low=sum(lows) / len(lows), noise_std=std, samples=samples, window=window,
        group_counts=counts.tolist(), effects={k: sums[k] / counts[:, None] for k in kinds},
        seconds=time.perf_counter() - began,
    )


@register_result
@dataclasses.dataclass
class TraceStudyResult(Result):
    kind = "trace_study"
    model: str
    facts: str
    case_ids: list[int]
    high: float  # mean clean probability
    low: float  # mean corrupted probability
    noise_std: float
    samples: int
    window: int
    group_counts: list[float]  # tokens averaged per group
    effects: dict[str, torch.Tensor]  # kind -> [6 groups, L] average indirect effect
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"kind": k, "group": g, "layer": layer, "aie": float(v[i, layer])}
                             for k, v in self.effects.items() for i, g in enumerate(GROUPS)
                             for layer in range(v.shape[1])])

    def peak(self, kind: str) -> tuple[str, int, float]:
        effects = self.effects[kind].nan_to_num(float("-inf"))
        g, layer = divmod(int(effects.argmax()), effects.shape[1])
        return GROUPS[g], layer, float(effects[g, layer])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        kinds = list(self.effects)
        fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True,
                            subplot_titles=[f"average indirect effect ({k})" for k in kinds])
        for i, kind in enumerate(kinds, start=1):
            fig.add_trace(go.Heatmap(z=self.effects[kind].tolist(), y=list(GROUPS), colorscale=KIND_COLORS[kind],
                                     colorbar={"x": i / len(kinds) - 0.02, "len": 0.8, "thickness": 10}), 1, i)
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(height=380, width=420 * len(kinds),
                          title=f"Average indirect effect over {len(self.case_ids)} known facts "
                                f"(clean p {self.high:.3f}, corrupted p {self.low:.3f})")
        return fig

    def summary(self) -> str:
        lines = [f"average indirect effect over {len(self.case_ids)} facts the model knows ({self.facts}), "
                 f"{self.model}: mean clean p={self.high:.4f}, corrupted p={self.low:.4f}"]
        for kind in self.effects:
            group, layer, value = self.peak(kind)
            lines.append(f"{kind:>6}: strongest at the {group}, layer {layer}: AIE {value:+.4f}")
        lines.append(f"({self.seconds:.0f} s)")
        return "\n".join(lines)

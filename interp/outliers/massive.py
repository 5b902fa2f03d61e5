"""Massive activations (Sun et al. 2024): the few hidden-state values that are both large (> 100) and
about 1,000 x the median magnitude of their hidden state, found per layer with their dim and token.

The median is taken per sequence over every value of the layer's hidden state (all tokens, all dims),
as in the reference code, and a value is flagged against its own sequence's median.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from interp.errors import InterpError, check_finite
from interp.outliers.common import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, Collector, Hook, TokenSource,
                                    hidden_state_names, model_name, run_collectors)
from interp.results import Result, register_result

FLAG_COLUMNS = ["layer", "dim", "first", "token_id", "count", "sum", "max_abs"]
TOP_COLUMNS = ["layer", "rank", "value", "abs", "ratio", "dim", "seq", "position", "token_id"]


def check_thresholds(abs_threshold: float, ratio_threshold: float) -> None:
    check_finite("the magnitude threshold", abs_threshold, above=0)
    check_finite("the ratio-to-median threshold", ratio_threshold, at_least=1)


class MassiveCollector(Collector):
    """Per layer: running top-k magnitudes, mean per-sequence median, per-dim maxima and flagged values."""

    def __init__(self, model, abs_threshold: float = 100.0, ratio_threshold: float = 1000.0, top_k: int = 10):
        super().__init__(model)
        check_thresholds(abs_threshold, ratio_threshold)
        if top_k < 1:
            raise InterpError(f"top-k must be at least 1, got {top_k}")
        self.abs_threshold, self.ratio_threshold, self.top_k = abs_threshold, ratio_threshold, top_k
        n = model.cfg.n_layers + 1
        self.median_sum = torch.zeros(n)
        self.dim_max = torch.zeros(n, model.cfg.d_model)
        self.top = [torch.empty(0, len(TOP_COLUMNS) - 2) for _ in range(n)]  # rows without layer and rank
        self.flags: list[torch.Tensor] = []  # aggregated rows [layer, dim, first, token_id, count, sum, max_abs]
        self.example_max = torch.zeros(n, 0)

    def hooks(self) -> list[Hook]:
        return [(name, self._hook(l)) for l, name in enumerate(hidden_state_names(self.model))]

    def _hook(self, layer: int):
        def fn(act: torch.Tensor, hook) -> None:
            self._observe(layer, act.detach().float())
        return fn

    def _observe(self, layer: int, act: torch.Tensor) -> None:
        B, T, d = act.shape
        mag = act.abs()
        median = mag.reshape(B, -1).median(dim=1).values  # [B]
        self.median_sum[layer] += median.sum().cpu()
        self.dim_max[layer] = torch.maximum(self.dim_max[layer], mag.amax((0, 1)).cpu())
        if self.n_sequences == 0:
            if layer == 0:
                self.example_max = torch.zeros(self.dim_max.shape[0], T)
            self.example_max[layer] = mag[0].amax(-1).cpu()

        values, flat = mag.reshape(-1).topk(min(self.top_k, mag.numel()))
        b, t, dim = torch.unravel_index(flat, mag.shape)
        rows = torch.stack([act[b, t, dim], values, values / median[b].clamp(min=1e-12),
                            dim.float(), (b + self.n_sequences).float(), t.float(),
                            self.tokens[b, t].float()], 1).cpu()
        merged = torch.cat([self.top[layer], rows])
        self.top[layer] = merged[merged[:, 1].argsort(descending=True)[: self.top_k]]

        mask = (mag > self.abs_threshold) & (mag >= self.ratio_threshold * median[:, None, None])
        if mask.any():
            b, t, dim = mask.nonzero(as_tuple=True)
            keys = torch.stack([dim, (t == 0).long(), self.tokens[b, t]], 1)
            unique, inverse = keys.unique(dim=0, return_inverse=True)
            signed, size = act[b, t, dim], mag[b, t, dim]
            count = torch.zeros(len(unique)).index_add_(0, inverse, torch.ones_like(signed))
            total = torch.zeros(len(unique)).index_add_(0, inverse, signed)
            peak = torch.zeros(len(unique)).scatter_reduce_(0, inverse, size, "amax")
            layer_col = torch.full((len(unique), 1), float(layer))
            self.flags.append(torch.cat([layer_col, unique.float(), count[:, None], total[:, None], peak[:, None]], 1))

    def result(self, source: str) -> MassiveResult:
        token = self.model.to_single_str_token
        top = pd.DataFrame(
            [[layer, rank, *row] for layer, rows in enumerate(self.top) for rank, row in enumerate(rows.tolist(), 1)],
            columns=TOP_COLUMNS)
        top = top.astype({c: int for c in ("dim", "seq", "position", "token_id")})
        top["token"] = [token(i) for i in top["token_id"]]
        if self.flags:
            flags = pd.DataFrame(torch.cat(self.flags).tolist(), columns=FLAG_COLUMNS)
            flags = flags.groupby(["layer", "dim", "first", "token_id"], as_index=False).agg(
                count=("count", "sum"), sum=("sum", "sum"), max_abs=("max_abs", "max"))
        else:
            flags = pd.DataFrame(columns=FLAG_COLUMNS)
        flags = flags.astype({"layer": int, "dim": int, "first": bool, "token_id": int, "count": int})
        flags["mean"] = flags["sum"] / flags["count"]
        flags["token"] = [token(i) for i in flags["token_id"]]
        return MassiveResult(
            model=model_name(self.model), source=source, n_sequences=self.n_sequences, n_tokens=self.n_tokens,
            abs_threshold=self.abs_threshold, ratio_threshold=self.ratio_threshold,
            median=self.median_sum / max(self.n_sequences, 1), top=top,
            flags=flags.drop(columns="sum").sort_values(["layer", "dim", "first"], ascending=[True, True, False],
                                                        ignore_index=True),
            dim_max=self.dim_max, example_tokens=self.example_tokens or [], example_max=self.example_max,
        )


@register_result
@dataclasses.dataclass
class MassiveResult(Result):
    """Per-layer top magnitudes and medians, and every flagged massive activation (aggregated)."""

    kind = "massive_activations"
    model: str
    source: str
    n_sequences: int
    n_tokens: int
    abs_threshold: float
    ratio_threshold: float
    median: torch.Tensor  # [L+1] mean over sequences of the median |h| of the layer's hidden state
    top: pd.DataFrame  # top-k |h| per layer: value, abs, ratio to its sequence's median, dim, seq, position, token
    flags: pd.DataFrame  # flagged values grouped by (layer, dim, first token?, token): count, mean, max_abs
    dim_max: torch.Tensor  # [L+1, d_model] largest |h| seen per layer and dim
    example_tokens: list[str]
    example_max: torch.Tensor  # [L+1, T] largest |h| over dims per token of the first sequence

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: the largest value with where it sits, the median, the ratio and the flag count."""
        first = self.top[self.top["rank"] == 1].set_index("layer")
        counts = self.flags.groupby("layer")["count"].sum()
        frame = pd.DataFrame({"layer": range(len(self.median))})
        frame["top"] = frame["layer"].map(first["abs"])
        frame["value"] = frame["layer"].map(first["value"])
        frame["dim"] = frame["layer"].map(first["dim"])
        frame["position"] = frame["layer"].map(first["position"])
        frame["token"] = frame["layer"].map(first["token"])
        frame["median"] = self.median.tolist()
        frame["ratio"] = frame["layer"].map(first["ratio"])
        frame["flagged"] = frame["layer"].map(counts).fillna(0).astype(int)
        return frame

    def dims(self) -> pd.DataFrame:
        """One row per dim that carries flagged values: the layers, how often, and on which tokens."""
        rows = []
        for dim, group in self.flags.groupby("dim"):
            total = int(group["count"].sum())
            first = int(group.loc[group["first"], "count"].sum())
            others = group[~group["first"]].groupby("token")["count"].sum().sort_values(ascending=False)
            rows.append({
                "dim": int(dim), "first_layer": int(group["layer"].min()), "last_layer": int(group["layer"].max()),
                "n_layers": int(group["layer"].nunique()), "count": total, "first_token_share": first / total,
                "other_tokens": ", ".join(f"{t!r}x{c}" for t, c in others.head(5).items()),
                "max_abs": float(group["max_abs"].max()),
                "mean": float((group["mean"] * group["count"]).sum() / total),
            })
        return pd.DataFrame(rows, columns=["dim", "first_layer", "last_layer", "n_layers", "count",
                                           "first_token_share", "other_tokens", "max_abs", "mean"])

    def means(self) -> pd.DataFrame:
        """Mean signed value of the flagged activations per (layer, dim, on the first token or not)."""
        f = self.flags.assign(total=self.flags["mean"] * self.flags["count"])
        g = f.groupby(["layer", "dim", "first"], as_index=False)[["total", "count"]].sum()
        return g.assign(mean=g["total"] / g["count"])[["layer", "dim", "first", "count", "mean"]]

    def summary(self) -> str:
        head = (f"massive activations (|h| > {self.abs_threshold:g} and >= {self.ratio_threshold:g} x median) "
                f"in {self.model} over {self.n_tokens} tokens ({self.n_sequences} sequences, {self.source}); "
                "layer 0 = embeddings, layer l = output of block l-1")
        dims = self.dims()
        lines = [head]
        if dims.empty:
            lines.append("no massive activations flagged")
        for row in dims.itertuples():
            where = f"first token {row.first_token_share:.0%}"
            if row.other_tokens:
                where += f"; others: {row.other_tokens}"
            lines.append(f"dim {row.dim}: layers {row.first_layer}-{row.last_layer} ({row.n_layers} layers), "
                         f"{row.count} values, max {row.max_abs:,.0f}, mean {row.mean:,.1f}; {where}")
        frame = self.to_frame()
        frame["top"] = frame["top"].map("{:,.1f}".format)
        frame["median"] = frame["median"].map("{:.3f}".format)
        frame["ratio"] = frame["ratio"].map("{:,.0f}".format)
        lines.append(frame.drop(columns="value").to_string(index=False))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6], subplot_titles=(
            "largest magnitudes and median per layer", "max |h| over dims, first sequence (log10)"))
        layers = list(range(len(self.median)))
        for rank in range(1, min(3, int(self.top["rank"].max())) + 1):
            rows = self.top[self.top["rank"] == rank]
            fig.add_trace(go.Scatter(x=rows["layer"], y=rows["abs"], mode="lines+markers", name=f"top {rank}",
                                     text=[escape_label(f"dim {d}, pos {p}, {t!r}") for d, p, t in
                                           zip(rows["dim"], rows["position"], rows["token"])]), 1, 1)
        fig.add_trace(go.Scatter(x=layers, y=self.median.tolist(), mode="lines+markers", name="median"), 1, 1)
        fig.update_yaxes(type="log", title_text="|h|", row=1, col=1)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.add_trace(go.Heatmap(
            z=self.example_max.clamp(min=1e-6).log10().tolist(), y=layers,
            x=token_labels(self.example_tokens), colorscale="Viridis",
            colorbar=dict(title="log10 |h|"),
            hovertemplate="layer %{y}<br>token %{x}<br>log10 max|h| %{z:.2f}<extra></extra>"), 1, 2)
        fig.update_layout(title=escape_label(f"Massive activations in {self.model} ({self.source})"), height=600)
        return fig


def massive_activations(model, prompts: Sequence[str] | None = None, corpus=None, *,
                        max_tokens: int = DEFAULT_TOKENS, batch_size: int = DEFAULT_BATCH,
                        seq_len: int = DEFAULT_SEQ_LEN, abs_threshold: float = 100.0,
                        ratio_threshold: float = 1000.0, top_k: int = 10) -> MassiveResult:
    """Find massive activations over `prompts`, or over `corpus` (a spec or Corpus; default: built-in)."""
    collector = MassiveCollector(model, abs_threshold, ratio_threshold, top_k)
    source = TokenSource(model, prompts, corpus, max_tokens, batch_size, seq_len)
    run_collectors(model, source, [collector], desc="massive activations")
    return collector.result(source.name)

"""Attention sinks (Gu et al., When Attention Sink Emerges): the attention mass each token receives,
averaged over the queries that can see it, per layer and head.

alpha[l, h, j] = 1/(T - j) * sum_{i >= j} A[l, h, i, j]. A head is a sink head on the first token when
alpha[l, h, 0] > epsilon (0.3); the per-layer sink score is the share of (head, sequence) pairs where
that holds, and the model's sink rate is its mean over layers, as in the paper's Sink_1^epsilon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from interp.outliers.common import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, Collector, Hook, PositionMean,
                                    TokenSource, check_fraction, model_name, run_collectors)
from interp.results import Result, register_result


def token_importance(pattern: torch.Tensor) -> torch.Tensor:
    """[B, H, T, T] causal attention pattern -> [B, H, T] mass each key receives, averaged over its queries."""
    T = pattern.shape[-1]
    seen_by = torch.arange(T, 0, -1, device=pattern.device, dtype=pattern.dtype)  # queries i >= j
    return pattern.sum(-2) / seen_by


class SinkCollector(Collector):
    """Per layer and head: mean importance per position, and how often the first token is a sink."""

    def __init__(self, model, threshold: float = 0.3):
        super().__init__(model)
        self.threshold = check_fraction("the sink threshold", threshold)
        L = model.cfg.n_layers
        self.importance = [PositionMean() for _ in range(L)]
        self.first_hits = torch.zeros(L, model.cfg.n_heads)
        self.example = [torch.empty(0)] * L

    def hooks(self) -> list[Hook]:
        return [(f"blocks.{l}.attn.hook_pattern", self._hook(l)) for l in range(self.model.cfg.n_layers)]

    def _hook(self, layer: int):
        def fn(pattern: torch.Tensor, hook) -> None:
            alpha = token_importance(pattern.detach().float())
            self.importance[layer].add(alpha)
            self.first_hits[layer] += (alpha[:, :, 0] > self.threshold).sum(0).cpu()
            if self.n_sequences == 0:
                self.example[layer] = alpha[0].cpu()
        return fn

    def result(self, source: str) -> SinkResult:
        return SinkResult(
            model=model_name(self.model), source=source, n_sequences=self.n_sequences, n_tokens=self.n_tokens,
            threshold=self.threshold, importance=torch.stack([m.value() for m in self.importance]),
            first_rate=self.first_hits / max(self.n_sequences, 1), example_tokens=self.example_tokens or [],
            example_importance=torch.stack(self.example),
        )


@register_result
@dataclasses.dataclass
class SinkResult(Result):
    """Attention received per (layer, head, position) and the first-token sink heads."""

    kind = "attention_sinks"
    model: str
    source: str
    n_sequences: int
    n_tokens: int
    threshold: float
    importance: torch.Tensor  # [L, H, T] mean over sequences of alpha (attention received per query)
    first_rate: torch.Tensor  # [L, H] share of sequences where alpha[l, h, 0] > threshold
    example_tokens: list[str]
    example_importance: torch.Tensor  # [L, H, T] alpha of the first sequence

    def heads(self) -> pd.DataFrame:
        """One row per (layer, head): attention to the first token, how often it is a sink, sink head or not."""
        L, H = self.first_rate.shape
        alpha0 = self.importance[:, :, 0]
        return pd.DataFrame({
            "layer": [l for l in range(L) for _ in range(H)], "head": [h for _ in range(L) for h in range(H)],
            "first_attention": alpha0.reshape(-1).tolist(), "sink_rate": self.first_rate.reshape(-1).tolist(),
            "sink_head": (alpha0 > self.threshold).reshape(-1).tolist(),
        })

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: mean attention to the first token, sink score (Gu et al.) and sink heads."""
        alpha0 = self.importance[:, :, 0]
        return pd.DataFrame({
            "layer": range(alpha0.shape[0]),
            "first_attention": alpha0.mean(1).tolist(),
            "sink_score": self.first_rate.mean(1).tolist(),
            "sink_heads": (alpha0 > self.threshold).sum(1).tolist(),
        })

    @property
    def sink_rate(self) -> float:
        """Gu et al.'s Sink_1^epsilon: share of (layer, head, sequence) where the first token is a sink."""
        return float(self.first_rate.mean())

    def summary(self) -> str:
        frame = self.to_frame()
        n_heads = int((self.importance[:, :, 0] > self.threshold).sum())
        lines = [
            f"attention sinks in {self.model} over {self.n_tokens} tokens ({self.n_sequences} sequences, "
            f"{self.source}); threshold {self.threshold:g}",
            f"first-token sink rate {self.sink_rate:.1%}; {n_heads} of {self.first_rate.numel()} heads are "
            f"first-token sink heads; mean attention to the first token per layer "
            f"{frame['first_attention'].min():.2f}-{frame['first_attention'].max():.2f}",
        ]
        lines.append(frame.to_string(index=False, float_format="{:.3f}".format))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        frame = self.to_frame()
        L, H = self.first_rate.shape
        fig = make_subplots(rows=1, cols=3, column_widths=[0.25, 0.25, 0.5], subplot_titles=(
            "attention to the first token (head x layer)", "per-layer sink score and attention",
            "attention received per query, first sequence (mean over heads)"))
        fig.add_trace(go.Heatmap(z=self.importance[:, :, 0].tolist(), x=list(range(H)), y=list(range(L)),
                                 zmin=0, zmax=1, colorscale="Reds", showscale=False,
                                 hovertemplate="layer %{y} head %{x}<br>alpha_0 %{z:.3f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=frame["sink_score"], y=frame["layer"], mode="lines+markers",
                                 name="sink score"), 1, 2)
        fig.add_trace(go.Scatter(x=frame["first_attention"], y=frame["layer"], mode="lines+markers",
                                 name="attention to first token"), 1, 2)
        fig.add_trace(go.Heatmap(
            z=self.example_importance.mean(1).tolist(), y=list(range(L)),
            x=token_labels(self.example_tokens), zmin=0, zmax=1, colorscale="Reds",
            hovertemplate="layer %{y}<br>token %{x}<br>alpha %{z:.3f}<extra></extra>"), 1, 3)
        fig.update_xaxes(title_text="head", row=1, col=1)
        fig.update_yaxes(title_text="layer", row=1, col=1)
        fig.update_layout(title=escape_label(f"Attention sinks in {self.model} ({self.source})"), height=600)
        return fig


def attention_sinks(model, prompts: Sequence[str] | None = None, corpus=None, *, max_tokens: int = DEFAULT_TOKENS,
                    batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                    threshold: float = 0.3) -> SinkResult:
    """Attention received per token, layer and head over `prompts` or `corpus`; first-token sink heads."""
    collector = SinkCollector(model, threshold)
    source = TokenSource(model, prompts, corpus, max_tokens, batch_size, seq_len)
    run_collectors(model, source, [collector], desc="attention sinks")
    return collector.result(source.name)

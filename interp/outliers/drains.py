"""Value-state drains and residual-state peaks (Guo et al., Active-Dormant attention heads): the sink
token writes almost nothing through attention (small norm of its value vector after each head's W_O
slice) while its residual stream norm is far larger than every other token's.

Value norm of token j in head h: |v_j W_O^h|, computed as sqrt(v_j^T (W_O^h W_O^h^T) v_j), which
needs a d_head x d_head Gram matrix per head instead of a d_model-wide product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from interp.outliers.common import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, Collector, Hook, PositionMean,
                                    TokenSource, hidden_state_names, model_name, run_collectors)
from interp.results import Result, register_result


def value_norms(v: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """[B, T, n_kv_heads, d_head] values and [H, d_head, d_head] W_O Gram matrices -> [B, H, T] norms.

    Grouped-query heads share key/value heads as TransformerLens does (repeat_interleave).
    """
    v = v.repeat_interleave(gram.shape[0] // v.shape[2], dim=2)
    return torch.einsum("bthi,hij,bthj->bht", v, gram, v).clamp(min=0).sqrt()


class DrainCollector(Collector):
    """Mean per position of each head's value norm after W_O and of each layer's residual norm."""

    def __init__(self, model):
        super().__init__(model)
        W_O = model.W_O.detach().float()  # [L, H, d_head, d_model]
        self.gram = W_O @ W_O.transpose(-1, -2)
        self.value = [PositionMean() for _ in range(model.cfg.n_layers)]
        self.resid = [PositionMean() for _ in range(model.cfg.n_layers + 1)]
        self.example_value = [torch.empty(0)] * model.cfg.n_layers
        self.example_resid = [torch.empty(0)] * (model.cfg.n_layers + 1)

    def hooks(self) -> list[Hook]:
        values = [(f"blocks.{l}.attn.hook_v", self._value_hook(l)) for l in range(self.model.cfg.n_layers)]
        return values + [(name, self._resid_hook(l)) for l, name in enumerate(hidden_state_names(self.model))]

    def _value_hook(self, layer: int):
        def fn(v: torch.Tensor, hook) -> None:
            norms = value_norms(v.detach().float(), self.gram[layer].to(v.device))
            self.value[layer].add(norms)
            if self.n_sequences == 0:
                self.example_value[layer] = norms[0].cpu()
        return fn

    def _resid_hook(self, layer: int):
        def fn(act: torch.Tensor, hook) -> None:
            norms = act.detach().float().norm(dim=-1)
            self.resid[layer].add(norms)
            if self.n_sequences == 0:
                self.example_resid[layer] = norms[0].cpu()
        return fn

    def result(self, source: str) -> DrainResult:
        return DrainResult(
            model=model_name(self.model), source=source, n_sequences=self.n_sequences, n_tokens=self.n_tokens,
            value_norm=torch.stack([m.value() for m in self.value]),
            resid_norm=torch.stack([m.value() for m in self.resid]),
            example_tokens=self.example_tokens or [], example_value_norm=torch.stack(self.example_value),
            example_resid_norm=torch.stack(self.example_resid),
        )


@register_result
@dataclasses.dataclass
class DrainResult(Result):
    """Per-position value norms after W_O (per layer and head) and residual norms (per layer)."""

    kind = "value_drains"
    model: str
    source: str
    n_sequences: int
    n_tokens: int
    value_norm: torch.Tensor  # [L, H, T] mean over sequences of |v_j W_O^h|
    resid_norm: torch.Tensor  # [L+1, T] mean over sequences of |h_j| (layer 0 = embeddings)
    example_tokens: list[str]
    example_value_norm: torch.Tensor  # [L, H, T] first sequence
    example_resid_norm: torch.Tensor  # [L+1, T] first sequence

    def to_frame(self) -> pd.DataFrame:
        """Per layer l: block l's value norms (computed from hidden state l; none after the last block) and
        hidden state l's residual norm, for the first token vs the mean of the others."""
        value = self.value_norm.mean(1)  # [L, T]
        v0, v_rest = value[:, 0], value[:, 1:].mean(-1)
        r0, r_rest = self.resid_norm[:, 0], self.resid_norm[:, 1:].mean(-1)
        L = value.shape[0]
        return pd.DataFrame({
            "layer": range(L + 1),
            "value_first": v0.tolist() + [None], "value_others": v_rest.tolist() + [None],
            "value_ratio": (v0 / v_rest.clamp(min=1e-12)).tolist() + [None],
            "resid_first": r0.tolist(), "resid_others": r_rest.tolist(),
            "resid_ratio": (r0 / r_rest.clamp(min=1e-12)).tolist(),
        })

    def summary(self) -> str:
        frame = self.to_frame()
        drains = frame["value_ratio"].dropna()
        return "\n".join([
            f"value drains and residual peaks in {self.model} over {self.n_tokens} tokens "
            f"({self.n_sequences} sequences, {self.source}); ratios = first token / mean of the others",
            f"value norm after W_O: first-token ratio median {drains.median():.2f} (min {drains.min():.2f}); "
            f"residual norm: first-token ratio max {frame['resid_ratio'].max():.1f} "
            f"at layer {int(frame['resid_ratio'].idxmax())}",
            frame.to_string(index=False, float_format="{:.2f}".format, na_rep="-"),
        ])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        frame = self.to_frame()
        labels = token_labels(self.example_tokens)
        fig = make_subplots(rows=1, cols=3, subplot_titles=(
            "first token / others, per layer", "value norm after W_O (mean over heads), first sequence",
            "residual norm (log10), first sequence"))
        fig.add_trace(go.Scatter(x=frame["layer"], y=frame["value_ratio"], mode="lines+markers",
                                 name="value norm ratio"), 1, 1)
        fig.add_trace(go.Scatter(x=frame["layer"], y=frame["resid_ratio"], mode="lines+markers",
                                 name="residual norm ratio"), 1, 1)
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.add_trace(go.Heatmap(z=self.example_value_norm.mean(1).tolist(), x=labels,
                                 y=list(range(self.value_norm.shape[0])), colorscale="Blues",
                                 showscale=False), 1, 2)
        fig.add_trace(go.Heatmap(z=self.example_resid_norm.clamp(min=1e-6).log10().tolist(), x=labels,
                                 y=list(range(self.resid_norm.shape[0])), colorscale="Viridis"), 1, 3)
        fig.update_layout(title=escape_label(f"Value drains and residual peaks in {self.model} ({self.source})"),
                          height=600)
        return fig


def value_drains(model, prompts: Sequence[str] | None = None, corpus=None, *, max_tokens: int = DEFAULT_TOKENS,
                 batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN) -> DrainResult:
    """Value norms after W_O and residual norms per token over `prompts` or `corpus`."""
    collector = DrainCollector(model)
    source = TokenSource(model, prompts, corpus, max_tokens, batch_size, seq_len)
    run_collectors(model, source, [collector], desc="value drains")
    return collector.result(source.name)

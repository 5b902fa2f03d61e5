"""Secondary attention sinks (Wong et al., On the Existence and Behavior of Secondary Attention Sinks):
tokens other than the first whose hidden state points the same way as the first token's
(|cos| > 0.9) in middle layers, for a run of consecutive layers, and the attention they draw there.

A token counts at a layer only when that layer has a primary sink (some head gives the first token
more than the sink threshold of attention, `sinks.token_importance`), and only when its token id
differs from the first token's (a copy of the first token starts out identical to it, which says
nothing). The attention a secondary sink draws (its sink score) is the mean over those primary-sink
heads. As in the paper, each sink is traced to the MLP that creates it: the block before the sink
appears whose `hook_mlp_out` writes the largest norm into the token; `relations()` then relates that
norm to the sink score and to the sink's lifetime (the number of layers it lasts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from interp.errors import InterpError
from interp.hooks import mlp_out, pattern
from interp.outliers.common import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, Collector, Hook, TokenSource,
                                    check_fraction, hidden_state_names, model_name, run_collectors)
from interp.outliers.sinks import token_importance
from interp.results import Result, register_result

EVENT_COLUMNS = ["seq", "position", "token", "start_layer", "end_layer", "n_layers", "mean_cos", "attention",
                 "first_attention", "mlp_layer", "mlp_norm", "mlp_ratio"]
RELATIONS = [("mlp_norm", "attention"), ("mlp_norm", "n_layers")]


def default_layers(model) -> list[int]:
    """Hidden states 1..L-1: every block output but the last (the embeddings repeat tokens trivially)."""
    return list(range(1, model.cfg.n_layers))


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end] index pairs of the runs of True in `flags`."""
    out, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i - 1))
            start = None
    return out


class SecondaryCollector(Collector):
    """Per batch: cosine with the first token, attention per head and MLP output norms, then runs."""

    def __init__(self, model, threshold: float = 0.9, layers: Sequence[int] | None = None,
                 sink_threshold: float = 0.3):
        super().__init__(model)
        self.threshold = check_fraction("the cosine threshold", threshold)
        self.sink_threshold = check_fraction("the sink threshold", sink_threshold)
        self.layers = sorted(set(default_layers(model) if layers is None else layers))
        L = model.cfg.n_layers
        if not self.layers or not all(1 <= l < L for l in self.layers):
            raise InterpError(f"secondary-sink layers must lie in 1..{L - 1} (hidden states read by a block)")
        self.cos: dict[int, torch.Tensor] = {}
        self.attention: dict[int, torch.Tensor] = {}
        self.mlp_norm: dict[int, torch.Tensor] = {}
        self.events: list[list] = []
        self.typical_sum = torch.zeros(len(self.layers))
        self.example_cos = torch.empty(0)

    def hooks(self) -> list[Hook]:
        names = hidden_state_names(self.model)
        return ([(names[l], self._cos_hook(l)) for l in self.layers]
                + [(pattern(l), self._attention_hook(l)) for l in self.layers]
                + [(mlp_out(b), self._mlp_hook(b)) for b in range(self.layers[-1])])

    def _cos_hook(self, layer: int):
        def fn(act: torch.Tensor, hook) -> None:
            act = act.detach().float()
            self.cos[layer] = torch.nn.functional.cosine_similarity(act, act[:, :1], dim=-1).cpu()
        return fn

    def _attention_hook(self, layer: int):
        def fn(probs: torch.Tensor, hook) -> None:
            self.attention[layer] = token_importance(probs.detach().float()).cpu()  # [B, H, T]
        return fn

    def _mlp_hook(self, block: int):
        def fn(out: torch.Tensor, hook) -> None:
            self.mlp_norm[block] = out.detach().float().norm(dim=-1).cpu()  # [B, T]
        return fn

    def end(self) -> None:
        cos = torch.stack([self.cos[l] for l in self.layers], 1)  # [B, nL, T]
        attention, has_primary = sink_head_attention(torch.stack([self.attention[l] for l in self.layers], 1),
                                                     self.sink_threshold)
        mlp = torch.stack([self.mlp_norm[b] for b in range(self.layers[-1])], 1)  # [B, blocks, T]
        if self.n_sequences == 0:
            self.example_cos = cos[0]
        if cos.shape[-1] > 1:
            self.typical_sum += cos[:, :, 1:].abs().median(-1).values.sum(0)
        tokens = self.tokens.cpu()
        flags = (cos.abs() > self.threshold) & has_primary[:, :, None] & (tokens != tokens[:, :1])[:, None, :]
        lo, index = self.layers[0], {l: i for i, l in enumerate(self.layers)}
        for b, t in flags.any(1).nonzero().tolist():
            token = self.model.to_single_str_token(int(tokens[b, t]))
            by_layer = [l in index and bool(flags[b, index[l], t]) for l in range(lo, self.layers[-1] + 1)]
            for start, end in runs(by_layer):
                i, j = index[lo + start], index[lo + end]
                creator, norm, ratio = creating_mlp(mlp[b], t, lo + start)
                self.events.append([
                    self.n_sequences + b, t, token, lo + start, lo + end, j - i + 1,
                    float(cos[b, i:j + 1, t].abs().mean()), float(attention[b, i:j + 1, t].mean()),
                    float(attention[b, i:j + 1, 0].mean()), creator, norm, ratio,
                ])
        super().end()

    def result(self, source: str) -> SecondaryResult:
        return SecondaryResult(
            model=model_name(self.model), source=source, n_sequences=self.n_sequences, n_tokens=self.n_tokens,
            threshold=self.threshold, layers=self.layers, events=pd.DataFrame(self.events, columns=EVENT_COLUMNS),
            typical_cos=self.typical_sum / max(self.n_sequences, 1),
            example_tokens=self.example_tokens or [], example_cos=self.example_cos,
            sink_threshold=self.sink_threshold,
        )


def sink_head_attention(alpha: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha [B, nL, H, T] (attention received per query) -> ([B, nL, T] its mean over the heads where
    the first token is a primary sink (alpha[..., 0] > threshold), 0 where none is; [B, nL] whether any is)."""
    sink = alpha[..., 0] > threshold
    n = sink.sum(-1)
    mean = (alpha * sink[..., None]).sum(-2) / n.clamp(min=1)[..., None]
    return mean, n > 0


def creating_mlp(norms: torch.Tensor, position: int, start_layer: int) -> tuple[int, float, float]:
    """norms [blocks, T] of `hook_mlp_out` in one sequence -> the block among 0..start_layer-1 (those
    that write before hidden state `start_layer`) with the largest output norm at `position`, that
    norm, and its ratio to the block's median norm over the sequence's other non-first tokens."""
    column = norms[:start_layer, position]
    block = int(column.argmax())
    others = torch.cat([norms[block, 1:position], norms[block, position + 1:]])
    typical = float(others.median()) if others.numel() else float("nan")
    norm = float(column[block])
    return block, norm, norm / typical if typical > 0 else float("nan")


@register_result
@dataclasses.dataclass
class SecondaryResult(Result):
    """Every run of layers over which a non-first token's hidden state aligns with the first token's."""

    kind = "secondary_sinks"
    model: str
    source: str
    n_sequences: int
    n_tokens: int
    threshold: float
    layers: list[int]  # scanned hidden-state layers
    events: pd.DataFrame  # one row per (sequence, position, run of layers)
    typical_cos: torch.Tensor  # [len(layers)] median |cos| of the other tokens with the first, mean over sequences
    example_tokens: list[str]
    example_cos: torch.Tensor  # [len(layers), T] cosine with the first token, first sequence
    sink_threshold: float = 0.3  # a layer needs a head whose attention to the first token is above this

    def to_frame(self) -> pd.DataFrame:
        return self.events

    def _by(self, key: str, **stats: tuple[str, str]) -> pd.DataFrame:
        """The sinks grouped by `key`: their count and `stats` (pandas named aggregations), most frequent first."""
        if self.events.empty:
            return pd.DataFrame(columns=[key, "count", *stats])
        g = self.events.groupby(key, as_index=False).agg(count=("seq", "size"), **stats)
        return g.sort_values("count", ascending=False, ignore_index=True)

    def tokens(self) -> pd.DataFrame:
        """Per token string: how many secondary sinks, their typical layers and the attention they draw."""
        return self._by("token", start_layer=("start_layer", "median"), n_layers=("n_layers", "mean"),
                        attention=("attention", "mean"))

    def mlp_layers(self) -> pd.DataFrame:
        """Per creating MLP block: how many secondary sinks it makes, their mean norm, score and lifetime."""
        return self._by("mlp_layer", mlp_norm=("mlp_norm", "mean"), attention=("attention", "mean"),
                        n_layers=("n_layers", "mean"))

    def relations(self) -> pd.DataFrame:
        """Pearson and Spearman correlation over the sinks of the creating MLP's output norm with the
        sink score (attention drawn) and with the lifetime (layers); None with < 3 sinks or no spread."""
        rows = []
        for x, y in RELATIONS:
            pair = self.events[[x, y]].astype(float).dropna()
            spread = len(pair) >= 3 and pair[x].nunique() > 1 and pair[y].nunique() > 1
            rows.append({"x": x, "y": y, "n": len(pair),
                         "pearson": float(pair[x].corr(pair[y])) if spread else None,
                         "spearman": float(pair[x].rank().corr(pair[y].rank())) if spread else None})
        return pd.DataFrame(rows)

    def per_layer(self) -> pd.Series:
        """Number of secondary sinks alive at each scanned layer, per sequence."""
        alive = {l: 0 for l in self.layers}
        for row in self.events.itertuples():
            for l in range(row.start_layer, row.end_layer + 1):
                alive[l] += 1
        return pd.Series(alive, name="per_sequence") / max(self.n_sequences, 1)

    def summary(self) -> str:
        e = self.events
        head = (f"secondary sinks (|cos| > {self.threshold:g} with the first token, a primary sink head with "
                f"attention > {self.sink_threshold:g}, not the first token's id; layers "
                f"{self.layers[0]}-{self.layers[-1]}) in {self.model} over {self.n_tokens} tokens "
                f"({self.n_sequences} sequences, {self.source})")
        typical = (f"median |cos| of the other tokens with the first: {self.typical_cos.min():.2f}-"
                   f"{self.typical_cos.max():.2f} over these layers")
        if float(self.typical_cos.max()) > self.threshold - 0.2:
            typical += " (close to the threshold: the hidden states are anisotropic, alignment says little)"
        if e.empty:
            return "\n".join([head, typical, "no secondary sinks found"])
        alive = self.per_layer()
        busiest = alive[alive > 0]
        return "\n".join([
            head,
            typical,
            f"{len(e)} secondary sinks ({len(e) / max(self.n_sequences, 1):.1f} per sequence); lifetime "
            f"{e['n_layers'].median():.0f} layers (median, max {e['n_layers'].max()}); they draw "
            f"{e['attention'].mean():.3f} attention per query vs {e['first_attention'].mean():.3f} for the first "
            "token in the same layers",
            "present in layers " + ", ".join(f"{l}:{v:.1f}" for l, v in busiest.items()) + " (per sequence)",
            "most frequent tokens:",
            self.tokens().head(10).to_string(index=False, float_format="{:.2f}".format),
            "created by MLP block (largest hook_mlp_out norm on the token before the sink appears):",
            self.mlp_layers().head(10).to_string(index=False, float_format="{:.2f}".format),
            "correlation of that MLP output norm with the sink score and the lifetime:",
            self.relations().to_string(index=False, float_format="{:.2f}".format),
        ])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        fig = make_subplots(rows=1, cols=3, column_widths=[0.2, 0.25, 0.55], subplot_titles=(
            "secondary sinks alive per layer (per sequence)", "creating MLP norm vs sink score (colour: lifetime)",
            "|cos| with the first token, first sequence"))
        alive = self.per_layer()
        fig.add_trace(go.Bar(x=alive.values.tolist(), y=alive.index.tolist(), orientation="h",
                             name="alive"), 1, 1)
        e = self.events
        fig.add_trace(go.Scatter(
            x=e["mlp_norm"].tolist(), y=e["attention"].tolist(), mode="markers", name="secondary sinks",
            marker=dict(color=e["n_layers"].tolist(), colorscale="Viridis", showscale=False),
            text=[escape_label(f"{t!r}, MLP {m}, {n} layers") for t, m, n in zip(e["token"], e["mlp_layer"],
                                                                                e["n_layers"])]), 1, 2)
        fig.add_trace(go.Heatmap(
            z=self.example_cos.abs().tolist(), y=self.layers, zmin=0, zmax=1, colorscale="Purples",
            x=token_labels(self.example_tokens),
            hovertemplate="layer %{y}<br>token %{x}<br>|cos| %{z:.3f}<extra></extra>"), 1, 3)
        fig.update_yaxes(title_text="layer", row=1, col=1)
        fig.update_xaxes(title_text="MLP output norm", row=1, col=2)
        fig.update_yaxes(title_text="attention per query", row=1, col=2)
        fig.update_layout(title=escape_label(f"Secondary sinks in {self.model} ({self.source})"), height=600)
        return fig


def secondary_sinks(model, prompts: Sequence[str] | None = None, corpus=None, *, max_tokens: int = DEFAULT_TOKENS,
                    batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN, threshold: float = 0.9,
                    layers: Sequence[int] | None = None, sink_threshold: float = 0.3) -> SecondaryResult:
    """Tokens whose hidden state aligns with the first token's over a run of middle layers where a
    head sinks on the first token, with the MLP that creates each of them."""
    collector = SecondaryCollector(model, threshold, layers, sink_threshold)
    source = TokenSource(model, prompts, corpus, max_tokens, batch_size, seq_len)
    run_collectors(model, source, [collector], desc="secondary sinks")
    return collector.result(source.name)

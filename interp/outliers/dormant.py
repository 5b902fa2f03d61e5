"""Active and dormant attention heads per input domain (Guo et al. 2024, Active-Dormant Attention
Heads): a head is dormant on a domain when it parks its attention on the first token (the sink) for
most queries, and active when it attends elsewhere; some heads switch with the domain.

Per head and domain, the sink rate is the share of queries i >= 1 whose attention to the first token
A[i, 0] is above the sink threshold (0.3, as in `sinks.py`; query 0 can only attend to itself, so it
is left out). A head is dormant on a domain when its sink rate is at least `dormant_rate` (0.5), and
it switches when it is dormant on one domain, active on another, and its rates differ by at least
`min_spread` (0.25), so that a head hovering at the cut-off does not count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from interp.hooks import pattern
from interp.outliers.common import (DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, Collector, Hook, TokenSource,
                                    check_fraction, model_name, run_collectors)
from interp.results import Result, register_result


def first_token_hits(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, T, T] attention pattern -> ([H] queries i >= 1 with A[i, 0] > threshold, [H] their summed
    attention to the first token), both summed over the batch."""
    first = probs[:, :, 1:, 0]
    return (first > threshold).sum((0, 2)), first.sum((0, 2))


class FirstTokenCollector(Collector):
    """Per layer and head: how many queries sink on the first token, and their attention to it."""

    def __init__(self, model, threshold: float = 0.3):
        super().__init__(model)
        self.threshold = check_fraction("the sink threshold", threshold)
        shape = (model.cfg.n_layers, model.cfg.n_heads)
        self.hits, self.attention = torch.zeros(shape), torch.zeros(shape)
        self.queries = 0

    def hooks(self) -> list[Hook]:
        return [(pattern(l), self._hook(l)) for l in range(self.model.cfg.n_layers)]

    def _hook(self, layer: int):
        def fn(probs: torch.Tensor, hook) -> None:
            hits, attention = first_token_hits(probs.detach().float(), self.threshold)
            self.hits[layer] += hits.cpu()
            self.attention[layer] += attention.cpu()
        return fn

    def end(self) -> None:
        self.queries += self.tokens.shape[0] * (self.tokens.shape[1] - 1)
        super().end()


@register_result
@dataclasses.dataclass
class DomainSinkResult(Result):
    """Sink rate per (domain, layer, head), and which heads are dormant where."""

    kind = "domain_sinks"
    model: str
    source: str
    threshold: float
    dormant_rate: float
    min_spread: float
    domains: list[str]
    n_tokens: list[int]  # per domain
    rate: torch.Tensor  # [D, L, H] share of queries whose attention to the first token > threshold
    attention: torch.Tensor  # [D, L, H] mean attention of a query (i >= 1) to the first token

    @property
    def dormant(self) -> torch.Tensor:
        """[D, L, H] True where the head is dormant on the domain."""
        return self.rate >= self.dormant_rate

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, domain): sink rate, attention to the first token, state."""
        D, L, H = self.rate.shape
        return pd.DataFrame({
            "layer": [l for _ in range(D) for l in range(L) for _ in range(H)],
            "head": [h for _ in range(D) for _ in range(L) for h in range(H)],
            "domain": [d for d in self.domains for _ in range(L * H)],
            "sink_rate": self.rate.reshape(-1).tolist(), "first_attention": self.attention.reshape(-1).tolist(),
            "state": ["dormant" if x else "active" for x in self.dormant.reshape(-1).tolist()],
        })

    def heads(self) -> pd.DataFrame:
        """One row per head: its sink rate per domain, where it is dormant and active, and whether it switches."""
        D, L, H = self.rate.shape
        rates = self.rate.reshape(D, -1)
        dormant = self.dormant.reshape(D, -1)
        spread = rates.max(0).values - rates.min(0).values
        frame = pd.DataFrame({"layer": [l for l in range(L) for _ in range(H)],
                              "head": [h for _ in range(L) for h in range(H)]})
        for d, domain in enumerate(self.domains):
            frame[f"rate_{domain}"] = rates[d].tolist()
        names = pd.Series(self.domains)
        frame["dormant_in"] = [",".join(names[dormant[:, i].numpy()]) for i in range(L * H)]
        frame["active_in"] = [",".join(names[~dormant[:, i].numpy()]) for i in range(L * H)]
        frame["spread"] = spread.tolist()
        frame["switches"] = (dormant.any(0) & ~dormant.all(0) & (spread >= self.min_spread)).tolist()
        return frame

    def switching(self) -> pd.DataFrame:
        """The heads that are dormant on some domains and active on others, widest spread first."""
        heads = self.heads()
        return heads[heads["switches"]].sort_values("spread", ascending=False, ignore_index=True)

    def summary(self) -> str:
        n_heads = self.rate.shape[1] * self.rate.shape[2]
        lines = [f"active and dormant heads in {self.model} ({self.source}): sink = attention to the first token "
                 f"> {self.threshold:g}; dormant = sink rate >= {self.dormant_rate:g}; switch = dormant on one "
                 f"domain, active on another, rates {self.min_spread:g} or more apart"]
        for d, domain in enumerate(self.domains):
            lines.append(f"{domain}: {int(self.dormant[d].sum())} of {n_heads} heads dormant, mean sink rate "
                         f"{float(self.rate[d].mean()):.2f} ({self.n_tokens[d]} tokens)")
        switching = self.switching()
        lines.append(f"{len(switching)} heads switch between domains" + (":" if len(switching) else ""))
        if len(switching):
            show = switching.head(15).assign(head=lambda f: "L" + f["layer"].astype(str) + "H" + f["head"].astype(str))
            lines.append(show.drop(columns=["layer", "switches"]).to_string(index=False, float_format="{:.2f}".format))
        return "\n".join(lines)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        D, L, H = self.rate.shape
        labels = [f"L{l}H{h}" for l in range(L) for h in range(H)]
        domains = [escape_label(d) for d in self.domains]
        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=(
            "sink rate per head and domain", "dormant heads per layer"))
        fig.add_trace(go.Heatmap(z=self.rate.reshape(D, -1).T.tolist(), x=domains, y=labels, zmin=0, zmax=1,
                                 colorscale="Reds", colorbar=dict(title="sink rate", x=0.42),
                                 hovertemplate="%{y} on %{x}<br>sink rate %{z:.2f}<extra></extra>"), 1, 1)
        for d, domain in enumerate(domains):
            fig.add_trace(go.Scatter(x=list(range(L)), y=self.dormant[d].sum(-1).tolist(), mode="lines+markers",
                                     name=domain), 1, 2)
        fig.update_yaxes(autorange="reversed", row=1, col=1)
        fig.update_xaxes(title_text="layer", row=1, col=2)
        fig.update_yaxes(title_text=f"dormant heads (of {H})", row=1, col=2)
        fig.update_layout(title=escape_label(f"Active and dormant heads by domain in {self.model}"),
                          height=max(500, min(1600, 12 * L * H)))
        return fig


def domain_sinks(model, corpora=None, *, max_tokens: int = DEFAULT_TOKENS, batch_size: int = DEFAULT_BATCH,
                 seq_len: int = DEFAULT_SEQ_LEN, threshold: float = 0.3, dormant_rate: float = 0.5,
                 min_spread: float = 0.25, domains: Sequence[str] | None = None) -> DomainSinkResult:
    """Sink rate of every head on each domain's text (`max_tokens` each) and the heads that switch.

    `corpora` is {domain: Corpus}, a JSONL path whose records carry `text` and `domain`, or None for
    the built-in domain samples (`interp.corpus_domains`; `domains` picks some of them)."""
    from interp.corpus_domains import DOMAINS, domain_corpora, labelled_corpora

    check_fraction("the sink threshold", threshold)
    check_fraction("the dormant rate", dormant_rate)
    check_fraction("the minimum spread", min_spread)
    if corpora is None:
        corpora, source = domain_corpora(domains or DOMAINS), "built-in domain samples"
    elif not isinstance(corpora, dict):
        source = str(corpora)
        corpora = labelled_corpora(corpora)
    else:
        source = "given corpora"
    rates, attention, n_tokens = [], [], []
    for domain, corpus in corpora.items():
        collector = FirstTokenCollector(model, threshold)
        run_collectors(model, TokenSource(model, None, corpus, max_tokens, batch_size, seq_len), [collector],
                       desc=f"sinks on {domain}")
        rates.append(collector.hits / max(collector.queries, 1))
        attention.append(collector.attention / max(collector.queries, 1))
        n_tokens.append(collector.n_tokens)
    return DomainSinkResult(model=model_name(model), source=source, threshold=threshold, dormant_rate=dormant_rate,
                            min_spread=min_spread, domains=list(corpora), n_tokens=n_tokens,
                            rate=torch.stack(rates), attention=torch.stack(attention))

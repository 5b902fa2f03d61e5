"""What massive activations do (Sun et al. 2024, section 3): set every flagged value to zero, or to
its mean over the corpus, and measure the perplexity of the corpus under each.

A value is replaced where it meets the detection rule again during the run (|h| above the magnitude
threshold and >= ratio x its sequence's median) at a (layer, dim) that the detection flagged; the mean
is taken separately for the first token and for other tokens (delimiters carry smaller values).
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.outliers.common import DEFAULT_BATCH, DEFAULT_SEQ_LEN, Hook, TokenSource, hidden_state_names, model_name
from interp.outliers.massive import MassiveResult
from interp.results import Result, register_result

MODES = ("original", "zero", "mean")
DEFAULT_PPL_TOKENS = 1024


def site_table(massive: MassiveResult) -> pd.DataFrame:
    """Per flagged (layer, dim): the mean value on the first token and on other tokens (each falls back
    to the other where only one kind was seen)."""
    means = massive.means()
    if means.empty:
        return pd.DataFrame(columns=["layer", "dim", "mean_first", "mean_other"])
    table = means.pivot_table(index=["layer", "dim"], columns="first", values="mean").reindex(
        columns=[True, False])
    table.columns = ["mean_first", "mean_other"]
    table["mean_first"] = table["mean_first"].fillna(table["mean_other"])
    table["mean_other"] = table["mean_other"].fillna(table["mean_first"])
    return table.reset_index()


class Replace:
    """Forward hooks that set the flagged values at each (layer, dims) to zero or to their mean."""

    def __init__(self, massive: MassiveResult, sites: pd.DataFrame, mode: str):
        self.massive, self.sites, self.mode = massive, sites, mode
        self.replaced = 0

    def hooks(self, model) -> list[Hook]:
        names = hidden_state_names(model)
        return [(names[layer], self._hook(group)) for layer, group in self.sites.groupby("layer")]

    def _hook(self, group: pd.DataFrame):
        dims = torch.tensor(group["dim"].tolist())
        means = torch.tensor([group["mean_first"].tolist(), group["mean_other"].tolist()])  # [2, n_dims]

        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            B, T, _ = act.shape
            median = act.detach().abs().reshape(B, -1).median(dim=1).values[:, None, None]
            values = act[:, :, dims]
            size = values.abs()
            mask = (size > self.massive.abs_threshold) & (size >= self.massive.ratio_threshold * median)
            if self.mode == "zero":
                new = torch.zeros_like(values)
            else:
                first = (torch.arange(T, device=act.device) == 0)[:, None]
                new = torch.where(first, means[0].to(act), means[1].to(act)).expand_as(values)
            act[:, :, dims] = torch.where(mask, new, values)
            self.replaced += int(mask.sum())
            return act
        return fn


@register_result
@dataclasses.dataclass
class InterventionResult(Result):
    """Corpus perplexity with the massive activations left alone, set to zero, and set to their mean."""

    kind = "massive_intervention"
    model: str
    source: str
    n_tokens: int
    sites: pd.DataFrame  # (layer, dim, mean_first, mean_other) that were intervened on
    nll: dict  # mode -> mean next-token loss
    replaced: dict  # mode -> number of values replaced

    @property
    def perplexity(self) -> dict[str, float]:
        return {mode: math.exp(min(nll, 700.0)) for mode, nll in self.nll.items()}

    def to_frame(self) -> pd.DataFrame:
        ppl = self.perplexity
        return pd.DataFrame({"mode": list(self.nll), "nll": list(self.nll.values()),
                             "perplexity": [ppl[m] for m in self.nll],
                             "replaced": [self.replaced.get(m, 0) for m in self.nll]})

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["perplexity"] = self.perplexity
        return out

    def summary(self) -> str:
        dims = sorted(set(self.sites["dim"]))
        layers = sorted(set(self.sites["layer"]))
        where = f"dims {dims} at layers {layers[0]}-{layers[-1]}" if layers else "no flagged values"
        return "\n".join([
            f"perplexity of {self.source} ({self.n_tokens} tokens) in {self.model} with the massive activations "
            f"({where}) left alone, set to zero, set to their mean",
            self.to_frame().to_string(index=False, float_format="{:,.3f}".format),
        ])

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        frame = self.to_frame()
        fig = go.Figure(go.Bar(x=[escape_label(m) for m in frame["mode"]], y=frame["perplexity"],
                               text=frame["perplexity"].map("{:,.2f}".format)))
        fig.update_yaxes(type="log", title_text="perplexity")
        fig.update_layout(title=escape_label(f"Intervening on massive activations in {self.model} ({self.source})"))
        return fig


@torch.no_grad()
def massive_intervention(model, massive: MassiveResult, corpus=None, *, max_tokens: int = DEFAULT_PPL_TOKENS,
                         batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                         modes: tuple[str, ...] = MODES) -> InterventionResult:
    """Corpus perplexity under each of `modes` ("original", "zero", "mean") of the flagged activations
    (only "original" when nothing was flagged)."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise InterpError(f"unknown intervention mode(s) {sorted(unknown)}; use {', '.join(MODES)}")
    sites = site_table(massive)
    if sites.empty:  # nothing to replace: every mode would equal the original
        modes = tuple(m for m in modes if m == "original") or ("original",)
    source = TokenSource(model, None, corpus, max_tokens, batch_size, seq_len)
    nll, replaced, n_tokens = {}, {}, 0
    for mode in modes:
        replace = Replace(massive, sites, mode)
        hooks = [] if mode == "original" else replace.hooks(model)
        total, n_tokens = 0.0, 0
        for tokens in tqdm(source, total=source.total(), desc=f"perplexity ({mode})", unit="batch", leave=False):
            loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)
            count = tokens.shape[0] * (tokens.shape[1] - 1)
            total, n_tokens = total + float(loss) * count, n_tokens + count
        nll[mode], replaced[mode] = total / n_tokens, replace.replaced
    return InterventionResult(model=model_name(model), source=source.name, n_tokens=n_tokens, sites=sites,
                              nll=nll, replaced=replaced)

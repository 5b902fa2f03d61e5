"""Every outlier analysis over the same tokens in one forward pass per batch, then the intervention."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from interp.outliers.common import DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS, TokenSource, run_collectors
from interp.outliers.drains import DrainCollector, DrainResult
from interp.outliers.interventions import DEFAULT_PPL_TOKENS, InterventionResult, massive_intervention
from interp.outliers.massive import MassiveCollector, MassiveResult
from interp.outliers.secondary import SecondaryCollector, SecondaryResult
from interp.outliers.sinks import SinkCollector, SinkResult
from interp.results import Result


@dataclasses.dataclass
class OutlierAnalysis:
    """The results of `analyze_outliers`; `intervention` is None when it was skipped."""

    massive: MassiveResult
    sinks: SinkResult
    drains: DrainResult
    secondary: SecondaryResult
    intervention: InterventionResult | None = None

    def results(self) -> list[Result]:
        found = [self.massive, self.sinks, self.drains, self.secondary, self.intervention]
        return [r for r in found if r is not None]


def analyze_outliers(model, prompts: Sequence[str] | None = None, corpus=None, *,
                     max_tokens: int = DEFAULT_TOKENS, batch_size: int = DEFAULT_BATCH,
                     seq_len: int = DEFAULT_SEQ_LEN, abs_threshold: float = 100.0, ratio_threshold: float = 1000.0,
                     top_k: int = 10, sink_threshold: float = 0.3, cos_threshold: float = 0.9,
                     secondary_layers: Sequence[int] | None = None, ppl_tokens: int = DEFAULT_PPL_TOKENS,
                     ppl_corpus=None) -> OutlierAnalysis:
    """Massive activations, sinks, value drains, residual peaks and secondary sinks over `prompts` or
    `corpus` (default: the built-in corpus); then, unless `ppl_tokens` is 0, the perplexity of
    `ppl_corpus` (default: `corpus`, or the built-in one for prompts) with the massive activations
    zeroed and set to their mean."""
    collectors = [MassiveCollector(model, abs_threshold, ratio_threshold, top_k), SinkCollector(model, sink_threshold),
                  DrainCollector(model), SecondaryCollector(model, cos_threshold, secondary_layers, sink_threshold)]
    source = TokenSource(model, prompts, corpus, max_tokens, batch_size, seq_len)
    run_collectors(model, source, collectors)
    massive, sinks, drains, secondary = (c.result(source.name) for c in collectors)
    intervention = None
    if ppl_tokens:
        ppl_source = ppl_corpus if ppl_corpus is not None else (None if prompts else corpus)
        intervention = massive_intervention(model, massive, ppl_source, max_tokens=ppl_tokens,
                                            batch_size=batch_size, seq_len=seq_len)
    return OutlierAnalysis(massive, sinks, drains, secondary, intervention)

"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations"): block the attention
edges from the last position to a set of source positions in a window of layers around each layer, and
measure the relative change of the answer's probability.

Sources: the subject tokens, the other (non-subject) tokens before the last one, and the last token
itself. Blocking sets the pre-softmax score to -inf (`attn.hook_attn_scores`), so the other edges share
the attention mass; every window runs as one row of a single batched forward pass per source.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from circuits.tracing import check_answer_prob, prepare, window_layers
from interp.results import Result, register_result
from interp.tokens import str_tokens

SOURCES = ("subject", "non-subject", "last")


def source_positions(n_tokens: int, span: tuple[int, int]) -> dict[str, list[int]]:
    last = n_tokens - 1
    return {"subject": list(range(*span)),
            "non-subject": [i for i in range(last) if not span[0] <= i < span[1]],
            "last": [last]}


@torch.no_grad()
def knockout(model, prompt: str, subject: str, target: str | None = None, window: int = 9) -> KnockoutResult:
    """Relative change (%) of p(answer) when the last position cannot attend to each source, per layer."""
    began = time.perf_counter()
    tokens, span, answer_id, multi = prepare(model, prompt, subject, target, samples=1, window=window)
    T, L = tokens.shape[1], model.cfg.n_layers
    probs = model(tokens)[0, -1].softmax(-1)
    answer_id = int(probs.argmax()) if answer_id is None else answer_id
    base = float(probs[answer_id])
    check_answer_prob(model, answer_id, base)

    change = {}
    for source, positions in source_positions(T, span).items():
        if not positions:
            change[source] = torch.zeros(L)
            continue
        hooks = []
        for layer in range(L):
            blocked = torch.zeros(L, T, dtype=torch.bool, device=tokens.device)  # [row = window centre, source]
            for row in range(L):
                if layer in window_layers(row, window, L):
                    blocked[row, positions] = True

            def block(scores, hook, blocked=blocked):  # scores [rows, heads, query, key]
                scores[:, :, -1] = scores[:, :, -1].masked_fill(blocked[:, None], float("-inf"))
                return scores

            hooks.append((f"blocks.{layer}.attn.hook_attn_scores", block))
        logits = model.run_with_hooks(tokens.repeat(L, 1), fwd_hooks=hooks)
        change[source] = (logits[:, -1].softmax(-1)[:, answer_id] - base) / base * 100
    return KnockoutResult(
        model=str(getattr(model.cfg, "spec", model.cfg.model_name)), prompt=prompt, subject=subject,
        tokens=str_tokens(model, tokens), subject_range=list(span), answer=model.tokenizer.decode([answer_id]),
        answer_id=answer_id, target_multi_token=multi, prob=base, window=window, change=change,
        seconds=time.perf_counter() - began,
    )


@register_result
@dataclasses.dataclass
class KnockoutResult(Result):
    kind = "knockout"
    model: str
    prompt: str
    subject: str
    tokens: list[str]
    subject_range: list[int]
    answer: str
    answer_id: int
    target_multi_token: bool
    prob: float  # p(answer) without knockout
    window: int
    change: dict[str, torch.Tensor]  # source -> [L] relative change of p(answer), in percent
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": range(len(next(iter(self.change.values()))))}
                            | {f"{s} %": v.tolist() for s, v in self.change.items()})

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        fig = go.Figure([go.Scatter(y=v.tolist(), mode="lines+markers", name=escape_label(f"last -> {s}"))
                         for s, v in self.change.items()])
        fig.update_layout(title=escape_label(f"Attention knockout ({self.window}-layer windows): "
                                             f"change of p({self.answer!r})"),
                          xaxis_title="layer (window centre)", yaxis_title="% change of probability")
        return fig

    def summary(self) -> str:
        lines = [f"attention knockout on {self.prompt!r}, answer {self.answer!r} p={self.prob:.4f}, "
                 f"windows of {self.window} layers"]
        for source, values in self.change.items():
            layer = int(values.argmin())
            lines.append(f"blocking last -> {source:<11}: largest drop {float(values[layer]):+.1f}% at layer {layer}")
        return "\n".join(lines)

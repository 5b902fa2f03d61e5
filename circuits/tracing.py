"""Causal tracing (Meng et al. 2022, ROME's `experiments/causal_trace.py`), exactly as DESIGN.md section 3
specifies, computed with batched restoration runs (see `circuits.restore`).

The subject's token embeddings are corrupted with Gaussian noise in `samples` copies of the prompt (one
seeded draw shared by every cell); then, for each (token, layer), the clean value of a hidden state
(`hidden`) or of a window of MLP / attention outputs (`mlp`, `attn`) is written back, and the score is
the answer's probability at the last position, averaged over the copies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pandas as pd
import torch

from circuits.restore import BaseRun, Patch, Write, run_patches
from interp.errors import InterpError, check_finite
from interp.hooks import attn_out, mlp_out, resid_post, resid_pre
from interp.results import Result, register_result
from interp.tokens import answer_token, encode, find_span, str_tokens

KINDS = ("hidden", "mlp", "attn")
GROUPS = ("first subject token", "middle subject tokens", "last subject token",
          "first subsequent token", "further tokens", "last token")
OUTPUT_HOOKS = {"mlp": mlp_out, "attn": attn_out}


def check_kinds(kinds) -> tuple[str, ...]:
    """`kinds` as a tuple of valid kind names ('all' expands to every kind)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if "all" in kinds:
        return KINDS
    for kind in kinds:
        if kind not in KINDS:
            raise InterpError(f"unknown trace kind {kind!r}; use one of {', '.join(KINDS)} or all")
    if not kinds:
        raise InterpError(f"no trace kind given; use one of {', '.join(KINDS)} or all")
    return kinds


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers restored around `layer` for the mlp/attn kinds: [l - w//2, l + ceil(w/2)), clipped."""
    return range(max(0, layer - window // 2), min(n_layers, layer + math.ceil(window / 2)))


@torch.no_grad()
def embedding_noise_std(model) -> float:
    """Standard deviation of the token-embedding outputs of the subject tokens of the built-in fact set
    (as they are tokenized inside their prompts), cached per content of the weights; the default noise is 3x this."""
    from circuits.facts import fact_prompt, load_facts, model_cache_file

    cache = model_cache_file(model, "tracing")
    if cache.exists():
        return json.loads(cache.read_text())["embedding_std"]
    rows = []
    for record in load_facts():
        prompt = fact_prompt(record)
        tokens = model.to_tokens(prompt, prepend_bos=False)
        start, end = find_span(model, prompt, record["requested_rewrite"]["subject"], tokens)
        rows.append(model.embed(tokens)[0, start:end].float())  # the scale in float32 whatever the model's dtype
    std = float(torch.cat(rows).std())
    cache.write_text(json.dumps({"embedding_std": std, "subject_tokens": sum(len(r) for r in rows)}))
    return std


@dataclasses.dataclass
class Corruption:
    """The corrupted copies: seeded Gaussian noise on the subject tokens' embeddings (`hook_embed`)."""

    span: tuple[int, int]
    noise: torch.Tensor  # [samples, n_subject_tokens, d_model], already scaled

    @classmethod
    def draw(cls, model, span: tuple[int, int], samples: int, std: float, seed: int) -> Corruption:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(samples, span[1] - span[0], model.cfg.d_model, generator=generator) * std
        return cls(span, noise.to(model.cfg.device))

    def hook(self, first_row: int = 0):
        """A TL hook adding the noise to rows first_row.. of the embedding output."""
        start, end = self.span

        def add_noise(embed, hook):
            embed[first_row:, start:end] += self.noise.to(embed.dtype)
            return embed

        return ("hook_embed", add_noise)


def resolve_noise_std(model, noise: float, noise_std: float | None) -> float:
    """`noise_std` if given, else `noise` x the embedding std of the built-in subjects."""
    if noise_std is not None:
        return check_finite("--noise-std", noise_std, above=0)
    return check_finite("--noise", noise, above=0) * embedding_noise_std(model)


def prepare(model, prompt: str, subject: str, target: str | None, samples: int, window: int):
    """Checked inputs shared by the fast tracer and the reference: tokens, subject span, answer id, multi-token flag."""
    if samples < 1:
        raise InterpError(f"samples must be at least 1 (got {samples}); pass --samples 10")
    if window < 1:
        raise InterpError(f"the window must be at least 1 layer (got {window}); pass --window 10")
    tokens = encode(model, prompt)
    span = find_span(model, prompt, subject, tokens)
    if span[1] >= tokens.shape[1]:
        raise InterpError(f"the subject {subject!r} ends at the last token; the prompt must continue after it "
                          f"(e.g. '{prompt} is')")
    answer_id, multi = answer_token(model, target) if target is not None else (None, False)
    return tokens, span, answer_id, multi


def check_answer_prob(model, answer_id: int, prob: float) -> None:
    if not prob > 1e-12:
        raise InterpError(f"the model gives {model.tokenizer.decode([answer_id])!r} no probability after this "
                          f"prompt ({prob:.1e}); pick a --target the model could predict")


@torch.no_grad()
def trace(model, prompt: str, subject: str, target: str | None = None, kinds=KINDS, samples: int = 10,
          noise: float = 3.0, noise_std: float | None = None, window: int = 10, seed: int = 1,
          progress: bool = True) -> TraceResult:
    """Causal trace of `prompt` with `subject` corrupted; one T x L table of restored probabilities per kind.

    The answer is the clean run's top-1 next token, or the first token of `target` (a multi-token target
    is scored by its first token's probability, and the result says so).
    """
    began = time.perf_counter()
    kinds = check_kinds(kinds)
    tokens, span, answer_id, multi = prepare(model, prompt, subject, target, samples, window)
    std = resolve_noise_std(model, noise, noise_std)
    T, L = tokens.shape[1], model.cfg.n_layers

    names = {resid_post(l) for l in range(L)} | {OUTPUT_HOOKS[k](l) for k in kinds if k != "hidden" for l in range(L)}
    clean_logits, clean = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    probs = clean_logits[0, -1].float().softmax(-1)
    answer_id = int(probs.argmax()) if answer_id is None else answer_id
    high = float(probs[answer_id])
    check_answer_prob(model, answer_id, high)

    corruption = Corruption.draw(model, span, samples, std, seed)
    base = BaseRun.record(model, tokens.repeat(samples, 1), fwd_hooks=[corruption.hook()])
    low = float(base.logits[:, -1].float().softmax(-1)[:, answer_id].mean())

    # Positions before the subject never see the noise, so restoring them changes nothing: score = low.
    cells = [(kind, t, l) for kind in kinds for t in range(span[0], T) for l in range(L)]
    patches = [Patch(_restore_writes(kind, t, l, clean, window, L)) for kind, t, l in cells]
    read = run_patches(model, base, patches, torch.tensor([answer_id], device=tokens.device),
                       desc="tracing" if progress else None)
    restored = (read[..., 0] - read[..., 1]).exp().mean(-1)  # [cells]
    scores = {kind: torch.full((T, L), low) for kind in kinds}
    for (kind, t, l), value in zip(cells, restored.tolist()):
        scores[kind][t, l] = value
    return TraceResult(
        model=str(getattr(model.cfg, "spec", model.cfg.model_name)), prompt=prompt, subject=subject,
        tokens=str_tokens(model, tokens), subject_range=list(span), answer=model.tokenizer.decode([answer_id]),
        answer_id=answer_id, target=target, target_multi_token=multi, high=high, low=low, noise_std=std,
        samples=samples, window=window, seed=seed, scores=scores, seconds=time.perf_counter() - began,
    )


def _restore_writes(kind: str, t: int, layer: int, clean, window: int, n_layers: int) -> tuple[Write, ...]:
    """The clean values one cell writes back: a block output, or a window of MLP / attention outputs."""
    if kind == "hidden":
        # The block output is the next block's input: writing it there skips recomputing this block.
        hook = resid_pre(layer + 1) if layer + 1 < n_layers else resid_post(layer)
        return (Write(hook, t, clean[resid_post(layer)][0, t]),)
    name = OUTPUT_HOOKS[kind]
    return tuple(Write(name(j), t, clean[name(j)][0, t]) for j in window_layers(layer, window, n_layers))


def group_positions(n_tokens: int, span: tuple[int, int]) -> dict[str, list[int]]:
    """Token positions of each group of the paper's average-effect figure (ROME's notebook): first /
    middle / last subject token, first token after the subject, further tokens, last token."""
    start, end = span
    last = n_tokens - 1
    return {
        GROUPS[0]: [start],
        GROUPS[1]: list(range(start + 1, end - 1)),
        GROUPS[2]: [end - 1],
        GROUPS[3]: [end],
        GROUPS[4]: list(range(end + 1, last)),
        GROUPS[5]: [last],
    }


def _marked(tokens: list[str], span) -> list[str]:
    """Row labels: position, token, and '*' on subject tokens (as in the paper's figures)."""
    return [f"{i} {tok!r}{'*' if span[0] <= i < span[1] else ''}" for i, tok in enumerate(tokens)]


KIND_COLORS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
_TITLES = {"hidden": "single restored layer", "mlp": "restored MLP window", "attn": "restored attention window"}


@register_result
@dataclasses.dataclass
class TraceResult(Result):
    kind = "trace"
    model: str
    prompt: str
    subject: str
    tokens: list[str]
    subject_range: list[int]  # [start, end) token indices
    answer: str
    answer_id: int
    target: str | None
    target_multi_token: bool  # scored by the first token of the target
    high: float  # clean probability of the answer
    low: float  # corrupted probability (mean over the noisy copies)
    noise_std: float
    samples: int
    window: int
    seed: int
    scores: dict[str, torch.Tensor]  # kind -> [T, L] restored probability
    seconds: float

    def indirect_effect(self, kind: str) -> torch.Tensor:
        """[T, L] restored probability minus the corrupted probability."""
        return self.scores[kind] - self.low

    def group_effects(self, kind: str) -> torch.Tensor:
        """[6, L] mean indirect effect per token group (GROUPS); NaN for an empty group."""
        ie = self.indirect_effect(kind)
        groups = group_positions(len(self.tokens), tuple(self.subject_range))
        nan = torch.full((ie.shape[1],), float("nan"))
        return torch.stack([ie[rows].mean(0) if rows else nan for rows in groups.values()])

    def peak(self, kind: str) -> dict:
        """The cell with the largest restored probability: position, token, layer, score, indirect effect."""
        scores = self.scores[kind]
        t, layer = divmod(int(scores.argmax()), scores.shape[1])
        return {"position": t, "token": self.tokens[t], "layer": layer, "score": float(scores[t, layer]),
                "indirect_effect": float(scores[t, layer] - self.low),
                "in_subject": self.subject_range[0] <= t < self.subject_range[1]}

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("scores")
        out["kinds"] = {kind: {"scores": self.scores[kind].tolist(), "peak": self.peak(kind),
                               "group_effects": dict(zip(GROUPS, self.group_effects(kind).tolist()))}
                        for kind in self.scores}
        return out

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for kind, scores in self.scores.items():
            for t, token in enumerate(self.tokens):
                for layer, value in enumerate(scores[t].tolist()):
                    rows.append({"kind": kind, "position": t, "token": token, "layer": layer, "score": value,
                                 "indirect_effect": value - self.low,
                                 "subject": self.subject_range[0] <= t < self.subject_range[1]})
        return pd.DataFrame(rows)

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        kinds = list(self.scores)
        labels = [escape_label(label) for label in _marked(self.tokens, self.subject_range)]
        fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.06,
                            subplot_titles=[f"{_TITLES[k]} ({k})" for k in kinds])
        for i, kind in enumerate(kinds, start=1):
            fig.add_trace(go.Heatmap(
                z=self.scores[kind].tolist(), y=labels, x=list(range(self.scores[kind].shape[1])),
                colorscale=KIND_COLORS[kind], zmin=min(self.low, float(self.scores[kind].min())),
                colorbar={"x": i / len(kinds) - 0.02, "len": 0.8, "thickness": 10},
                hovertemplate=f"{kind}<br>token %{{y}}<br>layer %{{x}}<br>p=%{{z:.4f}}<extra></extra>"), 1, i)
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        first = " (first token of the target)" if self.target_multi_token else ""
        fig.update_layout(height=140 + 28 * len(self.tokens), width=420 * len(kinds),
                          title=escape_label(f"Causal trace: p({self.answer!r}){first} clean {self.high:.3f}, "
                                             f"corrupted {self.low:.3f}; subject tokens marked *"))
        return fig

    def summary(self) -> str:
        lines = [f"causal trace of {self.prompt!r}, subject {self.subject!r} "
                 f"(tokens {self.subject_range[0]}..{self.subject_range[1] - 1}), {self.model}",
                 f"answer {self.answer!r}: clean p={self.high:.4f}, corrupted p={self.low:.4f} "
                 f"({self.samples} noisy copies, noise std {self.noise_std:.4g}, window {self.window})"]
        if self.target_multi_token:
            lines.append(f"note: target {self.target!r} has several tokens; scored by the first, {self.answer!r}")
        for kind in self.scores:
            p = self.peak(kind)
            where = "a subject token" if p["in_subject"] else "not a subject token"
            lines.append(f"{kind:>6} effect peaks at token {p['position']} {p['token']!r} ({where}), layer "
                         f"{p['layer']}: p={p['score']:.4f}, indirect effect {p['indirect_effect']:+.4f}")
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)

"""What a steering run is judged by: the behaviour a vector's source defines, side effects, fluency.

A generation (prompt of P tokens, N new tokens, S samples) is read back by one forward pass over its
tokens with the same steering (`Readout`). G are the generated positions P..P+N-1 up to (not including)
a sample's first end-of-sequence token; "the logits that chose the generated tokens" are those at the
positions just before G (P-1..). Every behaviour score is a mean over G (or those logits) within a
sample, then over samples:

- dataset / contrast / probe vectors (`ProbeBehaviour`): a logistic probe fitted at the last layer on
  the source's texts (last token, three quarters of the groups; its accuracy on the held-out quarter is
  reported) gives `p_positive`, the positive class's probability on the steered run's last-layer
  residual at G (after the addition, what the unembedding reads), and `p_positive_text`, the same on an
  unsteered pass over the generated text (did the words themselves turn positive?). `logit_diff`: the
  mean logit of the positive class's top words minus that of the negative class's, at the logits that
  chose the generated tokens; a class's top words are the 10 tokens in the most texts of that class
  among those whose texts are at least 90% of it (`class_words`).
- SAE and transcoder features (`FeatureBehaviour`): `feature_act`, the feature's activation at G
  (its SAE encoding of the input hook's activations before the addition, so the vector's own write is
  not read back), and `feature_logits`, the mean logit of the feature's 10 top tokens (decoder row
  times the unembedding) minus the mean logit over the vocabulary.
- ROME edits (`TokenBehaviour`): `logit_diff`, the new target's first-token logit minus the true one's.

Side effects (`neutral_kl`): the mean KL divergence KL(unsteered || steered) of the next-token
distribution at the last position of neutral prompts (passages of the built-in corpus). Fluency:
`interp.fluency.ngram_entropy` of each sample's generated text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from interp.hooks import resid_post
from interp.steering.core import add_hook, position_mask

TOP_WORDS = 10
NEUTRAL_TOKENS = 32


@dataclasses.dataclass
class Readout:
    """A steered generation read back (tensors on the model's device)."""

    tokens: torch.Tensor  # [S, P + N] prompt and generated tokens
    prompt_len: int
    generated: torch.Tensor  # [S, N] bool: the positions of G (before each sample's first EOS)
    logits: torch.Tensor  # [S, P + N, vocab] of the steered pass
    resid: torch.Tensor  # [S, P + N, d_model] last layer's hook_resid_post in the steered pass (after the addition)
    before: dict[str, torch.Tensor]  # hooks a behaviour reads, taken before the addition
    text_resid: torch.Tensor | None = None  # the last layer's residual in an unsteered pass, when asked for

    def mean_over_generated(self, values: torch.Tensor) -> float:
        """[S, N] values -> mean over each sample's G, then over samples with a non-empty G (NaN if none)."""
        mask = self.generated.to(values.dtype)
        counts = mask.sum(1)
        per_sample = (values * mask).sum(1)[counts > 0] / counts[counts > 0]
        return float(per_sample.mean()) if len(per_sample) else float("nan")

    def at_generated(self, acts: torch.Tensor) -> torch.Tensor:
        """[S, P + N, ...] -> the generated positions [S, N, ...]."""
        return acts[:, self.prompt_len:]

    def choosing_logits(self) -> torch.Tensor:
        """[S, N, vocab]: the logits that chose each generated token (positions P-1 .. P+N-2)."""
        return self.logits[:, self.prompt_len - 1:-1].float()


def token_logit_gap(readout: Readout, tokens: list[int], against: list[int] | None) -> float:
    """Mean logit of `tokens` minus the mean logit of `against` (the whole vocabulary when None), averaged
    over the logits that chose the generated tokens."""
    logits = readout.choosing_logits()
    first = logits[..., tokens].mean(-1)
    second = logits.mean(-1) if against is None else logits[..., against].mean(-1)
    return readout.mean_over_generated(first - second)


class Behaviour:
    """A source's own measure of what its vector does; subclasses set `columns` and `score`."""

    columns: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str] = ""
    reads: tuple[str, ...] = ()  # hooks read before the addition
    reads_text: bool = False  # whether `score` needs `Readout.text_resid`

    def info(self) -> dict[str, Any]:
        """What the measure is built from, as JSON values, for the result."""
        return {}

    def score(self, readout: Readout) -> dict[str, float]:
        raise NotImplementedError


@dataclasses.dataclass
class ProbeBehaviour(Behaviour):
    """A last-layer logistic probe and the two classes' top words (see the module doc)."""

    columns: ClassVar[tuple[str, ...]] = ("p_positive", "p_positive_text", "logit_diff")
    name: ClassVar[str] = "probe"
    coef: torch.Tensor  # [d_model] float32
    intercept: float
    accuracy: float  # on the held-out groups
    positive_words: list[int]
    negative_words: list[int]
    words: dict[str, list[str]]  # "positive"/"negative" -> the words as text
    reads_text: bool = True

    @classmethod
    def fit(cls, model, dataset, last_acts: torch.Tensor, seed: int = 0) -> ProbeBehaviour:
        """Fit on three quarters of `dataset`'s groups (`last_acts` [N, d_model]: each text's last token at the
        last layer), score on the rest, and find the classes' top words."""
        from sklearn.model_selection import GroupShuffleSplit

        from probes.estimators import make_probe

        groups = dataset.groups or [str(i) for i in range(len(dataset))]
        X, y = last_acts.double().numpy(), dataset.labels
        train, held = next(GroupShuffleSplit(1, test_size=0.25, random_state=seed).split(X, y, groups))
        if len(np.unique(y[train])) < 2 or not len(held):
            train = held = np.arange(len(y))  # too few groups to hold some out: the fit is scored on itself
        probe = make_probe("logistic").fit(X[train], y[train])
        positive, negative = class_words(model, dataset.texts, y)
        return cls(coef=torch.as_tensor(probe.coef_, dtype=torch.float32), intercept=float(probe.intercept_),
                   accuracy=float(probe.score(X[held], y[held])), positive_words=positive, negative_words=negative,
                   words={"positive": [model.tokenizer.decode([t]) for t in positive],
                          "negative": [model.tokenizer.decode([t]) for t in negative]})

    def info(self) -> dict[str, Any]:
        return {"probe_accuracy_held_out": self.accuracy, "top_words": self.words}

    def p_positive(self, readout: Readout, resid: torch.Tensor) -> float:
        decision = readout.at_generated(resid).float() @ self.coef.to(resid.device) + self.intercept
        return readout.mean_over_generated(torch.sigmoid(decision))

    def score(self, readout: Readout) -> dict[str, float]:
        return {"p_positive": self.p_positive(readout, readout.resid),
                "p_positive_text": self.p_positive(readout, readout.text_resid),
                "logit_diff": token_logit_gap(readout, self.positive_words, self.negative_words)}


def class_words(model, texts: list[str], labels: np.ndarray, k: int = TOP_WORDS) -> tuple[list[int], list[int]]:
    """(positive class's top tokens, negative class's): among the tokens in at least two texts whose texts are
    at least 90% of one class (sizes balanced), the `k` in the most texts of that class. Template words
    shared by both classes drop out however often they occur; the words that tell the classes apart stay."""
    from probes.collect import tokenize

    counts = np.zeros((2, model.cfg.d_vocab))
    for ids, label in zip(tokenize(model, texts), labels):
        counts[int(label), sorted(set(ids))] += 1
    share = counts / np.maximum(np.bincount(labels.astype(int), minlength=2), 1)[:, None]
    purity = share / np.maximum(share.sum(0), 1e-12)
    out = []
    for c in (1, 0):
        eligible = (purity[c] >= 0.9) & (counts.sum(0) >= 2)
        order = np.argsort(-counts[c], kind="stable")
        out.append([int(t) for t in order[eligible[order]][:k]])
    return out[0], out[1]


@dataclasses.dataclass
class FeatureBehaviour(Behaviour):
    """An SAE or transcoder feature's own activation downstream and its top logits (see the module doc)."""

    columns: ClassVar[tuple[str, ...]] = ("feature_act", "feature_logits")
    name: ClassVar[str] = "feature"
    sae: Any = dataclasses.field(repr=False)
    index: int = 0
    read_hook: str = ""
    top_tokens: list[int] | None = None  # None when the decoder does not write to the residual stream
    top_words: list[str] | None = None

    @classmethod
    def of(cls, model, sae, index: int, read_hook: str) -> FeatureBehaviour:
        row = sae.W_dec[index].detach().float()
        top = None
        if row.numel() == model.cfg.d_model:
            top = (row.to(model.W_U.device) @ model.W_U.float()).topk(TOP_WORDS).indices.tolist()
        return cls(sae=sae, index=index, read_hook=read_hook, top_tokens=top,
                   top_words=None if top is None else [model.tokenizer.decode([t]) for t in top])

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.read_hook,)

    def info(self) -> dict[str, Any]:
        return {"feature": self.index, "read_hook": self.read_hook, "top_logit_words": self.top_words}

    @torch.no_grad()
    def score(self, readout: Readout) -> dict[str, float]:
        acts = readout.at_generated(readout.before[self.read_hook])
        acts = acts.reshape(*acts.shape[:2], -1).to(self.sae.W_dec.device, self.sae.W_dec.dtype)
        feature = self.sae.encode(acts)[..., self.index].float().to(readout.generated.device)
        logits = float("nan") if self.top_tokens is None else token_logit_gap(readout, self.top_tokens, None)
        return {"feature_act": readout.mean_over_generated(feature), "feature_logits": logits}


@dataclasses.dataclass
class TokenBehaviour(Behaviour):
    """The logit of one answer's first token minus another's (or the mean logit): an edit's new fact."""

    columns: ClassVar[tuple[str, ...]] = ("logit_diff",)
    name: ClassVar[str] = "tokens"
    tokens: list[int] = dataclasses.field(default_factory=list)
    against: list[int] | None = None
    words: dict[str, Any] = dataclasses.field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"logit_diff_of": self.words}

    def score(self, readout: Readout) -> dict[str, float]:
        return {"logit_diff": token_logit_gap(readout, self.tokens, self.against)}


@torch.no_grad()
def read_back(model, tokens: torch.Tensor, prompt_len: int, addition: tuple[str, torch.Tensor], positions: str,
              behaviour: Behaviour | None) -> Readout:
    """One steered pass over a generation (`addition`: hook and the vector times its coefficient), reading
    what `behaviour` needs; plus an unsteered pass over the same tokens when it reads the text."""
    last = resid_post(model.cfg.n_layers - 1)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(acts, hook):
            seen[name] = acts.detach()
        return hook

    reads = behaviour.reads if behaviour else ()
    mask = position_mask(positions, 0, tokens.shape[1], prompt_len, tokens.device)
    hooks = [(name, keep(name)) for name in reads] + [add_hook(addition[0], addition[1], mask), (last, keep(last))]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    eos = model.tokenizer.eos_token_id
    new = tokens[:, prompt_len:]
    generated = (torch.cumsum((new == eos).int(), 1) == 0) if eos is not None else torch.ones_like(new, dtype=torch.bool)
    text = model(tokens, stop_at_layer=model.cfg.n_layers) if behaviour and behaviour.reads_text else None
    return Readout(tokens, prompt_len, generated, logits, seen[last], {n: seen[n] for n in reads}, text)


def neutral_prompts(model, n: int, length: int = NEUTRAL_TOKENS) -> torch.Tensor:
    """[n, length] tokens: the start of the built-in corpus, packed (prose and code about Python)."""
    from interp.corpus import builtin_corpus, token_batches

    batch = next(token_batches(model, builtin_corpus(), batch_size=n, seq_len=length, max_tokens=n * length))
    return batch.to(model.cfg.device)


@torch.no_grad()
def neutral_kl(model, tokens: torch.Tensor, base_logprobs: torch.Tensor, addition: tuple[str, torch.Tensor],
               positions: str) -> float:
    """Mean KL(unsteered || steered) of the next-token distribution at the last position of each neutral
    prompt (`base_logprobs` [n, vocab]: the unsteered log-probabilities there); each prompt is its own
    "prompt" for the position rules."""
    mask = position_mask(positions, 0, tokens.shape[1], tokens.shape[1], tokens.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=[add_hook(addition[0], addition[1], mask)])[:, -1]
    steered = logits.float().log_softmax(-1)
    return float((base_logprobs.exp() * (base_logprobs - steered)).sum(-1).mean())

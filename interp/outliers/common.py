"""What every outlier analysis shares: where the tokens come from, the hidden-state hook names, the
collector protocol, and the one loop that runs collectors over batches in a single forward pass each.

Layers follow the Hugging Face `hidden_states` convention used by Sun et al.: layer 0 is the embedding
output and layer l (1..L) the output of block l-1, so "from layer 12" means after block 11.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.tokens import encode

Hook = tuple[str, Callable]

DEFAULT_TOKENS = 2048
DEFAULT_BATCH = 16
DEFAULT_SEQ_LEN = 128


def hidden_state_names(model) -> list[str]:
    """Hook names of the L+1 hidden states: the embedding output, then each block's output."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]


def model_name(model) -> str:
    return getattr(model.cfg, "spec", model.cfg.model_name)


def check_fraction(name: str, value: float) -> float:
    """`value`, or a one-line error when it is not strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        raise InterpError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return value


class TokenSource:
    """Token batches from prompts (one sequence each) or a corpus (packed rows), with a name for results."""

    def __init__(self, model, prompts: Sequence[str] | None = None, corpus=None, max_tokens: int = DEFAULT_TOKENS,
                 batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN):
        self.model = model
        if max_tokens < 2:
            raise InterpError(f"the token budget must be at least 2, got {max_tokens}")
        if prompts:
            self.prompts = [encode(model, p) for p in prompts]
            for prompt, tokens in zip(prompts, self.prompts):
                if tokens.shape[1] < 2:
                    raise InterpError(f"the prompt {prompt!r} has one token; sinks need at least two (give more text)")
            self.name = "prompts"
        else:
            from interp.corpus import load_corpus

            self.prompts = None
            self.corpus = corpus if hasattr(corpus, "documents") else load_corpus(corpus)
            self.name = self.corpus.name
        self.max_tokens, self.batch_size, self.seq_len = max_tokens, batch_size, seq_len

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.prompts is not None:
            yield from self.prompts
            return
        from interp.corpus import token_batches

        for batch in token_batches(self.model, self.corpus, self.batch_size, self.seq_len, self.max_tokens):
            yield batch.to(self.model.cfg.device)

    def total(self) -> int | None:
        """Number of batches, for the progress bar."""
        if self.prompts is not None:
            return len(self.prompts)
        rows = max(1, self.max_tokens // self.seq_len)
        return -(-rows // self.batch_size)


class PositionMean:
    """Running mean over sequences of a per-position statistic [B, ..., T]; sequences may differ in length."""

    def __init__(self):
        self.sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float().cpu()
        T = x.shape[-1]
        if self.sum is None:
            self.sum, self.count = torch.zeros(x.shape[1:]), torch.zeros(T)
        if T > self.sum.shape[-1]:
            grow = T - self.sum.shape[-1]
            self.sum = torch.nn.functional.pad(self.sum, (0, grow))
            self.count = torch.nn.functional.pad(self.count, (0, grow))
        self.sum[..., :T] += x.sum(0)
        self.count[:T] += x.shape[0]

    def value(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)


class Collector:
    """One analysis' statistics, gathered from TransformerLens hooks during shared forward passes.

    `begin(tokens)` is called before each batch's forward pass, the hooks during it, `end()` after it,
    and `result()` once at the end.
    """

    def __init__(self, model):
        self.model = model
        self.tokens: torch.Tensor | None = None
        self.n_sequences = 0
        self.n_tokens = 0
        self.example_tokens: list[str] | None = None

    def hooks(self) -> list[Hook]:
        raise NotImplementedError

    def begin(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens
        if self.example_tokens is None:
            self.example_tokens = list(self.model.to_str_tokens(tokens[0]))

    def end(self) -> None:
        self.n_sequences += self.tokens.shape[0]
        self.n_tokens += self.tokens.numel()

    def result(self, source: str):
        raise NotImplementedError


@torch.no_grad()
def run_collectors(model, source: TokenSource, collectors: Iterable[Collector], desc: str = "outliers") -> None:
    """One forward pass per batch (no unembedding) with every collector's hooks attached."""
    collectors = list(collectors)
    hooks = [hook for c in collectors for hook in c.hooks()]
    for tokens in tqdm(source, total=source.total(), desc=desc, unit="batch", leave=False):
        for c in collectors:
            c.begin(tokens)
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=hooks)
        for c in collectors:
            c.end()

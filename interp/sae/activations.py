"""Training rows from the model: one process's corpus shard, streamed through `interp.streaming`,
epoch after epoch, with the position it has reached kept so that a resumed run continues there.

A row is one token's activation at the hook (attention `hook_z` with heads concatenated); for a
transcoder the target activation follows the input in the same row. The first `skip_positions`
positions of every sequence are left out (position 0 carries the model's massive activations), and
so are later tokens whose norm is far above the median (`within_limits`): a token with a massive
activation (Sun et al. 2024; on the default model at layer 15 about 1 in 4,000, at ~150x the median
norm) carries ~20,000x a typical token's squared norm, so one token dominates its batch's loss and a
few of them most of the variance that explained variance is measured against.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

import torch

from interp.corpus import Corpus
from interp.errors import InterpError
from interp.hooks import check_hook_names
from interp.streaming import stop_layer, stream_activations


@torch.no_grad()
def hook_dims(model, hooks: Sequence[str]) -> dict[str, int]:
    """{hook: width of one token's activation there (heads concatenated)}, read off one 2-token pass."""
    hooks = check_hook_names(model, hooks)
    wanted = set(hooks)
    tokens = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted, stop_at_layer=stop_layer(hooks))
    return {h: int(cache[h][0, 0].numel()) for h in hooks}


def hook_dim(model, hook: str) -> int:
    """Width of one token's activation at `hook` (heads concatenated)."""
    return hook_dims(model, [hook])[hook]


def flat_tokens(acts: torch.Tensor, skip_positions: int = 0) -> torch.Tensor:
    """[batch, seq, ...] -> [batch * (seq - skip), width]; heads are concatenated."""
    acts = acts[:, skip_positions:]
    return acts.reshape(acts.shape[0] * acts.shape[1], -1)


def token_view(acts: torch.Tensor, skip_positions: int = 0) -> torch.Tensor:
    """[batch, seq, ...] -> [batch, seq - skip, width] without a copy (heads are concatenated)."""
    return acts[:, skip_positions:].flatten(2)


def norm_medians(rows: torch.Tensor, d_in: int) -> torch.Tensor:
    """Median norm of each part of `rows` ([input] or [input | target]), float64."""
    parts = [rows[:, :d_in]] + ([rows[:, d_in:]] if rows.shape[1] > d_in else [])
    return torch.stack([p.norm(dim=-1).median() for p in parts]).double()


def within_limits(rows: torch.Tensor, d_in: int, limits: Sequence[float] | None) -> torch.Tensor:
    """Per row: whether each part's norm (input, then target) is within its limit; all True without limits."""
    keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    for part, limit in zip((rows[:, :d_in], rows[:, d_in:]), limits or ()):
        keep &= part.norm(dim=-1) <= limit
    return keep


def sae_limits(sae) -> tuple[float, ...] | None:
    """The norm limits an SAE was trained within (raw activation units), from its metadata; None if unset."""
    meta = sae.cfg.metadata
    if meta.max_norm is None:
        return None
    return (meta.max_norm,) + ((meta.max_norm_out,) if meta.max_norm_out is not None else ())


def check_activations_finite(rows: torch.Tensor, hook: str, where: str) -> None:
    """Raise when `rows` hold NaN or inf (one reduction pass: min and max propagate NaN)."""
    low, high = torch.aminmax(rows) if rows.numel() else (rows.new_zeros(()), rows.new_zeros(()))
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise InterpError(f"activations at {hook} contain NaN or inf ({where}); check the model weights and dtype")


class ActivationSource:
    """Iterate {hook: [batch, seq - skip, width] views} per model batch, forever; `epoch` and `batch_in_epoch`
    say where it is. `SplitRows` makes each member's rows from them with one copy."""

    def __init__(self, model, hooks: list[str], corpus: Corpus, batch_size: int, seq_len: int,
                 skip_positions: int, epoch: int = 0, batch_in_epoch: int = 0):
        self.model, self.hooks, self.corpus = model, check_hook_names(model, hooks), corpus
        self.batch_size, self.seq_len, self.skip_positions = batch_size, seq_len, skip_positions
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            stream = stream_activations(self.model, self.hooks, self.corpus, self.batch_size, self.seq_len,
                                        skip_batches=self.batch_in_epoch, progress=False)
            served = 0
            for _, acts in stream:
                rows = {h: token_view(acts[h], self.skip_positions) for h in self.hooks}
                for hook, value in rows.items():
                    check_activations_finite(value, hook, f"epoch {self.epoch}, model batch {self.batch_in_epoch}")
                self.batch_in_epoch += 1
                served += 1
                yield rows
            if served == 0 and self.batch_in_epoch == 0:
                raise InterpError(f"corpus {self.corpus.name!r} gives no full sequence; give it more text")
            self.epoch += 1
            self.batch_in_epoch = 0


class SplitRows:
    """One activation stream read by several SAEs: member i gets the rows of its own hooks side by side
    ([input | target] for a transcoder), from the same model batches as every other member.

    A model batch is read when a member has no rows waiting, and waits for the others until they read it.
    Members read the same number of rows each step (outliers leave a batch only when it is served), so
    at the end of a training step nothing waits: a checkpoint needs only the stream's position.
    """

    def __init__(self, source: ActivationSource, member_hooks: Sequence[Sequence[str]]):
        self.source, self.member_hooks = source, [list(h) for h in member_hooks]
        self.waiting: list[deque[torch.Tensor]] = [deque() for _ in self.member_hooks]
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self.source_seconds = 0.0  # spent making activation batches (model forward passes or cache reads)
        self.source_tokens = 0  # tokens those batches held

    def member(self, i: int) -> Iterator[torch.Tensor]:
        """Member i's rows, one model batch at a time, forever."""
        while True:
            if not self.waiting[i]:
                self._read()
            yield self.waiting[i].popleft()

    def _read(self) -> None:
        if self._batches is None:
            self._batches = iter(self.source)
        started = time.perf_counter()
        acts = next(self._batches)
        self.source_seconds += time.perf_counter() - started
        first = next(iter(acts.values()))
        self.source_tokens += first.numel() // first.shape[-1]
        made: dict[tuple[str, ...], torch.Tensor] = {}  # members on the same hooks share their rows
        for queue, hooks in zip(self.waiting, self.member_hooks):
            key = tuple(hooks)
            if key not in made:
                joined = torch.cat([acts[h] for h in hooks], dim=-1) if len(hooks) > 1 else acts[hooks[0]]
                made[key] = joined.reshape(-1, joined.shape[-1]).float()  # [tokens, width]: the one copy
            queue.append(made[key])

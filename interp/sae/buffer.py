"""A mixing buffer whose whole state can be saved, so a resumed run sees the same batches.

Like sae-lens's `mixing_buffer`: fill up to `capacity` rows, shuffle, serve all but a kept-back
share, which is mixed with the next fill. Shuffles draw from the buffer's own seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class MixingBuffer:
    def __init__(self, capacity: int, batch: int, mix_fraction: float, seed: int):
        self.capacity, self.batch, self.mix_fraction = capacity, batch, mix_fraction
        self.pool: torch.Tensor | None = None  # rows kept back from the last shuffle
        self.added: list[torch.Tensor] = []  # rows added since, joined to the pool once, at the next shuffle
        self.ready: torch.Tensor | None = None  # shuffled rows, served in order
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        self.added.append(rows)

    def _pooled(self) -> int:
        return (0 if self.pool is None else len(self.pool)) + sum(len(r) for r in self.added)

    def _join(self) -> None:
        """Join the added rows to the pool (one copy per shuffle, not one per added batch)."""
        if self.added:
            self.pool = torch.cat(([self.pool] if self.pool is not None else []) + self.added)
            self.added = []

    def batches(self, source: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Endless batches of `batch` rows, refilling from `source` as needed."""
        while True:
            while self.ready is None or len(self.ready) < self.batch:
                self._refill(source)
            out, self.ready = self.ready[: self.batch], self.ready[self.batch:]
            yield out

    def _refill(self, source: Iterator[torch.Tensor]) -> None:
        while self._pooled() < self.capacity:
            self.add(next(source))
        self._join()
        order = torch.randperm(len(self.pool), generator=self.generator)
        keep = int(self.capacity * self.mix_fraction)
        # one gather per part, no shuffled copy of the whole pool: a buffer holds about `capacity` rows
        # between refills, and each row is copied once per shuffle
        served = self.pool.index_select(0, order[keep:])
        self.ready = torch.cat([self.ready, served]) if self.ready is not None and len(self.ready) else served
        self.pool = self.pool.index_select(0, order[:keep])

    def state(self) -> dict[str, torch.Tensor]:
        self._join()
        empty = torch.zeros(0)
        return {
            "pool": empty if self.pool is None else self.pool.contiguous(),
            "ready": empty if self.ready is None else self.ready.contiguous(),
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pool = state["pool"] if state["pool"].numel() else None
        self.added = []
        self.ready = state["ready"] if state["ready"].numel() else None
        self.generator.set_state(state["generator"])

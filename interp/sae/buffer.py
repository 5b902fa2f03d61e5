"""A mixing buffer whose whole state can be saved, so a resumed run sees the same batches.

Like sae-lens's `mixing_buffer`: fill up to `capacity` rows, shuffle, serve all but a kept-back
share, which is mixed with the next fill. Shuffles draw from the buffer's own seeded generator.
Rows stay in one storage tensor between shuffles: new rows are written into the slots that served
rows left, and kept rows never move (one copy in, one copy out per row; joining and regathering the
pool at each shuffle cost twice that, in fresh memory).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class MixingBuffer:
    def __init__(self, capacity: int, batch: int, mix_fraction: float, seed: int):
        self.capacity, self.batch, self.mix_fraction = capacity, batch, mix_fraction
        self.storage: torch.Tensor | None = None  # [slots, width]; holds the pool's rows
        self.slots = torch.zeros(0, dtype=torch.long)  # the pool: its rows' slots, in pool order
        self.free = torch.zeros(0, dtype=torch.long)  # slots holding no pool row
        self.ready: torch.Tensor | None = None  # shuffled rows, served in order
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        """Append `rows` [n, width] to the pool."""
        n = len(rows)
        if len(self.free) < n:  # a pool reaches at most capacity + one added batch - 1 rows
            self._grow(max(len(self.slots) + n, self.capacity + n), rows)
        ids, self.free = self.free[:n], self.free[n:]
        self.storage.index_copy_(0, ids, rows)
        self.slots = torch.cat([self.slots, ids])

    def _grow(self, size: int, like: torch.Tensor) -> None:
        old = 0 if self.storage is None else len(self.storage)
        storage = like.new_empty((size, *like.shape[1:]))
        if old:
            storage[:old] = self.storage
        self.storage = storage
        self.slots, self.free = self.slots.to(like.device), torch.cat([self.free.to(like.device),
                                                                       torch.arange(old, size, device=like.device)])

    def batches(self, source: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Endless batches of `batch` rows, refilling from `source` as needed."""
        while True:
            while self.ready is None or len(self.ready) < self.batch:
                self._refill(source)
            out, self.ready = self.ready[: self.batch], self.ready[self.batch:]
            yield out

    def _refill(self, source: Iterator[torch.Tensor]) -> None:
        while len(self.slots) < self.capacity:
            self.add(next(source))
        order = torch.randperm(len(self.slots), generator=self.generator).to(self.slots.device)
        keep = int(self.capacity * self.mix_fraction)
        chosen = self.slots[order]
        served = chosen[keep:]
        left = 0 if self.ready is None else len(self.ready)
        ready = self.storage.new_empty((left + len(served), *self.storage.shape[1:]))
        if left:
            ready[:left] = self.ready
        torch.index_select(self.storage, 0, served, out=ready[left:])
        self.ready = ready
        self.slots, self.free = chosen[:keep], torch.cat([self.free, served])

    def state(self) -> dict[str, torch.Tensor]:
        empty = torch.zeros(0)
        return {
            "pool": empty if self.storage is None else self.storage.index_select(0, self.slots),
            "ready": empty if self.ready is None else self.ready.contiguous(),
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pool = state["pool"]
        self.storage = pool if pool.numel() else None
        self.slots = torch.arange(len(pool), device=pool.device) if pool.numel() else torch.zeros(0, dtype=torch.long)
        self.free = torch.zeros(0, dtype=torch.long, device=self.slots.device)
        self.ready = state["ready"] if state["ready"].numel() else None
        self.generator.set_state(state["generator"])

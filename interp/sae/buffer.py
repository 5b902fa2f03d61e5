"""A mixing buffer whose whole state can be saved, so a resumed run sees the same batches.

Like sae-lens's `mixing_buffer`: fill up to `capacity` rows, shuffle, serve all but a kept-back
share, which is mixed with the next fill. Shuffles draw from the buffer's own seeded generator.
Rows stay in one storage tensor from the fill until they are served: new rows are written into the
slots that served rows left, a shuffle only reorders slot numbers, and each batch is gathered from
its slots when served (one copy in, one copy out per row; gathering every shuffled row into a fresh
tensor at each shuffle cost 2 ms a batch at the default shapes, in page faults, and its memory).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class MixingBuffer:
    """Shuffled batches of `batch` rows from a pool of `capacity` rows, keeping `mix_fraction` of the pool
    back at each shuffle; `seed` seeds its own generator."""

    def __init__(self, capacity: int, batch: int, mix_fraction: float, seed: int):
        self.capacity, self.batch, self.mix_fraction = capacity, batch, mix_fraction
        self.storage: torch.Tensor | None = None  # [slots, width]; holds the pool's and the queue's rows
        self.slots = torch.zeros(0, dtype=torch.long)  # the pool: its rows' slots, in pool order
        self.queue = torch.zeros(0, dtype=torch.long)  # shuffled rows' slots, served in order
        self.free = torch.zeros(0, dtype=torch.long)  # slots holding no row
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        """Append `rows` [n, width] to the pool."""
        n = len(rows)
        if len(self.free) < n:  # at most capacity - 1 pool rows, batch - 1 queued and n new ones
            self._grow(max(len(self.slots) + len(self.queue) + n, self.capacity + self.batch + n), rows)
        ids, self.free = self.free[:n], self.free[n:]
        self.storage.index_copy_(0, ids, rows)
        self.slots = torch.cat([self.slots, ids])

    def _grow(self, size: int, like: torch.Tensor) -> None:
        old = 0 if self.storage is None else len(self.storage)
        storage = like.new_empty((size, *like.shape[1:]))
        if old:
            storage[:old] = self.storage
        self.storage = storage
        device = like.device
        self.slots, self.queue = self.slots.to(device), self.queue.to(device)
        self.free = torch.cat([self.free.to(device), torch.arange(old, size, device=device)])

    def batches(self, source: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Endless batches of `batch` rows (each its own tensor), refilling from `source` as needed."""
        while True:
            while len(self.queue) < self.batch:
                self._refill(source)
            ids, self.queue = self.queue[: self.batch], self.queue[self.batch:]
            out = self.storage.index_select(0, ids)
            self.free = torch.cat([self.free, ids])
            yield out

    def _refill(self, source: Iterator[torch.Tensor]) -> None:
        while len(self.slots) < self.capacity:
            self.add(next(source))
        order = torch.randperm(len(self.slots), generator=self.generator).to(self.slots.device)
        keep = int(self.capacity * self.mix_fraction)
        chosen = self.slots[order]
        self.slots, self.queue = chosen[:keep], torch.cat([self.queue, chosen[keep:]])

    def state(self) -> dict[str, torch.Tensor]:
        """The pool's rows (pool order), the queued rows (serving order) and the generator's state."""
        empty = torch.zeros(0)
        return {
            "pool": empty if self.storage is None else self.storage.index_select(0, self.slots),
            "ready": empty if self.storage is None else self.storage.index_select(0, self.queue),
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from `state()`'s output: the same batches follow as would have."""
        pool, ready = state["pool"], state["ready"]
        rows = [t for t in (pool, ready) if t.numel()]
        self.storage = torch.cat(rows) if rows else None
        device = self.storage.device if self.storage is not None else torch.device("cpu")
        self.slots = torch.arange(len(pool), device=device)  # an empty part is torch.zeros(0): length 0
        self.queue = torch.arange(len(pool), len(pool) + len(ready), device=device)
        self.free = torch.zeros(0, dtype=torch.long, device=device)
        self.generator.set_state(state["generator"])

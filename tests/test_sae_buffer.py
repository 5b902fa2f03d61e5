"""The mixing buffer serves what the plain algorithm serves (join the pool and the new rows, shuffle, serve
all but the kept share), and a buffer restored from its state continues exactly."""

from __future__ import annotations

import itertools

import torch

from interp.sae.buffer import MixingBuffer


def chunks(seed: int):
    """Endless chunks of 3..40 rows whose first column numbers every row."""
    g = torch.Generator().manual_seed(seed)
    counter = itertools.count()
    while True:
        n = int(torch.randint(3, 41, (1,), generator=g))
        rows = torch.randn(n, 4, generator=g)
        rows[:, 0] = torch.tensor([float(next(counter)) for _ in range(n)])
        yield rows


def reference_batches(source, capacity: int, batch: int, mix: float, seed: int):
    """The algorithm written plainly: pool = pool + new rows until `capacity`, permute, keep a share."""
    generator = torch.Generator().manual_seed(seed)
    pool, ready = torch.zeros(0, 4), torch.zeros(0, 4)
    while True:
        while len(ready) < batch:
            while len(pool) < capacity:
                pool = torch.cat([pool, next(source)])
            order = torch.randperm(len(pool), generator=generator)
            keep = int(capacity * mix)
            ready = torch.cat([ready, pool[order[keep:]]])
            pool = pool[order[:keep]]
        yield ready[:batch]
        ready = ready[batch:]


def test_buffer_serves_the_plain_algorithms_batches():
    buffer = MixingBuffer(capacity=64, batch=16, mix_fraction=0.5, seed=3)
    ours = buffer.batches(chunks(0))
    plain = reference_batches(chunks(0), 64, 16, 0.5, 3)
    served = [next(ours) for _ in range(60)]
    for a in served:
        assert torch.equal(a, next(plain))
    ids = torch.cat(served)[:, 0]
    assert len(ids.unique()) == len(ids)  # no row served twice


def test_buffer_restored_from_its_state_continues_exactly():
    read = []  # chunks the first buffer read, to replay the stream to the same point

    def counted(source):
        for rows in source:
            read.append(len(rows))
            yield rows

    source = counted(chunks(1))
    first = MixingBuffer(capacity=50, batch=8, mix_fraction=0.25, seed=0)
    first.add(next(source))
    batches = first.batches(source)
    for _ in range(13):
        next(batches)
    state = {k: v.clone() for k, v in first.state().items()}
    n_read = len(read)
    expected = [next(batches) for _ in range(20)]
    restored = MixingBuffer(capacity=50, batch=8, mix_fraction=0.25, seed=99)
    restored.load_state(state)
    replay = chunks(1)
    for _ in range(n_read):
        next(replay)
    again = restored.batches(replay)
    for batch in expected:
        assert torch.equal(batch, next(again))

"""More than one training process: `torchrun --nproc-per-node N -m interp sae train ...`.

Each process reads its own share of the corpus (every N-th document), runs the model on it, and
trains the same SAE wrapped in PyTorch DistributedDataParallel, which averages the gradients. The
global batch is split evenly, so N processes take the same optimizer steps as one process would on
the same number of tokens. gloo on CPU, nccl on GPU. Outside torchrun everything here is a no-op.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from interp.corpus import Corpus


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size())


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def shard(corpus: Corpus, d: Dist) -> Corpus:
    """This process's share of the corpus: documents rank, rank + world, ..."""
    if not d.active:
        return corpus
    return Corpus(f"{corpus.name}[{d.rank}/{d.world}]", lambda: itertools.islice(iter(corpus), d.rank, None, d.world))


def all_reduce(tensor: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """In place over all processes ('sum', 'mean', 'min'); returns the tensor."""
    if d.active:
        reduce_op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(tensor, op=reduce_op)
        if op == "mean":
            tensor /= d.world
    return tensor


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


class _TrainStep(nn.Module):
    """Makes sae-lens's `training_forward_pass` a module forward, which is what DDP wraps."""

    def __init__(self, sae: nn.Module):
        super().__init__()
        self.sae = sae

    def forward(self, step_input):
        output = self.sae.training_forward_pass(step_input)
        return output.loss, output


def train_step_fn(sae: nn.Module, d: Dist) -> Callable:
    """`step_input -> TrainStepOutput`; under DDP the backward pass averages gradients over processes.

    Buffers are not broadcast from rank 0 (BatchTopK's threshold is reduced explicitly instead).
    """
    if not d.active:
        return sae.training_forward_pass
    device_ids = [torch.cuda.current_device()] if next(sae.parameters()).is_cuda else None
    ddp = nn.parallel.DistributedDataParallel(_TrainStep(sae), device_ids=device_ids, broadcast_buffers=False)
    return lambda step_input: ddp(step_input)[1]

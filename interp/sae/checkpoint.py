"""Atomic training checkpoints, without pickle.

`OUT/checkpoints/step_NNNNNNNN/` holds `trainer.safetensors` (SAE weights, Adam moments, dead-latent
counters; scalars and the run's config as JSON metadata) and one `rankR.safetensors` per process
(its mixing buffer, buffer RNG state and corpus position). A checkpoint is written under a hidden
temporary name and renamed into place when complete, so a kill leaves either the old checkpoint or
the new one. The last two are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.sae.distributed import Dist, barrier

KEEP = 2


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint folder in `out`, or None."""
    root = checkpoint_root(out)
    done = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    return done[-1] if done else None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, moments in state.items():
        if index >= len(params) or any(v.dim() and v.shape != params[index].shape for v in moments.values()):
            raise InterpError("the checkpoint's optimizer state does not fit this version's parameters; "
                              "start again in a new --out")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save(out: Path, step: int, trainer_tensors: dict[str, torch.Tensor], trainer_meta: dict[str, Any],
         rank_tensors: dict[str, torch.Tensor], rank_meta: dict[str, Any], d: Dist) -> Path:
    """Write one checkpoint from every process; returns its folder."""
    from safetensors.torch import save_file

    root = checkpoint_root(out)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    save_file({k: v.detach().cpu().contiguous() for k, v in rank_tensors.items()}, str(tmp / f"rank{d.rank}.safetensors"),
              metadata={"state": json.dumps(rank_meta)})
    if d.main:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainer_tensors.items()},
                  str(tmp / "trainer.safetensors"), metadata={"state": json.dumps(trainer_meta)})
    barrier(d)
    if d.main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # truncated, corrupt or foreign file
        raise InterpError(f"checkpoint file {path} is unreadable ({type(e).__name__}); delete that checkpoint folder to resume from an older one") from None


def load(folder: Path, d: Dist) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(trainer tensors, trainer meta, this rank's tensors, this rank's meta) of a checkpoint."""
    trainer_tensors, trainer_meta = _read(folder / "trainer.safetensors")
    if trainer_meta["world"] != d.world:
        raise InterpError(f"{folder} was written by {trainer_meta['world']} processes; resume with --nproc-per-node {trainer_meta['world']}")
    rank_tensors, rank_meta = _read(folder / f"rank{d.rank}.safetensors")
    return trainer_tensors, trainer_meta, rank_tensors, rank_meta

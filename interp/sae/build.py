"""Construct sae-lens training SAEs (or our transcoder subclasses of them) from a TrainConfig."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import TopKTrainingSAEConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAEMetadata, TrainingSAE

from interp.sae import transcoder
from interp.sae.config import SAE_LENS_ARCH, TrainConfig
from interp.sae.topk import SparseTopKTrainingSAE


def training_sae(cfg: TrainConfig, d_in: int, d_out: int | None, metadata: dict[str, Any]) -> TrainingSAE:
    """A freshly initialised training SAE (seeded by `cfg.seed`, global RNG left untouched)."""
    arch = SAE_LENS_ARCH[cfg.arch]
    if cfg.is_transcoder:
        sae_cls, cfg_cls = transcoder.TRAINING_CLASSES[arch]
    elif arch == "topk":
        sae_cls, cfg_cls = SparseTopKTrainingSAE, TopKTrainingSAEConfig
    else:
        sae_cls, cfg_cls = get_sae_training_class(arch)
    warmup = int(cfg.steps * cfg.sparsity_warmup_fraction)
    kwargs: dict[str, Any] = {
        "d_in": d_in, "d_sae": cfg.d_sae(d_in), "dtype": "float32", "device": cfg.device,
        "apply_b_dec_to_input": not cfg.is_transcoder,
        "reshape_activations": "hook_z" if cfg.hook.endswith("hook_z") and not cfg.is_transcoder else "none",
        "metadata": SAEMetadata(**metadata),
    }
    if cfg.is_transcoder:
        kwargs["d_out"] = d_out
    if arch == "standard":
        kwargs.update(l1_coefficient=cfg.coefficient(), l1_warm_up_steps=warmup)
    elif arch in ("topk", "batchtopk"):
        kwargs.update(k=cfg.k, aux_loss_coefficient=cfg.aux_k_coefficient)
    elif arch == "jumprelu":
        kwargs.update(l0_coefficient=cfg.coefficient(), l0_warm_up_steps=warmup)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return sae_cls(cfg_cls(**kwargs))

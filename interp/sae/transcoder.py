"""Transcoders (Dunefsky et al. 2024): a sparse MLP replacement from `blocks.l.ln2.hook_normalized`
to `blocks.l.hook_mlp_out`, with its own output bias.

Training reuses sae-lens's training SAE classes, so every architecture (relu, topk, batchtopk,
jumprelu) keeps its own activation, auxiliary loss and threshold handling. The only changes: the
decoder maps to `d_out`, no decoder bias is subtracted from the input, and each training row packs
input and target side by side (`[x | y]`, the way sae-lens's multi-hook buffer packs hooks), so the
shared mixing buffer shuffles them together. The MSE and the auxiliary losses read the target half.

Saved transcoders load with sae-lens's `Transcoder` (relu) and `JumpReLUTranscoder` (jumprelu,
batchtopk) classes. sae-lens has no TopK transcoder, so `TopKTranscoder` below (a `Transcoder` with
a TopK activation) is registered as architecture "topk_transcoder" when `interp.sae` is imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.sae import TrainStepInput, mse_loss
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig
from torch import nn

from interp.sae.topk import SparseTopKTraining

# training architecture -> the sae-lens inference architecture a saved transcoder loads as
INFERENCE_ARCH = {"standard": "transcoder", "topk": "topk_transcoder", "batchtopk": "jumprelu_transcoder",
                  "jumprelu": "jumprelu_transcoder"}


class _TranscoderTraining:
    """Mixin over a sae-lens training SAE class; rows arrive as [input (d_in) | target (d_out)]."""

    cfg: Any

    def __init__(self, cfg, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.mse_loss_fn = self._target_mse

    def initialize_weights(self) -> None:
        super().initialize_weights()
        d_in, d_sae, d_out = self.cfg.d_in, self.cfg.d_sae, self.cfg.d_out
        w_dec = torch.empty(d_sae, d_out, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(w_dec)
        if self.cfg.decoder_init_norm is not None:
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * self.cfg.decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        if d_out == d_in:
            self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=self.dtype, device=self.device))

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        x = sae_in[..., : self.cfg.d_in].to(self.dtype)
        return self.run_time_activation_norm_fn_in(self.hook_sae_input(x))

    def _target(self, packed: torch.Tensor) -> torch.Tensor:
        return packed[..., self.cfg.d_in:]

    def _target_mse(self, preds: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return mse_loss(preds, self._target(packed))

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts, hidden_pre, sae_out):
        target_only = dataclasses.replace(step_input, sae_in=self._target(step_input.sae_in))
        return super().calculate_aux_loss(target_only, feature_acts, hidden_pre, sae_out)

    @torch.no_grad()
    def fold_scales(self, scale_in: float, scale_out: float) -> None:
        """Undo training-time input/target scaling: afterwards the transcoder reads raw activations."""
        self.W_enc.data *= scale_in
        self.W_dec.data /= scale_out
        self.b_dec.data /= scale_out
        if hasattr(self, "topk_threshold") and self.cfg.rescale_acts_by_decoder_norm:
            self.topk_threshold /= scale_out


@dataclasses.dataclass
class StandardTranscoderTrainingConfig(StandardTrainingSAEConfig):
    d_out: int = 0


@dataclasses.dataclass
class TopKTranscoderTrainingConfig(TopKTrainingSAEConfig):
    d_out: int = 0


@dataclasses.dataclass
class BatchTopKTranscoderTrainingConfig(BatchTopKTrainingSAEConfig):
    d_out: int = 0


@dataclasses.dataclass
class JumpReLUTranscoderTrainingConfig(JumpReLUTrainingSAEConfig):
    d_out: int = 0


class StandardTranscoderTraining(_TranscoderTraining, StandardTrainingSAE):
    pass


class TopKTranscoderTraining(_TranscoderTraining, SparseTopKTraining, TopKTrainingSAE):
    pass


class BatchTopKTranscoderTraining(_TranscoderTraining, BatchTopKTrainingSAE):
    pass


class JumpReLUTranscoderTraining(_TranscoderTraining, JumpReLUTrainingSAE):
    pass


TRAINING_CLASSES = {
    "standard": (StandardTranscoderTraining, StandardTranscoderTrainingConfig),
    "topk": (TopKTranscoderTraining, TopKTranscoderTrainingConfig),
    "batchtopk": (BatchTopKTranscoderTraining, BatchTopKTranscoderTrainingConfig),
    "jumprelu": (JumpReLUTranscoderTraining, JumpReLUTranscoderTrainingConfig),
}


@dataclasses.dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """A transcoder whose latents are the top k pre-activations (ReLU'd) of each token."""

    k: int = 32

    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "k": self.k}


class TopKTranscoder(Transcoder):
    """sae-lens `Transcoder` with the TopK activation of sae-lens's TopK SAEs."""

    cfg: TopKTranscoderConfig

    def get_activation_fn(self):
        return TopK(self.cfg.k)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoder:
        return cls(TopKTranscoderConfig.from_dict(config_dict))


if "topk_transcoder" not in SAE_CLASS_REGISTRY:
    register_sae_class("topk_transcoder", TopKTranscoder, TopKTranscoderConfig)


def inference_config(sae, metadata: dict[str, Any]) -> dict[str, Any]:
    """The cfg.json of a trained transcoder, in the form sae-lens's transcoder classes read."""
    arch = INFERENCE_ARCH[sae.cfg.architecture()]
    cfg = {
        "architecture": arch, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "d_out": sae.cfg.d_out,
        "dtype": sae.cfg.dtype, "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata,
    }
    if arch == "topk_transcoder":
        cfg["k"] = int(sae.cfg.k)
    return cfg

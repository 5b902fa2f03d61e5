"""AuxK as Gao et al. (2024) compute it in their reference code: the top-k_aux dead latents, their
pre-activations ReLU'd, reconstruct the live latents' residual error.

sae-lens (6.x) feeds the raw pre-activations, negative ones included (dead latents mostly have
negative ones). With it, a topk SAE on SmolLM2-135M layer 15 (2M tokens) saw the loss jump 10-35x
each time a group of latents crossed the dead window, explained variance fall (to 0.39 once), and the
revived latents go silent again one window later: the dead fraction cycled between 0 and 18%.
"""

from __future__ import annotations

import torch


class ReluAuxK:
    """Mixin over a sae-lens TopK-family training SAE: AuxK on ReLU'd pre-activations."""

    def calculate_topk_aux_loss(self, sae_in: torch.Tensor, sae_out: torch.Tensor, hidden_pre: torch.Tensor,
                                dead_neuron_mask: torch.Tensor | None) -> torch.Tensor:
        # ReLU commutes with top-k, so this is top-k of the dead pre-activations, then ReLU.
        return super().calculate_topk_aux_loss(sae_in, sae_out, hidden_pre.relu(), dead_neuron_mask)

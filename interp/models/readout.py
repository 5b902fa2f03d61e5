"""Reading residual-stream vectors out as logits, the way the model itself does, for either loader's model.

`model.unembed(model.ln_final(resid))` is the final norm and the unembedding; some architectures then squash the
logits: Gemma-2 and Gemma-3 apply a final soft-cap, `cap * tanh(logits / cap)` (`cfg.output_logits_soft_cap`),
outside both modules. Analyses that read intermediate residuals (logit lens, restoration, fact-editing targets,
probe steering) go through `residual_logits`, so they see the logits the model would output.
"""

from __future__ import annotations

import torch


def soft_cap(model) -> float | None:
    """The final logit soft-cap of `model` (Gemma-2/3: 30.0), or None where the logits are not capped."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def capped(model, logits: torch.Tensor) -> torch.Tensor:
    """`logits` through the model's final soft-cap (unchanged where it has none)."""
    cap = soft_cap(model)
    return logits if cap is None else cap * torch.tanh(logits / cap)


def residual_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """[..., d_model] residual-stream vectors -> [..., d_vocab] logits: final norm, unembedding and soft-cap.

    Each vector is normalised by its own scale (the norm acts on the last dimension), as at the model's output.
    """
    return capped(model, model.unembed(model.ln_final(resid)))


def final_bias_logits(model) -> torch.Tensor:
    """[d_vocab] the part of the (pre-cap) logits no component of the residual writes: the final norm's bias through
    the unembedding, plus the unembedding bias (GPT-2's LayerNorm has one; RMS-normed models read zeros here)."""
    zero = torch.zeros(1, 1, model.cfg.d_model, device=model.cfg.device, dtype=model.W_U.dtype)
    return model.unembed(model.ln_final(zero))[0, 0]

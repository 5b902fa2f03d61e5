"""Architecture facts that analyses doing their own algebra on the residual stream must respect, read the same
way from a `HookedModel` or a `BridgeModel`.

Pre-norm blocks (Llama, Qwen, Mistral, GPT-2, ...) normalise the inputs of attention and MLP (`ln1`, `ln2`) and add
their raw outputs to the residual. Two other placements exist among the supported families:

- sandwich norms (Gemma-2, Gemma-3): also a norm on each output before it is added (`ln1_post`, `ln2_post`), so
  `hook_attn_out` / `hook_mlp_out` are normalised and not linear in `W_O` / `W_out`;
- post-norm blocks (OLMo-2): no input norms at all; `ln1` / `ln2` normalise the attention and MLP outputs, so
  `blocks.{l}.ln2.hook_normalized` is not what the MLP reads.
"""

from __future__ import annotations

import torch
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES


def post_norm(model) -> bool:
    """OLMo-2/3 style blocks: `ln1`/`ln2` normalise the attention/MLP outputs; the MLP reads the raw residual."""
    return str(model.cfg.original_architecture) in POST_NORM_ARCHITECTURES


def sandwich_norms(model) -> bool:
    """Gemma-2/3 style blocks: norms before and after attention and the MLP."""
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False)) or hasattr(model.blocks[0], "ln2_post")


def output_norms(model) -> bool:
    """Whether attention and MLP outputs pass through a norm before they reach the residual stream."""
    return post_norm(model) or sandwich_norms(model)


def centered_norms(model) -> bool:
    """LayerNorm (GPT-2, GPT-NeoX): the norms subtract each vector's mean, so a direction read through them is
    centred; RMSNorm reads vectors as they are."""
    return model.cfg.normalization_type in ("LN", "LNPre")



def norm_weight(model, norm) -> torch.Tensor | None:
    """[d_model] the elementwise weight `norm` applies after normalising, or None for TransformerLens's folded
    "Pre" norms (weight one): its `w`, plus one for Gemma's RMSNorm, which computes x / s * (1 + w) (under the
    bridge `w` is that raw Hugging Face weight; HookedTransformer stores 1 + w already)."""
    w = getattr(norm, "w", None)
    if w is None:
        return None
    return w + 1 if getattr(model.cfg, "rmsnorm_uses_offset", False) else w

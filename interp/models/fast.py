"""Faster kernels for TransformerLens components, with the same hooks firing.

TransformerLens materialises the full attention-score and pattern tensors and copies every MLP
weight on each call. When nobody hooks the scores or the pattern, attention can run as one fused
`scaled_dot_product_attention`; gated MLPs can multiply by the transposed weights in place. Every
other hook (q, k, v, rotated q/k, z, MLP pre/post, ...) fires exactly as before, and any hook on the
scores or pattern (including `run_with_cache` of them) falls back to the original code.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _needs_pattern(attn) -> bool:
    return any(hp.fwd_hooks or hp.bwd_hooks for hp in (attn.hook_attn_scores, attn.hook_pattern))


def _fast_attention_forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                            additive_attention_mask=None, attention_mask=None, position_bias=None):
    if (_needs_pattern(self) or past_kv_cache_entry is not None or additive_attention_mask is not None
            or attention_mask is not None or position_bias is not None or self.training):
        return self._slow_forward(query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, 0, None))
        k = self.hook_rot_k(self.apply_rotary(k, 0, None))
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
        scale=1.0 / self.attn_scale, enable_gqa=q.shape[2] != k.shape[2],
    ).transpose(1, 2)
    z = self.hook_z(z)  # [batch, pos, head, d_head]
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return flat @ self.W_O.reshape(-1, self.W_O.shape[-1]) + self.b_O


def _fast_gated_mlp_forward(self, x):
    pre_act = self.hook_pre(x @ self.W_gate)
    pre_linear = self.hook_pre_linear(x @ self.W_in)
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
    return post_act @ self.W_out + self.b_out


def _attention_is_plain(cfg) -> bool:
    return (
        cfg.positional_embedding_type in ("rotary", "standard", "shortformer")
        and cfg.attention_dir == "causal"
        and cfg.attn_scores_soft_cap in (None, -1.0, 0)
        and not cfg.use_logn_attn and cfg.clip_qkv is None and not cfg.use_attention_sinks
        and not cfg.use_attn_result and not cfg.use_local_attn
        and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
        and not getattr(cfg, "use_qk_norm", False)
        and not cfg.load_in_4bit
    )


def install_fast_paths(model) -> None:
    """Swap in the fused kernels on every block whose configuration they exactly reproduce."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    if _attention_is_plain(model.cfg):
        for block in model.blocks:
            attn = block.attn
            attn._slow_forward = attn.forward
            attn.forward = types.MethodType(_fast_attention_forward, attn)
    for block in model.blocks:
        if type(block.mlp) is GatedMLP and not model.cfg.load_in_4bit:
            block.mlp.forward = types.MethodType(_fast_gated_mlp_forward, block.mlp)


def remove_fast_paths(model) -> None:
    """Back to TransformerLens's own code (for comparisons)."""
    for block in model.blocks:
        block.attn.__dict__.pop("forward", None)
        block.attn.__dict__.pop("_slow_forward", None)
        block.mlp.__dict__.pop("forward", None)

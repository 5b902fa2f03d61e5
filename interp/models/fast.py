"""Faster kernels for TransformerLens components, with the same hooks firing.

TransformerLens materialises the full attention-score and pattern tensors, computes layer norm 1
three times (for q, k and v), adds biases in separate passes and copies the unembedding. When
nobody hooks the scores or the pattern, attention runs as one fused `scaled_dot_product_attention`
on q, k and v from one packed matrix multiply; biases are fused into the matrix multiplies; the
unembedding multiplies in place. Every other hook (q, k, v, rotated q/k, z, MLP pre/post, unembed
in/out, ...) fires exactly as before, and any hook on the scores or pattern (including
`run_with_cache` of them) falls back to the original code.

Nothing derived from the weights is kept between calls: every call reads the parameters as they
are, so any edit (ROME, MEMIT, `load_state_dict`, or a write through `.data`, which no version
counter sees) counts on the next call. The q/k/v matrix is packed on each call: one copy of the
attention input weights, about 5 ms per forward pass of the default model (30 layers, 2 threads),
a few percent of a one-prompt forward pass and lost in the noise at 16 x 128 tokens.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ w + b with the bias added inside the matrix multiply (as cheap as x @ w; measured)."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], -1)


def _kv_weights(attn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The stored k/v parameters and how often to repeat their heads, as TransformerLens uses them."""
    if hasattr(attn, "_W_K"):  # grouped-query attention keeps the unexpanded k/v heads
        repeat = attn.repeat_kv_heads if attn.cfg.ungroup_grouped_query_attention else 1
        return attn._W_K, attn._b_K, attn._W_V, attn._b_V, repeat
    return attn.W_K, attn.b_K, attn.W_V, attn.b_V, 1


def _packed_qkv(attn) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """One [d_model, (q + k + v heads) * d_head] matrix, its bias and the head counts, packed now.

    One copy of the weights per call (autograd flows through it); never cached, see the module note.
    """
    W_K, b_K, W_V, b_V, repeat = _kv_weights(attn)
    ws, bs = [attn.W_Q], [attn.b_Q]
    for w, b in ((W_K, b_K), (W_V, b_V)):
        ws.append(w if repeat == 1 else w.repeat_interleave(repeat, dim=0))
        bs.append(b if repeat == 1 else b.repeat_interleave(repeat, dim=0))
    weight = torch.cat([w.transpose(0, 1) for w in ws], dim=1)  # [d_model, heads, d_head]
    bias = torch.cat([b.reshape(-1) for b in bs])
    return weight.view(weight.shape[0], -1), bias, tuple(w.shape[0] for w in ws)


def _needs_slow_attention(attn, inputs, extras) -> bool:
    hooked = any(hp.fwd_hooks or hp.bwd_hooks for hp in (attn.hook_attn_scores, attn.hook_pattern))
    return hooked or any(e is not None for e in extras) or attn.training or any(x.dim() != 3 for x in inputs)


def _qkv(attn, query_input, key_input, value_input):
    """q, k and v as [batch, pos, heads, d_head]: one matrix multiply when the inputs are one tensor."""
    weight, bias, heads = _packed_qkv(attn)
    batch, pos, _ = query_input.shape
    d_head = attn.cfg.d_head
    edges = [0, heads[0] * d_head, (heads[0] + heads[1]) * d_head, sum(heads) * d_head]
    cols = [slice(a, b) for a, b in zip(edges, edges[1:])]
    if query_input is key_input is value_input:
        qkv = _linear(query_input, weight, bias)
        parts = [qkv[..., c] for c in cols]
    else:
        parts = [_linear(x, weight[:, c], bias[c]) for x, c in zip((query_input, key_input, value_input), cols)]
    return [part.view(batch, pos, n, d_head) for part, n in zip(parts, heads)]


def _fast_attention_forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                            additive_attention_mask=None, attention_mask=None, position_bias=None):
    if _needs_slow_attention(self, (query_input, key_input, value_input),
                             (additive_attention_mask, attention_mask, position_bias)):
        return self._slow_forward(query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    q, k, v = _qkv(self, query_input, key_input, value_input)
    q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
    offset = 0
    if past_kv_cache_entry is not None:  # keys are cached before the rotary embedding, as in TransformerLens
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, offset, None))
        k = self.hook_rot_k(self.apply_rotary(k, 0, None))
    mask = None
    if offset:  # query i sits at position offset + i and sees keys up to there
        mask = (torch.arange(k.shape[1], device=q.device)[None, :]
                <= torch.arange(offset, offset + q.shape[1], device=q.device)[:, None])
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
        scale=1.0 / self.attn_scale, enable_gqa=q.shape[2] != k.shape[2],
    ).transpose(1, 2)
    z = self.hook_z(z)  # [batch, pos, head, d_head]
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return _linear(flat, self.W_O.reshape(-1, self.W_O.shape[-1]), self.b_O)


def _fast_gated_mlp_forward(self, x):
    pre_act = self.hook_pre(x @ self.W_gate)
    pre_linear = self.hook_pre_linear(x @ self.W_in)
    act = self.act_fn(pre_act)
    post_act = self.hook_post(torch.addcmul(self.b_in, act, pre_linear))
    return _linear(post_act, self.W_out, self.b_out)


def _fast_unembed_forward(self, residual):
    residual = self.hook_in(residual)
    return self.hook_out(_linear(residual, self.W_U, self.b_U))


def _fast_block_forward(self, resid_pre, shortformer_pos_embed=None, past_kv_cache_entry=None,
                        attention_mask=None):
    """TransformerLens's pre-norm block, with ln1 computed once for q, k and v instead of three times."""
    if shortformer_pos_embed is not None or not _block_is_plain(self.cfg):
        return self._slow_forward(resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)
    resid_pre = self.hook_resid_pre(resid_pre)
    normalized = self.ln1(resid_pre)
    attn_out = self.hook_attn_out(self.attn(query_input=normalized, key_input=normalized, value_input=normalized,
                                            past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask))
    resid_mid = self.hook_resid_mid(resid_pre + attn_out)
    mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
    return self.hook_resid_post(resid_mid + self.apply_mlp(self.ln2(mlp_in)))


def _block_is_plain(cfg) -> bool:
    return not (cfg.use_attn_in or cfg.use_split_qkv_input or cfg.attn_only or cfg.parallel_attn_mlp
                or cfg.use_normalization_before_and_after or cfg.n_devices > 1
                or cfg.original_architecture in POST_NORM_ARCHITECTURES)


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
    """Swap in the fused kernels on every component whose configuration they exactly reproduce."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    if _attention_is_plain(model.cfg):
        for block in model.blocks:
            attn = block.attn
            attn._slow_forward = attn.forward
            attn.forward = types.MethodType(_fast_attention_forward, attn)
    for block in model.blocks:
        block._slow_forward = block.forward
        block.forward = types.MethodType(_fast_block_forward, block)
        if type(block.mlp) is GatedMLP and not (model.cfg.load_in_4bit or model.cfg.is_layer_norm_activation()):
            block.mlp.forward = types.MethodType(_fast_gated_mlp_forward, block.mlp)
    if not model.cfg.load_in_4bit:
        model.unembed.forward = types.MethodType(_fast_unembed_forward, model.unembed)


def remove_fast_paths(model) -> None:
    """Back to TransformerLens's own code (for comparisons)."""
    for module in [*model.blocks, *(b.attn for b in model.blocks), *(b.mlp for b in model.blocks), model.unembed]:
        for name in ("forward", "_slow_forward"):
            module.__dict__.pop(name, None)

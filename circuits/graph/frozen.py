"""The prompt's frozen model: every attention pattern and every norm scale fixed at their values on the
prompt, so the residual stream becomes a linear function of whatever is written into it.

Notation (TransformerLens, weights not folded): the residual r enters a norm as n = P(r) / s * w + b, where
P centres the vector for LayerNorm (identity for RMSNorm), s is the frozen scale of that position and
w, b the norm's weight and bias (w = 1, b = 0 for the folded "Pre" norms). Attention adds, at query q,
sum_h sum_k A_h[q, k] (n1[k] W_V^h + b_V^h) W_O^h + b_O. With A and s frozen that is linear in r, and
`transpose_attention` is its exact transpose: it carries a gradient on the residual after attention back
to the residual before it (the MLPs are sources, so nothing else flows between layers).
"""

from __future__ import annotations

import dataclasses

import torch

from interp.errors import InterpError
from interp.models.arch import norm_weight, output_norms

_NORMS = ("LN", "LNPre", "RMS", "RMSPre")


def check_supported(model) -> None:
    """Raise a one-line InterpError for architectures whose frozen model is not the plain pre-norm one."""
    cfg = model.cfg
    problems = {
        "parallel attention and MLP": cfg.parallel_attn_mlp,
        "attention-only blocks": cfg.attn_only,
        "norms after attention and MLP": output_norms(model),
        f"{cfg.normalization_type} normalization": cfg.normalization_type not in _NORMS,
        f"{cfg.positional_embedding_type} positions": cfg.positional_embedding_type not in ("standard", "rotary"),
        "soft-capped logits": (cfg.output_logits_soft_cap or 0) > 0,
        "soft-capped attention scores": (cfg.attn_scores_soft_cap or 0) > 0,
        "attention sinks": getattr(cfg, "use_attention_sinks", False),
    }
    for what, present in problems.items():
        if present:
            raise InterpError(f"attribution graphs support pre-norm transformers; this model has {what}")


def _norm_params(model, norm, d_model: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = norm_weight(model, norm)
    b = getattr(norm, "b", None)
    w = like.new_ones(d_model) if w is None else w.detach().to(like)
    b = like.new_zeros(d_model) if b is None else b.detach().to(like)
    return w, b


@dataclasses.dataclass
class FrozenLayer:
    """One layer's frozen quantities. H query heads share `n_kv` value heads in groups of H // n_kv."""

    pattern: torch.Tensor  # [H, T, T] attention pattern (query, key)
    scale1: torch.Tensor  # [T] ln1 scale of each position
    scale2: torch.Tensor  # [T] ln2 scale (what transcoders divide by)
    w1: torch.Tensor  # [d] ln1 weight
    W_V: torch.Tensor  # [d, n_kv * d_head] value weights, heads side by side
    W_O: torch.Tensor  # [H * d_head, d] output weights, heads stacked
    n_kv: int
    attn_const: torch.Tensor  # [d] what attention adds at every position whatever the input (biases)
    normalized2: torch.Tensor  # [T, d] ln2.hook_normalized (the transcoders' input)
    mlp_out: torch.Tensor  # [T, d] hook_mlp_out

    @property
    def n_heads(self) -> int:
        return self.pattern.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[0] // self.n_heads

    def head_values(self, vectors: torch.Tensor, positions: torch.Tensor, centered: bool) -> torch.Tensor:
        """[n, H, d_head]: what each head's value vector would be if `vectors` [n, d] were written into the
        residual at `positions` [n] (norm frozen, no biases)."""
        x = vectors - vectors.mean(-1, keepdim=True) if centered else vectors
        v = (x * self.w1 / self.scale1[positions, None]) @ self.W_V
        v = v.view(len(vectors), self.n_kv, 1, self.d_head)
        return v.expand(-1, -1, self.n_heads // self.n_kv, -1).reshape(len(vectors), self.n_heads, self.d_head)

    def head_outputs(self, reads: torch.Tensor) -> torch.Tensor:
        """[n, H, d_head]: W_O^h applied to read vectors [n, d] (so a head's path weight is value . this)."""
        return (reads @ self.W_O.T).view(len(reads), self.n_heads, self.d_head)


@dataclasses.dataclass
class Frozen:
    """The frozen model of one prompt (batch of one): everything the linear pass and the checks need."""

    tokens: torch.Tensor  # [T] token ids
    layers: list[FrozenLayer]
    embed: torch.Tensor  # [T, d] token embedding + learned position embedding (the embedding nodes' writes)
    scale_final: torch.Tensor  # [T] ln_final scale
    w_final: torch.Tensor  # [d]
    b_final: torch.Tensor  # [d]
    W_U: torch.Tensor  # [d, V]
    b_U: torch.Tensor  # [V]
    logits: torch.Tensor  # [V] logits of the last position
    centered: bool  # LayerNorm (centres) vs RMSNorm

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def center(self, x: torch.Tensor) -> torch.Tensor:
        """P: the norms' centring (LayerNorm), identity for RMSNorm. Symmetric, so its own transpose."""
        return x - x.mean(-1, keepdim=True) if self.centered else x

    def transpose_attention(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        """Gradient on resid_pre of `layer` from `grad` [n, t, d] on its resid_mid (t <= T positions)."""
        f = self.layers[layer]
        n, t, d = grad.shape
        H, dh, kv = f.n_heads, f.d_head, f.n_kv
        u = (grad @ f.W_O.T).view(n, t, H, dh)  # d/dz of each head's output
        z = torch.einsum("hqk,nqhe->nkhe", f.pattern[:, :t, :t], u)  # back through the frozen pattern
        if kv != H:
            z = z.reshape(n, t, kv, H // kv, dh).sum(3)
        back = (z.reshape(n, t, kv * dh) @ f.W_V.T) * f.w1 / f.scale1[:t, None]
        return grad + self.center(back)


@torch.no_grad()
def capture(model, tokens: torch.Tensor) -> Frozen:
    """Run `model` once on `tokens` [1, T] and keep every frozen quantity (float32 on the model's device)."""
    check_supported(model)
    cfg = model.cfg
    L, d = cfg.n_layers, cfg.d_model
    names = {"hook_embed", "ln_final.hook_scale"}
    if cfg.positional_embedding_type == "standard":
        names.add("hook_pos_embed")
    for l in range(L):
        names |= {f"blocks.{l}.attn.hook_pattern", f"blocks.{l}.ln1.hook_scale", f"blocks.{l}.ln2.hook_scale",
                  f"blocks.{l}.ln2.hook_normalized", f"blocks.{l}.hook_mlp_out"}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    if not torch.isfinite(logits).all():
        raise InterpError("the model's forward pass gives NaN or inf logits on this prompt; check the model's "
                          "weights or use --dtype float32")
    f32 = {k: v[0].float() for k, v in cache.items()}
    like = f32["hook_embed"]
    layers = []
    for l, block in enumerate(model.blocks):
        attn = block.attn
        W_V = (attn._W_V if hasattr(attn, "_W_V") else attn.W_V).detach().float()  # [kv, d, dh]
        b_V = attn._b_V if hasattr(attn, "_b_V") else attn.b_V  # [kv, dh]; None where the bridge has no bias
        b_V = like.new_zeros(W_V.shape[0], W_V.shape[2]) if b_V is None else b_V.detach().float()
        W_O = attn.W_O.detach().float()  # [H, dh, d]
        kv, H = W_V.shape[0], W_O.shape[0]
        w1, b1 = _norm_params(model, block.ln1, d, like)
        value_const = torch.einsum("d,kde->ke", b1, W_V) + b_V  # [kv, dh]: the value every key gives for free
        value_const = value_const.repeat_interleave(H // kv, dim=0)  # [H, dh]
        b_O = attn.b_O.detach().float() if attn.b_O is not None else like.new_zeros(d)
        layers.append(FrozenLayer(
            pattern=f32[f"blocks.{l}.attn.hook_pattern"],
            scale1=f32[f"blocks.{l}.ln1.hook_scale"][:, 0], scale2=f32[f"blocks.{l}.ln2.hook_scale"][:, 0],
            w1=w1, W_V=W_V.permute(1, 0, 2).reshape(d, -1).contiguous(),
            W_O=W_O.reshape(-1, d).contiguous(), n_kv=kv,
            attn_const=torch.einsum("he,hed->d", value_const, W_O) + b_O,
            normalized2=f32[f"blocks.{l}.ln2.hook_normalized"], mlp_out=f32[f"blocks.{l}.hook_mlp_out"]))
    embed = f32["hook_embed"] + f32.get("hook_pos_embed", 0)
    w_final, b_final = _norm_params(model, model.ln_final, d, like)
    b_U = getattr(model.unembed, "b_U", None)
    return Frozen(
        tokens=tokens[0], layers=layers, embed=embed, scale_final=f32["ln_final.hook_scale"][:, 0],
        w_final=w_final, b_final=b_final, W_U=model.unembed.W_U.detach().float(),
        b_U=b_U.detach().float() if b_U is not None else like.new_zeros(cfg.d_vocab_out),
        logits=logits[0, -1].detach().float(),
        centered=cfg.normalization_type in ("LN", "LNPre"))


def freeze_hooks(frozen: Frozen) -> list[tuple[str, object]]:
    """TransformerLens forward hooks that fix every attention pattern and norm scale at `frozen`'s values
    (any batch size): with them the hooked model is the frozen model, for references and checks."""

    def fixed(value: torch.Tensor):
        return lambda x, hook: value.to(x.dtype).expand_as(x)

    hooks: list[tuple[str, object]] = []
    for l, f in enumerate(frozen.layers):
        hooks += [(f"blocks.{l}.attn.hook_pattern", fixed(f.pattern)),
                  (f"blocks.{l}.ln1.hook_scale", fixed(f.scale1[:, None])),
                  (f"blocks.{l}.ln2.hook_scale", fixed(f.scale2[:, None]))]
    hooks.append(("ln_final.hook_scale", fixed(frozen.scale_final[:, None])))
    return hooks

"""Hook-name helpers: validation with suggestions, and the standard names per layer.

The hook mechanism itself is TransformerLens's (`HookPoint`s, `run_with_cache`, `run_with_hooks`,
`model.hooks(...)`); this module only checks and spells names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from interp.errors import InterpError, suggest


def check_hook_names(model, names: Iterable[str]) -> list[str]:
    """Return `names` as a list, or raise a one-line error naming the closest valid hook."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in model.hook_dict:
            raise InterpError(
                f"unknown hook {name!r}{suggest(name, model.hook_dict)}; `interp info --hooks` lists them"
            )
    return names


def check_layer(model, layer: int) -> int:
    """Return `layer`, or raise when it is outside [0, n_layers)."""
    n = model.cfg.n_layers
    if not -n <= layer < n:
        raise InterpError(f"layer {layer} is out of range; the model has layers 0..{n - 1}")
    return layer % n


def parse_layers(model, text: str | None) -> list[int]:
    """'all', '5', '3,7,9' or '4-8' (inclusive) -> a list of checked layer indices."""
    if text is None or text == "all":
        return list(range(model.cfg.n_layers))
    layers: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise InterpError(f"cannot read layers {text!r}; write 'all', '5', '3,7' or '4-8'") from None
    return [check_layer(model, layer) for layer in layers]


def hook_layer(name: str) -> int | None:
    """The block a hook belongs to (`blocks.3.ln2.hook_normalized` -> 3); None outside the blocks."""
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """The residual between a block's attention and its MLP (the MLP's input, before ln2)."""
    return f"blocks.{layer}.hook_resid_mid"


def mlp_post(layer: int) -> str:
    """The MLP's hidden activations [..., d_mlp] that multiply the rows of W_out (act(gate) x up when gated)."""
    return f"blocks.{layer}.mlp.hook_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def attn_scores(layer: int) -> str:
    """Pre-softmax attention scores [batch, heads, query, key] (masked cells are -inf)."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def query_key(model, layer: int) -> tuple[str, str]:
    """The hooks of q and k as the scores use them: after the rotary embedding (`hook_rot_q`,
    `hook_rot_k`) on models that have one, else `hook_q`, `hook_k`."""
    rotated = f"blocks.{layer}.attn.hook_rot_q" in model.hook_dict
    prefix = "rot_" if rotated else ""
    return f"blocks.{layer}.attn.hook_{prefix}q", f"blocks.{layer}.attn.hook_{prefix}k"


def attn_z(layer: int) -> str:
    """Per-head attention output before W_O: [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def attn_v(layer: int) -> str:
    """Value vectors: [batch, pos, kv_head, d_head] (grouped-query attention: the shared KV heads)."""
    return f"blocks.{layer}.attn.hook_v"


def mlp_output(model, layer: int) -> str:
    """The hook holding the output of `blocks[layer].mlp.W_out` (+ `b_out`): `blocks.{layer}.hook_mlp_out`, except
    where a norm follows the MLP (Gemma-2/3, OLMo-2: that hook is normalised), then the MLP's own output,
    `blocks.{layer}.mlp.hook_out`."""
    from interp.models.arch import output_norms

    return f"blocks.{layer}.mlp.hook_out" if output_norms(model) else mlp_out(layer)

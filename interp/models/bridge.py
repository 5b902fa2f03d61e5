"""Causal LMs that TransformerLens's `HookedTransformer` cannot convert (Gemma-2, Gemma-3, OLMo-2, ...), wrapped
by TransformerLens 3's `TransformerBridge` around the Hugging Face model itself.

The bridge fires the same hook names (`hook_embed`, `blocks.{l}.hook_resid_post`, `blocks.{l}.ln2.hook_normalized`,
`blocks.{l}.attn.hook_pattern`, ...) and has the same weight views (`W_U`, `W_E`, `blocks[l].mlp.W_out`, views of
the Hugging Face parameters, so writes reach the model). What differs from a `HookedModel` is adapted here, once:

- the config says where the model came from the way `HookedTransformer`'s does (`original_architecture`), and no
  BOS token is prepended by default, as for every model the loader returns;
- hook names are checked (the `CheckedHooks` mixin).

Architecture facts the bridge leaves to the Hugging Face code (Gemma's embedding multiplier is applied after
`hook_embed`, the final logit soft-cap after `unembed`) are read by `interp.models.readout`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from transformer_lens.model_bridge import TransformerBridge

from interp.models.hooked import CheckedHooks


class BridgeModel(CheckedHooks, TransformerBridge):
    """A `TransformerBridge` whose hook-taking methods validate hook names."""

    loader = "transformer-bridge"


def boot_bridge(folder: Path, hf_model, tokenizer) -> BridgeModel:
    """Wrap the loaded Hugging Face `hf_model` (eager attention, so that patterns can be hooked; on its device)
    of `folder` as a `BridgeModel`, offline: the config is read from the model, not from the hub."""
    with contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints while booting
        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer,
                                                     dtype=next(hf_model.parameters()).dtype)
    bridge.__class__ = BridgeModel
    bridge.cfg.original_architecture = bridge.cfg.architecture
    bridge.cfg.default_prepend_bos = False
    bridge.eval()
    return bridge

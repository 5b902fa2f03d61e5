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
import functools
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from transformer_lens.model_bridge import TransformerBridge

from interp.hooks import resid_post
from interp.models.hooked import CheckedHooks


# Analyses freeze norm scales through hooks on purpose (graphs, attributions); the bridge then computes the norm
# from the hooked values, which is what they ask for.
warnings.filterwarnings("ignore", message="A forward hook edited hook_scale/hook_normalized")


class BridgeModel(CheckedHooks, TransformerBridge):
    """A `TransformerBridge` whose hook-taking methods validate hook names."""

    loader = "transformer-bridge"

    def run_with_hooks(self, *args: Any, fwd_hooks=(), bwd_hooks=(), **kwargs: Any):
        return super().run_with_hooks(*args, fwd_hooks=_named(fwd_hooks), bwd_hooks=_named(bwd_hooks), **kwargs)

    def hooks(self, fwd_hooks=(), bwd_hooks=(), *args: Any, **kwargs: Any):
        """TransformerLens's temporary-hook context; hook functions see the names they were added under."""
        return super().hooks(_named(fwd_hooks), _named(bwd_hooks), *args, **kwargs)

    def forward(self, input: Any, *args: Any, start_at_layer: int | None = None, **kwargs: Any):
        """`TransformerBridge.forward`, plus `HookedTransformer`'s `start_at_layer`: `input` is then the residual
        [batch, pos, d_model] entering that block.

        The bridge runs the Hugging Face forward pass whole, so the blocks before `start_at_layer` run on
        placeholder tokens and their output is replaced at `blocks.{start_at_layer}.hook_resid_pre`: the same
        result as `HookedTransformer`, without its saving. `stop_at_layer=n_layers` returns the last block's
        output, as `HookedTransformer` does (the bridge would return logits).
        """
        if (kwargs.get("stop_at_layer") or 0) >= self.cfg.n_layers:
            del kwargs["stop_at_layer"]
            kept = {}

            def keep(act, hook):
                kept["resid"] = act
                return act

            with self.hooks(fwd_hooks=[(resid_post(self.cfg.n_layers - 1), keep)]):
                self.forward(input, *args, start_at_layer=start_at_layer, **kwargs)
            return kept["resid"]
        if start_at_layer is None:
            return super().forward(input, *args, **kwargs)
        resid = input
        placeholder = torch.zeros(resid.shape[:2], dtype=torch.long, device=resid.device)
        with _first_hook(self.hook_dict[f"blocks.{start_at_layer}.hook_resid_pre"], lambda act, hook: resid.to(act.dtype)):
            return super().forward(placeholder, *args, **kwargs)


class _NamedPoint:
    """A hook point as a hook function sees it, under the name the hook was added with: the bridge passes its
    own point, named canonically (`blocks.0.hook_in` for `blocks.0.hook_resid_pre`), where `HookedTransformer`'s
    point has the name asked for, and analyses key what they keep by `hook.name`."""

    def __init__(self, point, name: str):
        self._point, self.name = point, name

    def __getattr__(self, attr: str):
        return getattr(self._point, attr)


def _named(hooks) -> list:
    """(name, fn) hooks whose functions receive a `_NamedPoint` of that name (filter functions left as they are)."""
    out = []
    for name, fn in hooks:
        if isinstance(name, str):
            fn = functools.partial(_call_named, fn, name)
        out.append((name, fn))
    return out


def _call_named(fn, name: str, act, hook):
    return fn(act, hook=_NamedPoint(hook, name))


@contextlib.contextmanager
def _first_hook(point, fn):
    """`fn` as the first forward hook of `point` while the context lasts: hooks added earlier (writes into the
    same activation) then act on what it returns."""
    point.add_hook(fn, dir="fwd", prepend=True)
    handle = point.fwd_hooks[0]
    try:
        yield
    finally:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)


def check_bridge_supports(folder: Path) -> None:
    """Raise ValueError (which the loader words as its one-line error) for a model whose architecture
    `TransformerBridge` has no adapter for."""
    from transformer_lens.model_bridge.sources.transformers import determine_architecture_from_hf_config
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    try:
        determine_architecture_from_hf_config(config)
    except ValueError:
        names = ", ".join(config.architectures or [config.model_type])
        raise ValueError(f"TransformerLens supports neither {names} nor its model type {config.model_type!r}"
                         ) from None


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

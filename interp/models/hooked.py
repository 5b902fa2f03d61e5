"""The hooked model: TransformerLens's `HookedTransformer`, with hook names checked.

It is the same object TransformerLens users know (`run_with_cache`, `run_with_hooks`, `hooks()`,
one `ActivationCache`); the only addition is that a misspelt hook name fails at once with the
closest valid names instead of silently caching nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from transformer_lens import HookedTransformer

from interp.hooks import check_hook_names

HookSpec = tuple[str | Callable[[str], bool], Callable[..., Any]]


def _check(model, hooks: Iterable[HookSpec]) -> list[HookSpec]:
    hooks = list(hooks)
    check_hook_names(model, [name for name, _ in hooks if isinstance(name, str)])
    return hooks


class CheckedHooks:
    """Hook-name checks for the hook-taking methods of a TransformerLens model (`HookedTransformer` or
    `TransformerBridge`): mixed in before the model class, so both loaders' models fail the same way."""

    def run_with_cache(self, *args: Any, names_filter: Any = None, **kwargs: Any):
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple)):
            names_filter = check_hook_names(self, names_filter)
        return super().run_with_cache(*args, names_filter=names_filter, **kwargs)

    def run_with_hooks(self, *args: Any, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
                       **kwargs: Any):
        return super().run_with_hooks(*args, fwd_hooks=_check(self, fwd_hooks), bwd_hooks=_check(self, bwd_hooks),
                                      **kwargs)

    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (), *args: Any, **kwargs: Any):
        """TransformerLens's temporary-hook context, names checked."""
        return super().hooks(_check(self, fwd_hooks), _check(self, bwd_hooks), *args, **kwargs)


class HookedModel(CheckedHooks, HookedTransformer):
    """A `HookedTransformer` whose hook-taking methods validate hook names."""

    loader = "hooked-transformer"

    def run_with_cache(self, *args: Any, **kwargs: Any):
        """With the layers split over GPUs (`cfg.n_devices` > 1) the cache is gathered onto the first one, where
        the analyses combine layers; otherwise TransformerLens's (names checked)."""
        if self.cfg.n_devices > 1:
            kwargs.setdefault("device", self.cfg.device)
        return super().run_with_cache(*args, **kwargs)

    def expose_all_hooks(self, on: bool = True) -> None:
        """Also fire the optional hooks (per-head results, split q/k/v inputs, attn and MLP inputs).

        They cost memory and time, so TransformerLens leaves them off by default. Grouped-query
        models have split q/k/v inputs but no single `hook_attn_in`.
        """
        self.set_use_attn_result(on)
        self.set_use_split_qkv_input(on)
        self.set_use_hook_mlp_in(on)
        if not self.cfg.n_key_value_heads:
            self.set_use_attn_in(on)

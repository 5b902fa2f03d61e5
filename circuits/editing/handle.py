"""Exact undo for weight edits.

An edit saves a bit-exact copy of every weight it changes before changing it, and returns an
`EditHandle`. Handles live on a per-model stack: undoing restores the saved copies, so stacked edits
unstack in reverse order, and undoing out of order (which would silently drop a later edit, the way
the reference code lost the original weights after repeated edits) is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from interp.errors import InterpError

_STACK_ATTR = "_interp_edit_stack"


def edit_stack(model) -> list[EditHandle]:
    """The handles of the edits currently applied to `model`, oldest first."""
    if not hasattr(model, _STACK_ATTR):
        object.__setattr__(model, _STACK_ATTR, [])
    return getattr(model, _STACK_ATTR)


def w_out(model, layer: int) -> torch.nn.Parameter:
    """The MLP output weight that ROME, MEMIT and PMET change: [d_mlp, d_model]."""
    return model.blocks[layer].mlp.W_out


@dataclasses.dataclass(eq=False)
class EditHandle:
    """An applied edit: what changed, how, and the original weights to restore."""

    model: Any = dataclasses.field(repr=False)
    method: str
    layers: list[int]
    requests: list[Any]
    originals: dict[int, torch.Tensor] = dataclasses.field(repr=False)
    info: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    active: bool = True

    def undo(self) -> None:
        """Restore every weight this edit changed, bit for bit."""
        if not self.active:
            raise InterpError("this edit was already undone")
        stack = edit_stack(self.model)
        if stack[-1] is not self:
            raise InterpError(f"undo the {len(stack) - 1 - stack.index(self)} later edit(s) first")
        with torch.no_grad():
            for layer, weight in self.originals.items():
                w_out(self.model, layer).copy_(weight)
        stack.pop()
        self.active = False

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self.undo()


def apply_updates(model, method: str, requests: list, layers: list[int], compute: Callable[[], None],
                  info: dict[str, Any] | None = None) -> EditHandle:
    """Save W_out of `layers`, run `compute` (which writes into those weights), return the handle.

    On any error every saved weight is restored before the error propagates, so a failed edit
    leaves the model unchanged.
    """
    originals = {l: w_out(model, l).detach().clone() for l in layers}
    try:
        compute()
    except BaseException:
        with torch.no_grad():
            for layer, weight in originals.items():
                w_out(model, layer).copy_(weight)
        raise
    handle = EditHandle(model, method, sorted(layers), requests, originals, info or {})
    edit_stack(model).append(handle)
    return handle

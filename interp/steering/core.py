"""The one way interp adds a vector to activations: at a hook, at chosen positions, also while generating.

`add(acts, vector, mask)` is the addition itself; `add_hook(name, vector, mask)` wraps it as a
TransformerLens hook for a fixed-length pass (probe interventions, the steered measurement pass), and
`steering(model, vector, hook, coef, positions)` is a context manager that keeps it on during
`model.generate(...)`, with or without the key/value cache.

Positions are absolute indices into the sequence (prompt first; P = the prompt's length):
- "all": every position, prompt and generated;
- "prompt": positions 0..P-1 only; generated tokens see the change only through attention to the prompt;
- "last": position P-1 (the last prompt token, whose output picks the first new token) and every
  generated position P, P+1, ...
With `generate(use_past_kv_cache=True)` every forward pass after the first sees only the new position.
While steering, the model's `forward` is wrapped to read the length of the key/value cache it is given
(the pass's offset), so each pass steers the same absolute positions as a pass over the whole sequence
would, and generation with the cache equals generation without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import torch

from interp.errors import InterpError, check_finite
from interp.hooks import check_hook_names

POSITIONS = ("all", "prompt", "last")
Hook = tuple[str, Callable]


def check_positions(positions: str) -> str:
    """`positions`, or a one-line error naming the choices."""
    if positions not in POSITIONS:
        raise InterpError(f"unknown positions {positions!r}; use one of {', '.join(POSITIONS)}")
    return positions


def position_mask(positions: str, start: int, length: int, prompt_len: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """[length] bool: which of the absolute positions start, ..., start + length - 1 are steered."""
    pos = torch.arange(start, start + length, device=device)
    if positions == "all":
        return torch.ones(length, dtype=torch.bool, device=device)
    if positions == "prompt":
        return pos < prompt_len
    return pos >= prompt_len - 1


def add(acts: torch.Tensor, vector: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`acts` [B, T, ...] plus `vector` (one position's width, e.g. [d_model]; for [B, T, heads, d_head]
    hooks the heads concatenated) where `mask` ([T] or [B, T]) is set, in the activations' dtype."""
    width = acts.shape[2:].numel()
    if vector.numel() != width:
        raise InterpError(f"the steering vector is {vector.numel()} wide but the hook's activations are {width} "
                          "wide; use a vector made for this model and hook")
    m = mask.to(device=acts.device, dtype=acts.dtype)
    m = m.reshape(*m.shape, *[1] * (acts.ndim - 2))  # [T] -> [T, 1, ...], [B, T] -> [B, T, 1, ...]
    return acts + m * vector.to(acts).reshape(acts.shape[2:])


def add_hook(name: str, vector: torch.Tensor, mask: torch.Tensor) -> Hook:
    """A hook on `name` that adds `vector` where `mask` ([T] or [B, T]) is set, for one pass of known length."""
    return name, lambda acts, hook: add(acts, vector, mask)


def _cache_length(kwargs: dict) -> int:
    """How many positions a forward pass's key/value cache already holds (0 without one)."""
    cache = kwargs.get("past_kv_cache")
    return 0 if cache is None else int(cache[0].past_keys.shape[1])


@dataclasses.dataclass
class Steering:
    """An active `steering` context: what is added, where, and the positions it has placed so far.

    `prompt_len` is P in the position rules; when not given it is the length of the first forward pass
    inside the context (the prompt, for one `generate` call), so pass it when one context runs several
    generations without the key/value cache.
    """

    vector: torch.Tensor = dataclasses.field(repr=False)  # what coefficient 1 adds: [width] float32
    hook: str
    coef: float
    positions: str
    prompt_len: int | None = None
    offset: int = 0  # the absolute position of the current pass's first token

    def __call__(self, acts: torch.Tensor, hook=None) -> torch.Tensor:
        if self.prompt_len is None:
            self.prompt_len = acts.shape[1] + self.offset
        mask = position_mask(self.positions, self.offset, acts.shape[1], self.prompt_len, acts.device)
        return add(acts, self.coef * self.vector, mask)


@contextlib.contextmanager
def steering(model, vector: torch.Tensor, hook: str, coef: float = 1.0, positions: str = "all",
             prompt_len: int | None = None) -> Iterator[Steering]:
    """Add `coef * vector` to `hook`'s activations at `positions` for every forward pass in the block,
    including `model.generate(...)` with `use_past_kv_cache=True` (see the module doc for the positions).

        with steering(model, v, "blocks.6.hook_resid_post", 4.0):
            model.generate(tokens, max_new_tokens=20)
    """
    check_hook_names(model, [hook])
    check_positions(positions)
    coef = check_finite("the steering coefficient", coef)
    vector = torch.as_tensor(vector).detach().float().reshape(-1).to(model.cfg.device)
    state = Steering(vector, hook, coef, positions, prompt_len)
    had_own = "forward" in model.__dict__
    own, inner = model.__dict__.get("forward"), model.forward

    def forward(*args, **kwargs):
        state.offset = _cache_length(kwargs)
        return inner(*args, **kwargs)

    model.forward = forward  # generate() calls self.forward, not self(), so a module pre-hook would miss it
    try:
        with model.hooks(fwd_hooks=[(hook, state)]):
            yield state
    finally:
        if had_own:
            model.forward = own
        else:
            del model.forward

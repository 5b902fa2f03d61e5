"""The plain causal-tracing loop of ROME's `experiments/causal_trace.py`: one forward pass per (token,
layer) with 1 clean + `samples` corrupted copies in the batch. It is the specification the fast tracer
(`circuits.tracing.trace`) is checked against, in the tests and in `benchmarks/tracing.py`.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from circuits.tracing import OUTPUT_HOOKS, KINDS, Corruption, prepare, window_layers
from interp.hooks import resid_post


@torch.no_grad()
def _patched_prob(model, tokens, corruption: Corruption, restore: list[tuple[str, int]], answer_id: int) -> float:
    """ROME's trace_with_patch: row 0 clean, rows 1.. noisy; copy row 0 into rows 1.. at (hook, token)."""

    def copy_clean(act, hook, t):
        act[1:, t] = act[0, t]
        return act

    hooks = [corruption.hook(first_row=1)]
    hooks += [(name, lambda act, hook, t=t: copy_clean(act, hook, t)) for name, t in restore]
    logits = model.run_with_hooks(tokens.repeat(corruption.noise.shape[0] + 1, 1), fwd_hooks=hooks)
    return float(logits[1:, -1].softmax(-1).mean(0)[answer_id])


@torch.no_grad()
def trace_reference(model, prompt: str, subject: str, noise_std: float, target: str | None = None,
                    kinds=KINDS, samples: int = 10, window: int = 10, seed: int = 1, progress: bool = True,
                    cells: list[tuple[int, int]] | None = None):
    """(scores {kind: [T, L]}, high, low) by one forward pass per cell, as the reference code does.

    `cells` limits the work to some (token, layer) cells (the others stay NaN), to time the loop per pass.
    """
    tokens, span, answer_id, _ = prepare(model, prompt, subject, target, samples, window)
    corruption = Corruption.draw(model, span, samples, noise_std, seed)
    probs = model(tokens)[0, -1].softmax(-1)
    answer_id = int(probs.argmax()) if answer_id is None else answer_id
    high, low = float(probs[answer_id]), _patched_prob(model, tokens, corruption, [], answer_id)
    T, L = tokens.shape[1], model.cfg.n_layers
    cells = [(t, layer) for t in range(T) for layer in range(L)] if cells is None else cells
    scores = {}
    bar = tqdm(total=len(kinds) * len(cells), desc="reference trace", disable=not progress)
    for kind in kinds:
        scores[kind] = torch.full((T, L), float("nan"))
        for t, layer in cells:
            names = ([resid_post(layer)] if kind == "hidden"
                     else [OUTPUT_HOOKS[kind](j) for j in window_layers(layer, window, L)])
            scores[kind][t, layer] = _patched_prob(model, tokens, corruption, [(n, t) for n in names], answer_id)
            bar.update()
    bar.close()
    return scores, high, low

"""`steer(model, vector, layer, coefs, prompt=...)`: generations and measures per coefficient, with a control.

For each coefficient, the vector and a random direction of the same norm (drawn once, seeded) are each
added during generation (`interp.steering.core.steering`, the key/value cache on); each generation is
read back and scored (`interp.steering.measure`). Coefficient 0 adds nothing, so it is run once and
reported for both conditions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from interp.errors import InterpError, check_finite
from interp.fluency import ngram_entropy
from interp.hooks import check_hook_names, resid_post
from interp.steering.core import check_positions, steering
from interp.steering.measure import neutral_kl, neutral_prompts, read_back
from interp.steering.result import SteerResult
from interp.steering.vectors import SteeringVector, resolve_vector
from interp.tokens import encode

TOP_K = 5  # sampling as the editing fluency metric (ROME's generate_fast) does


def check_coefs(coefs: Sequence[float]) -> list[float]:
    """The coefficients as floats, or a one-line error for none or a non-finite one."""
    coefs = [check_finite("each --coef", c) for c in coefs]
    if not coefs:
        raise InterpError("no coefficients; pass e.g. --coef 0,2,4,8")
    return coefs


def random_control(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the norm of `vector` (standard normal draw from `seed`, rescaled)."""
    draw = torch.randn(vector.numel(), generator=torch.Generator().manual_seed(seed)).to(vector.device, vector.dtype)
    return draw / draw.norm() * vector.norm()


@torch.no_grad()
def generate(model, tokens: torch.Tensor, max_new_tokens: int, samples: int, seed: int) -> torch.Tensor:
    """[samples, P + N] continuations of `tokens` [1, P]: greedy for one sample, else top-5 samples seeded
    with `seed` (so every condition draws the same random numbers); always N new tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.generate(tokens.expand(samples, -1), max_new_tokens=max_new_tokens, do_sample=samples > 1,
                              top_k=TOP_K if samples > 1 else None, use_past_kv_cache=True, verbose=False,
                              stop_at_eos=False)


def continuation(model, tokens: torch.Tensor, prompt_len: int) -> str:
    """The generated text of one sample, up to its first end-of-sequence token."""
    new = tokens[prompt_len:].tolist()
    eos = model.tokenizer.eos_token_id
    return model.tokenizer.decode(new[:new.index(eos)] if eos in new else new, skip_special_tokens=True)


def steer(model, vector: str | torch.Tensor | SteeringVector, layer: int | None = None,
          coefs: Sequence[float] = (0, 2, 4, 8), *, prompt: str, hook: str | None = None, positions: str = "all",
          max_new_tokens: int = 24, samples: int = 1, seed: int = 0, neutral: int = 8,
          workspace: str | Path | None = None, progress: bool = True) -> SteerResult:
    """Steer generation from `prompt` with `vector` (a SPEC such as "dataset:sentiment", a tensor, or a
    resolved `SteeringVector`) for each coefficient, beside the random control; see `interp.steering.measure`
    for the columns. `layer` and `hook` place a SPEC or a tensor (default `blocks.{layer}.hook_resid_post`,
    or the hook the source carries); a `SteeringVector` already knows its hook."""
    from tqdm.auto import tqdm

    coefs = check_coefs(coefs)
    check_positions(positions)
    for name, value in (("max_new_tokens", max_new_tokens), ("samples", samples), ("neutral", neutral)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InterpError(f"{name} must be a whole number of at least 1 (got {value!r})")
    tokens = encode(model, prompt)
    prompt_len = tokens.shape[1]
    if prompt_len + max_new_tokens > model.cfg.n_ctx:
        raise InterpError(f"the prompt ({prompt_len} tokens) plus {max_new_tokens} new tokens exceed the context "
                          f"of {model.cfg.n_ctx}; lower --max-new-tokens")
    if isinstance(vector, str):
        vector = resolve_vector(model, vector, layer, hook, workspace, seed)
    elif not isinstance(vector, SteeringVector):
        if hook is None and layer is None:
            raise InterpError("a vector given as a tensor needs a layer or a hook to add it at")
        hook = check_hook_names(model, [hook or resid_post(layer)])[0]
        vector = SteeringVector(torch.as_tensor(vector).detach().float().reshape(-1).cpu(), hook, "tensor")
    behaviour = vector.behaviour
    neutral_tokens = neutral_prompts(model, neutral)
    base_logprobs = model(neutral_tokens)[:, -1].float().log_softmax(-1)
    directions = {"vector": vector.vector, "random": random_control(vector.vector, seed)}
    rows, texts = [], []
    runs = [(c, name) for c in coefs for name in directions if c != 0 or name == "vector"]
    for coef, name in tqdm(runs, desc="steering", unit="run", file=sys.stderr, disable=not progress):
        addition = (vector.hook, coef * directions[name].to(model.cfg.device))
        with steering(model, directions[name], vector.hook, coef, positions, prompt_len):
            out = generate(model, tokens, max_new_tokens, samples, seed)
        readout = read_back(model, out, prompt_len, addition, positions, behaviour)
        generated = [continuation(model, row, prompt_len) for row in out]
        row = {**(behaviour.score(readout) if behaviour else {}),
               "kl": neutral_kl(model, neutral_tokens, base_logprobs, addition, positions),
               "fluency": sum(map(ngram_entropy, generated)) / len(generated)}
        same = list(directions) if coef == 0 else [name]  # coefficient 0 adds nothing: one run serves both
        rows += [{"coef": coef, "condition": n, **row} for n in same]
        texts += [{"coef": coef, "condition": n, "sample": i, "text": t} for n in same for i, t in enumerate(generated)]
    return SteerResult(
        model=getattr(model.cfg, "spec", model.cfg.model_name), prompt=prompt, source=vector.source, hook=vector.hook,
        positions=positions, coefs=coefs, max_new_tokens=max_new_tokens, samples=samples, seed=seed,
        vector_norm=vector.norm, behaviour=behaviour.name if behaviour else "",
        behaviour_columns=list(behaviour.columns) if behaviour else [],
        behaviour_info=behaviour.info() if behaviour else {}, neutral_prompts=neutral, vector=vector.vector,
        frame=pd.DataFrame(rows), generations=pd.DataFrame(texts))

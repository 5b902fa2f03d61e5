"""Second moment E[k k^T] of the MLP keys (the input of the down projection) over a corpus.

ROME's `layer_stats` collects these once per layer over Wikipedia and caches them; ours stream the
corpus through the model only up to the deepest layer asked for (several layers in one pass),
accumulate in float64 (each batch's product in float32), save partial sums every few batches so an
interrupted run resumes, and cache the result on disk keyed on the content of what they depend on:
the weights up to the layer's MLP keys, the corpus bytes, the layer and the token count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from interp.cache import cache_dir
from interp.corpus import load_corpus
from interp.fingerprint import cache_name, corpus_fingerprint, weights_fingerprint
from interp.hooks import check_layer
from interp.streaming import stream_activations

DEFAULT_TOKENS = 200_000
SEQ_LEN = 128
BATCH_SIZE = 16
SAVE_EVERY = 10  # batches between partial saves


def key_hook(layer: int) -> str:
    """The hook whose activation is the MLP key: the input of `blocks[layer].mlp.W_out`."""
    return f"blocks.{layer}.mlp.hook_post"


def key_inputs(layer: int) -> Callable[[str], bool]:
    """Whether a parameter (by name) can change the MLP keys of `layer`: not the layer's own output
    weights, the layers after it, the final norm or the unembedding. So an edit of `W_out` (ROME,
    MEMIT) keeps the layer's statistics, and an edit upstream of the keys does not."""
    own_output = (f"blocks.{layer}.mlp.W_out", f"blocks.{layer}.mlp.b_out")

    def upstream(name: str) -> bool:
        block = re.match(r"blocks\.(\d+)\.", name)
        if block:
            return int(block[1]) < layer or (int(block[1]) == layer and name not in own_output)
        return not name.startswith(("unembed.", "ln_final."))
    return upstream


def stats_path(model, layer: int, corpus_digest: str, n_tokens: int) -> Path:
    """Where the finished statistics of one layer live; `corpus_digest` is `corpus_fingerprint` of the corpus."""
    weights = weights_fingerprint(model, key_inputs(layer))
    name = cache_name(f"L{layer}-{n_tokens}", ".safetensors", weights=weights,
                      corpus=corpus_digest, layer=layer, tokens=n_tokens, seq_len=SEQ_LEN, batch_size=BATCH_SIZE)
    return cache_dir("editing", "stats") / name


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else None


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def second_moments(
    model, layers: list[int] | int, corpus: str | None = None, n_tokens: int = DEFAULT_TOKENS,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """{layer: E[k k^T]} as float64 [d_mlp, d_mlp], from the cache or computed in one corpus pass.

    Finished layers are read from disk; the others are accumulated together, resuming from their
    partial sums when an earlier run was interrupted.
    """
    layers = [check_layer(model, l) for l in ([layers] if isinstance(layers, int) else layers)]
    source = load_corpus(corpus)
    digest = corpus_fingerprint(source)
    paths = {l: stats_path(model, l, digest, n_tokens) for l in layers}
    out: dict[int, torch.Tensor] = {}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for layer, path in paths.items():
        done = _load(path)
        if done is not None:
            out[layer] = done["mom2"] / done["count"]
        else:
            d = model.cfg.d_mlp
            state[layer] = _load(path.with_suffix(".partial")) or {
                "mom2": torch.zeros(d, d, dtype=torch.float64), "count": torch.zeros((), dtype=torch.float64),
                "batches": torch.zeros((), dtype=torch.int64)}
    if not state:
        return out

    start = min(int(s["batches"]) for s in state.values())
    hooks = [key_hook(l) for l in state]
    stream = stream_activations(model, hooks, source, BATCH_SIZE, SEQ_LEN, n_tokens, skip_batches=start,
                                progress=progress)
    for index, (_, acts) in enumerate(stream, start=start):
        for layer, s in state.items():
            if index < int(s["batches"]):
                continue  # this layer already counted the batch in an earlier run
            keys = acts[key_hook(layer)].reshape(-1, model.cfg.d_mlp).float()
            s["mom2"] += (keys.T @ keys).double().cpu()  # one batch in float32 on the model's device, the sum in float64
            s["count"] += keys.shape[0]
            s["batches"] += 1
        if (index + 1) % SAVE_EVERY == 0:
            for layer, s in state.items():
                _save(paths[layer].with_suffix(".partial"), s)
    for layer, s in state.items():
        _save(paths[layer], s)
        paths[layer].with_suffix(".partial").unlink(missing_ok=True)
        out[layer] = s["mom2"] / s["count"]
    return out

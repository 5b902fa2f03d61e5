"""Stream a corpus through the model and hand out (or write to disk) chosen activations.

Memory stays bounded by one batch (streaming) or one shard (writing). Written shards are atomic
safetensors files plus a manifest, so an interrupted `write_shards` resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.corpus import Corpus, token_batches
from interp.errors import InterpError
from interp.fingerprint import corpus_fingerprint, weights_fingerprint
from interp.hooks import check_hook_names


def stop_layer(hooks: list[str]) -> int | None:
    """The first block the forward pass can skip while still reaching every hook in `hooks`."""
    layers = []
    for name in hooks:
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            layers.append(int(match.group(1)))
        elif name != "hook_embed" and name != "hook_pos_embed":
            return None  # final norm or unembedding: run the whole model
    return max(layers) + 1 if layers else 0


@torch.no_grad()
def stream_activations(
    model, hooks: list[str] | str, corpus: Corpus, batch_size: int = 16, seq_len: int = 128,
    max_tokens: int | None = None, skip_batches: int = 0, progress: bool = True,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (tokens [B, S], {hook: activation [B, S, ...]}) for each batch of the corpus.

    The forward pass stops after the last block that a hook needs. `skip_batches` skips batches
    that an earlier run already consumed (no forward pass is spent on them).
    """
    hooks = check_hook_names(model, hooks)
    stop = stop_layer(hooks)
    wanted = set(hooks)
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, disable=not progress, file=sys.stderr,
               desc="activations")
    try:
        for i, tokens in enumerate(token_batches(model, corpus, batch_size, seq_len, max_tokens)):
            bar.update(tokens.numel())
            if i < skip_batches:
                continue
            tokens = tokens.to(model.cfg.device)
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted, stop_at_layer=stop)
            yield tokens, {h: cache[h] for h in hooks}
    finally:
        bar.close()


def _manifest(model, hooks, corpus, batch_size, seq_len, max_tokens, batches_per_shard, dtype, model_files) -> dict:
    """The settings a shard folder was written with; the fingerprints make a resume with other
    weights or another corpus of the same name refuse instead of mixing shards."""
    return {
        "model": getattr(model.cfg, "spec", model.cfg.model_name), "weights": weights_fingerprint(model),
        "model_files": model_files, "model_dtype": str(model.cfg.dtype).removeprefix("torch."),
        "hooks": hooks, "corpus": corpus.name, "corpus_content": corpus_fingerprint(corpus),
        "batch_size": batch_size, "seq_len": seq_len, "max_tokens": max_tokens,
        "batches_per_shard": batches_per_shard, "dtype": str(dtype).removeprefix("torch."),
    }


def write_shards(
    model, hooks: list[str] | str, corpus: Corpus, out_dir: str | Path, max_tokens: int,
    batch_size: int = 16, seq_len: int = 128, batches_per_shard: int = 8,
    dtype: torch.dtype = torch.float32, progress: bool = True, model_files: str | None = None,
) -> Path:
    """Write activations of `hooks` to `out_dir/shard_NNNNN.safetensors`, resuming a partial run.

    Each shard holds `tokens` and one tensor per hook, for `batches_per_shard` batches. A folder
    written with other settings is refused rather than mixed. `model_files` is the fingerprint of the
    files the model was loaded from (`interp.sae.cache`: training from the folder checks it), if any.
    """
    from safetensors.torch import save_file

    hooks = check_hook_names(model, hooks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(model, hooks, corpus, batch_size, seq_len, max_tokens, batches_per_shard, dtype, model_files)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise InterpError(f"{out} was written with other settings ({', '.join(diff)}); use a new folder")
    else:
        manifest_path.write_text(json.dumps(manifest, indent=1))
    done = len(list(out.glob("shard_*.safetensors")))
    pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def flush(index: int) -> None:
        tensors = {"tokens": torch.cat([t for t, _ in pending]).cpu()}
        for h in hooks:
            tensors[h] = torch.cat([acts[h] for _, acts in pending]).to(dtype).cpu().contiguous()
        tmp = out / f".shard_{index:05d}.tmp"
        save_file(tensors, str(tmp))
        tmp.rename(out / f"shard_{index:05d}.safetensors")
        pending.clear()

    shard = done
    stream = stream_activations(model, hooks, corpus, batch_size, seq_len, max_tokens,
                                skip_batches=done * batches_per_shard, progress=progress)
    for tokens, acts in stream:
        pending.append((tokens, acts))
        if len(pending) == batches_per_shard:
            flush(shard)
            shard += 1
    if pending:
        flush(shard)
    return out


def read_shards(out_dir: str | Path) -> Iterator[dict[str, torch.Tensor]]:
    """Yield each shard of a `write_shards` folder as {"tokens": ..., hook: ...}, in order."""
    from safetensors.torch import load_file

    paths = sorted(Path(out_dir).glob("shard_*.safetensors"))
    if not paths:
        raise InterpError(f"{out_dir} holds no activation shards; write them with write_shards first")
    for path in paths:
        yield load_file(str(path))

"""Activations made once, SAEs trained from them many times: `interp sae cache` writes a model's activations
at some hooks to disk (`interp.streaming.write_shards`: safetensors shards of whole model batches plus a
manifest), and `interp sae train --from-cache DIR` reads them instead of running the model.

Training from a cache sees exactly the rows training from the model would (the same model batches, in the
same order, flattened and cast to float32 the same way), so with the same seed it gives the same SAE (bit
for bit when the cache was written in the same process; from another process the CPU forward passes may
differ in the last bits: 7e-6 on the default model's SAE weights), as long as the cache holds every token
the run reads; past its end it starts again from its first batch (as
the stream starts the corpus again). The model is not loaded: the manifest's fingerprints of the model's
files, the model dtype and the corpus content are checked against the run's, so a cache of other weights
or text is refused instead of silently used.

Why not sae-lens's cached-activations format (a `datasets` Arrow folder with one hook and `token_ids`):
it holds one hook, so a transcoder (two hooks) or a set of layers needs several copies of the tokens and
passes; it has no fingerprints to refuse a stale cache; and rows come back through Arrow as Python-side
copies. The shards here are plain safetensors, one tensor per hook, readable by anything.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from interp.errors import InterpError
from interp.results import Result, register_result
from interp.sae.activations import check_activations_finite, token_view
from interp.sae.distributed import Dist

MANIFEST = "manifest.json"


@register_result
@dataclasses.dataclass
class ActivationCacheResult(Result):
    """What `interp sae cache` wrote: hooks, tokens, shards and bytes on disk."""

    kind = "activation_cache"
    out: str
    model: str
    corpus: str
    tokens: int
    seq_len: int
    batch_size: int
    shards: int
    dtype: str
    seconds: float
    tokens_per_s: float
    table: pd.DataFrame  # hook, width, megabytes

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        fig = go.Figure(go.Bar(x=[escape_label(h) for h in self.table["hook"]], y=self.table["megabytes"]))
        fig.update_layout(title=f"activation cache: {self.tokens:,} tokens, {self.shards} shards", yaxis_title="MB")
        return fig

    def summary(self) -> str:
        return (f"cached {self.tokens:,} tokens of {self.model} on {self.corpus} ({self.dtype}, {self.shards} shards, "
                f"{self.table['megabytes'].sum():,.1f} MB, {self.tokens_per_s:,.0f} tok/s) in {self.out}\n"
                f"{self.table.to_string(index=False)}\n"
                f"train from it: interp sae train --from-cache {self.out} --hook HOOK --model {self.model} ...")


def model_files_fingerprint(spec: str) -> str:
    """Fingerprint of the files the spec loads from (its Hugging Face folder), without loading the model."""
    from interp.fingerprint import file_fingerprint
    from interp.models import resolve_spec

    return file_fingerprint(resolve_spec(spec))


def _loaded_files_fingerprint(model) -> str | None:
    """`model_files_fingerprint` of the spec `model` was loaded from, or None for a model made in memory.

    A model edited in memory after loading still names its files; its cache records the edited weights'
    fingerprint too (`weights`), but training from the cache, which does not load the model, checks the files.
    """
    spec = getattr(model.cfg, "spec", None)
    try:
        return None if spec is None else model_files_fingerprint(spec)
    except InterpError:
        return None


def cache_activations(model, hooks: list[str], out: str | Path, tokens: int, corpus=None, seq_len: int = 128,
                      batch_size: int = 16, dtype: torch.dtype = torch.float32, progress: bool = True,
                      ) -> ActivationCacheResult:
    """Write `tokens` tokens of `model`'s activations at `hooks` to `out` (resuming an interrupted run there)."""
    from interp.corpus import load_corpus
    from interp.streaming import write_shards

    corpus = corpus if hasattr(corpus, "name") else load_corpus(corpus)
    began = time.perf_counter()
    write_shards(model, hooks, corpus, out, max_tokens=tokens, batch_size=batch_size, seq_len=seq_len,
                 dtype=dtype, progress=progress, model_files=_loaded_files_fingerprint(model))
    seconds = time.perf_counter() - began
    return summarize(out, seconds)


def summarize(out: str | Path, seconds: float = 0.0) -> ActivationCacheResult:
    """The result describing a written cache folder."""
    from safetensors import safe_open

    out = Path(out)
    manifest = read_manifest(out)
    shards = sorted(out.glob("shard_*.safetensors"))
    rows, width, size = 0, {}, dict.fromkeys(manifest["hooks"], 0)
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
            rows += f.get_slice("tokens").get_shape()[0]
            for h in manifest["hooks"]:
                shape = f.get_slice(h).get_shape()
                width[h] = int(torch.Size(shape[2:]).numel())
                size[h] += torch.Size(shape).numel() * torch.finfo(getattr(torch, manifest["dtype"])).bits // 8
    tokens = rows * manifest["seq_len"]
    table = pd.DataFrame({"hook": manifest["hooks"], "width": [width.get(h, 0) for h in manifest["hooks"]],
                          "megabytes": [size[h] / 2**20 for h in manifest["hooks"]]})
    return ActivationCacheResult(out=str(out), model=manifest["model"], corpus=manifest["corpus"], tokens=tokens,
                                 seq_len=manifest["seq_len"], batch_size=manifest["batch_size"], shards=len(shards),
                                 dtype=manifest["dtype"], seconds=seconds, tokens_per_s=tokens / max(seconds, 1e-9),
                                 table=table)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a cache folder; a one-line error when there is none."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InterpError(f"{folder} is not an activation cache (no {MANIFEST}); write one with interp sae cache") from None
    except ValueError:
        raise InterpError(f"{path} is damaged; write the cache again with interp sae cache") from None
    if not list(Path(folder).glob("shard_*.safetensors")):
        raise InterpError(f"{folder} holds no activation shards; write them with interp sae cache")
    return manifest


def check_cache(folder: str | Path, hooks: list[str], model: str, dtype: str, corpus: str | None, seq_len: int,
                batch_size: int) -> dict:
    """The manifest of `folder`, after checking it was made from these model files, dtype and corpus content,
    holds `hooks`, and cut the text as the run would (`seq_len`, `batch_size`); raises naming the difference."""
    from interp.fingerprint import corpus_fingerprint

    manifest = read_manifest(folder)
    missing = [h for h in hooks if h not in manifest["hooks"]]
    if missing:
        raise InterpError(f"{folder} holds no activations at {', '.join(missing)} (it has {', '.join(manifest['hooks'])}); "
                          "cache those hooks too or pick one of these")
    for name, want, have in (("--seq-len", seq_len, manifest["seq_len"]), ("--lm-batch-size", batch_size, manifest["batch_size"])):
        if want != have:
            raise InterpError(f"{folder} was cached with {name} {have}; pass {name} {have} to train from it")
    if manifest.get("model_files") is None:
        raise InterpError(f"{folder} was written from a model in memory, not from files; cache it with interp sae cache")
    if manifest.get("model_dtype") != dtype:
        raise InterpError(f"{folder} holds activations of the model in {manifest.get('model_dtype')}; pass --dtype "
                          f"{manifest.get('model_dtype')}")
    if model_files_fingerprint(model) != manifest["model_files"]:
        raise InterpError(f"{folder} was cached from other weights than --model {model} ({manifest['model']}); "
                          "write a new cache for these weights")
    if corpus_fingerprint(corpus) != manifest["corpus_content"]:
        raise InterpError(f"{folder} was cached from another corpus than {corpus or 'the built-in one'} "
                          f"({manifest['corpus']}); pass its --corpus or write a new cache")
    return manifest


class CachedSource:
    """Like `ActivationSource`, from a cache folder: {hook: [batch, seq - skip, width] views} per model batch, forever.

    Under torchrun, process `rank` reads model batches rank, rank + world, ... `epoch` and `batch_in_epoch`
    say where it is (what a checkpoint keeps).
    """

    def __init__(self, folder: str | Path, hooks: list[str], batch_size: int, skip_positions: int, d: Dist = Dist(),
                 epoch: int = 0, batch_in_epoch: int = 0):
        self.folder, self.hooks, self.batch_size, self.skip_positions, self.d = Path(folder), hooks, batch_size, skip_positions, d
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch

    def dims(self) -> dict[str, int]:
        """{hook: width of one token's activation (heads concatenated)}, from the first shard's header."""
        from safetensors import safe_open

        with safe_open(str(self._shards()[0]), framework="pt") as f:
            return {h: int(torch.Size(f.get_slice(h).get_shape()[2:]).numel()) for h in self.hooks}

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard_*.safetensors"))

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every model batch of the cache in order, [batch, seq, ...] per hook."""
        from safetensors.torch import load_file

        for path in self._shards():
            shard = load_file(str(path))
            for start in range(0, len(shard["tokens"]), self.batch_size):
                yield {h: shard[h][start:start + self.batch_size] for h in self.hooks}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            for index, acts in enumerate(self._batches()):
                if index < self.batch_in_epoch or index % self.d.world != self.d.rank:
                    continue
                rows = {h: token_view(acts[h], self.skip_positions) for h in self.hooks}
                for hook, value in rows.items():
                    check_activations_finite(value, hook, f"{self.folder}, epoch {self.epoch}, model batch {index}")
                self.batch_in_epoch = index + 1
                yield rows
            self.epoch += 1
            self.batch_in_epoch = 0

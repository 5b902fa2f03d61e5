"""Batched restoration runs: many copies of a base run, each with some of its activations overwritten
(by clean values), recomputing only what an overwrite can change.

Causal tracing and activation patching both ask "what does the output become if the activation at
(hook, position) takes another value?" for hundreds of cells. A transformer is causal in positions and
sequential in layers, so writing at layer l and position t leaves every position < t and every layer
< l exactly as in the base run. We therefore run the base once, keep its residual stream and its
attention keys/values, and for each group of patches that start at the same position t feed only
positions >= t through the blocks, starting each patch at its own first layer (patches join the batch
as the layer loop reaches them) and reading keys/values of positions < t from the base run's cache.
Patches that make the same writes below some layer share their rows up to there (causal tracing's
windows clipped at layer 0 all restore the same first layers), and fork where their writes part.
Writes happen through TransformerLens hooks on the blocks, so every hook point behaves as usual.
A `TransformerBridge` cannot run its (Hugging Face) blocks alone: there each chunk is one forward pass of every
position from block 0, entered with the base run's residual (`_run_whole`): the same rows, without the saving.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable

import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from interp.models.readout import residual_logits

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class Write:
    """Set `hook` at `pos` (an absolute position, or None for every position) and optionally one `head`
    (the index after position, as in `attn.hook_z`) to `value` in every base row.

    value has the shape of the selected activation: [...] for one position, [T, ...] for all positions.
    """

    hook: str
    pos: int | None
    value: torch.Tensor
    head: int | None = None

    @property
    def layer(self) -> int:
        match = _BLOCK_HOOK.match(self.hook)
        if match is None:
            raise ValueError(f"restoration writes must target a block hook, not {self.hook!r}")
        return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class Patch:
    """One copy of the base run with these writes applied."""

    writes: tuple[Write, ...]

    @property
    def start_layer(self) -> int:
        return min(w.layer for w in self.writes)

    @property
    def start_pos(self) -> int:
        return min(0 if w.pos is None else w.pos for w in self.writes)


def _writes_by_layer(patch: Patch) -> dict[int, set]:
    """Each layer's writes as comparable keys; values by identity (the same view of the same tensor),
    which finds the windows that read one clean cache and never mistakes different values for equal."""
    out: dict[int, set] = defaultdict(set)
    for w in patch.writes:
        v = w.value
        out[w.layer].add((w.hook, w.pos, w.head, v.data_ptr(), tuple(v.shape), v.stride()))
    return out


@dataclasses.dataclass
class BaseRun:
    """What the restoration runs need from the base run: the residual entering every block and every
    block's (pre-rotary) keys and values, each [B, T, ...]."""

    resid_pre: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor  # [B, T, vocab]

    @classmethod
    def record(cls, model, tokens: torch.Tensor, fwd_hooks=()) -> BaseRun:
        """Run `tokens` [B, T] once (with `fwd_hooks`, e.g. the noise) and keep what restoration needs."""
        L = model.cfg.n_layers
        names = {f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", "attn.hook_k", "attn.hook_v")}
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        return cls(
            resid_pre=[cache[f"blocks.{l}.hook_resid_pre"] for l in range(L)],
            keys=[cache[f"blocks.{l}.attn.hook_k"] for l in range(L)],
            values=[cache[f"blocks.{l}.attn.hook_v"] for l in range(L)],
            logits=logits,
        )


def _write_hooks(writes: list[tuple[int, Write]], n_base: int, start_pos: int, device) -> list[tuple[str, Callable]]:
    """TL forward hooks applying `writes` (each tagged with its patch's index in the chunk)."""
    by_hook: dict[str, list[tuple[int, Write]]] = defaultdict(list)
    for i, write in writes:
        by_hook[write.hook].append((i, write))
    hooks = []
    for name, items in by_hook.items():
        ops = []  # (row index, position index or None, head index or None, values)
        for all_pos in (False, True):
            for with_head in (False, True):
                group = [(i, w) for i, w in items if (w.pos is None) == all_pos and (w.head is not None) == with_head]
                if not group:
                    continue
                rows = torch.tensor([i * n_base + b for i, _ in group for b in range(n_base)], device=device)
                vals = [w.value[start_pos:] if all_pos else w.value for _, w in group]
                vals = torch.stack([v for v in vals for _ in range(n_base)])
                pos = None if all_pos else torch.tensor(
                    [w.pos - start_pos for _, w in group for _ in range(n_base)], device=device)
                head = (torch.tensor([w.head for _, w in group for _ in range(n_base)], device=device)
                        if with_head else None)
                ops.append((rows, pos, head, vals))

        def hook(act, hook, ops=ops):
            for rows, pos, head, vals in ops:
                index = (rows, slice(None) if pos is None else pos) + (() if head is None else (head,))
                act[index] = vals.to(act.device, act.dtype)  # layers split over GPUs: the block's own device
            return act

        hooks.append((name, hook))
    return hooks


@torch.no_grad()
def run_patches(model, base: BaseRun, patches: list[Patch], read_ids: torch.Tensor,
                max_tokens: int | None = None, desc: str | None = None) -> torch.Tensor:
    """For each patch and base row: the last position's logits at `read_ids` and the log-sum-exp of all
    logits, as a [len(patches), B, len(read_ids) + 1] tensor (log-probability = logit - lse).

    The result equals running the full model once per patch with the writes as hooks (up to float
    rounding), at a fraction of the cost. `desc` shows a progress bar (stderr) under that name.
    A chunk holds at most `max_tokens` (row, position) pairs: on CPU a block runs fastest per token at
    about 1-2k of them, where its intermediate tensors stay in cache (the default there; 64k on GPU).
    """
    n_base, T = base.resid_pre[0].shape[:2]
    if max_tokens is None:
        max_tokens = 2048 if base.logits.device.type == "cpu" else 1 << 16
    out = torch.empty(len(patches), n_base, len(read_ids) + 1, device=base.logits.device)
    by_pos: dict[int, list[int]] = defaultdict(list)
    for i, patch in enumerate(patches):
        by_pos[patch.start_pos].append(i)
    chunks = []
    for start_pos, members in sorted(by_pos.items()):
        members.sort(key=lambda i: patches[i].start_layer)  # patches that can share rows come together
        per_chunk = max(1, max_tokens // (n_base * (T - start_pos)))
        chunks += [(start_pos, members[c:c + per_chunk]) for c in range(0, len(members), per_chunk)]
    for start_pos, chunk in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
        out[chunk] = _run_chunk(model, base, [patches[i] for i in chunk], start_pos, read_ids)
    return out


def _joins(patches: list[Patch]) -> list[tuple[int, int | None]]:
    """Per patch: (layer its rows join the run, index of the patch they are copied from, or None for
    the base run). A patch forks from the earlier patch of its start layer whose writes stay equal to
    its own the longest, at the first layer where they differ."""
    writes = [_writes_by_layer(p) for p in patches]
    joins: list[tuple[int, int | None]] = []
    for i, patch in enumerate(patches):
        join: tuple[int, int | None] = (patch.start_layer, None)
        for j in range(i):
            if patches[j].start_layer == patch.start_layer:
                differ = [layer for layer in writes[i].keys() | writes[j].keys()
                          if writes[i].get(layer) != writes[j].get(layer)]
                if differ and min(differ) > join[0]:
                    join = (min(differ), j)
        joins.append(join)
    return joins


def _run_whole(model, base: BaseRun, patches: list[Patch], read_ids: torch.Tensor) -> torch.Tensor:
    """The rows of `_run_chunk` for a model whose blocks do not run alone: every patch from block 0 and
    position 0, entered with the base run's residual, its writes as hooks."""
    n_base = base.resid_pre[0].shape[0]
    start = base.resid_pre[0].repeat(len(patches), 1, 1)  # patch-major rows, as `_write_hooks` numbers them
    writes = [(i, w) for i, patch in enumerate(patches) for w in patch.writes]
    with model.hooks(fwd_hooks=_write_hooks(writes, n_base, 0, start.device)):
        final = model(start, start_at_layer=0, stop_at_layer=model.cfg.n_layers)
    return _read_out(model, final[:, -1], read_ids).view(len(patches), n_base, -1)


def _run_chunk(model, base: BaseRun, patches: list[Patch], start_pos: int, read_ids: torch.Tensor) -> torch.Tensor:
    """Patches all starting at `start_pos`: the layer loop over positions >= start_pos, each patch's rows
    joining at its own first layer (from the base run) or where it forks from another patch."""
    if not isinstance(model, HookedTransformer):
        return _run_whole(model, base, patches, read_ids)
    n_base = base.resid_pre[0].shape[0]
    device = base.logits.device
    joins = _joins(patches)
    order = sorted(range(len(patches)), key=lambda i: joins[i][0])  # rows are in joining order
    row = {i: r for r, i in enumerate(order)}
    writes = [(row[i], w) for i in order for w in patches[i].writes if w.layer >= joins[i][0]]
    resid = base.resid_pre[0].new_empty(0, base.resid_pre[0].shape[1] - start_pos, model.cfg.d_model)
    with model.hooks(fwd_hooks=_write_hooks(writes, n_base, start_pos, device)):
        for layer, block in enumerate(model.blocks):
            joining = [(base.resid_pre[layer][:, start_pos:] if parent is None
                        else resid[row[parent] * n_base:(row[parent] + 1) * n_base])
                       for at, parent in (joins[i] for i in order) if at == layer]
            if joining:
                resid = torch.cat([resid, *joining])
            if not resid.shape[0]:
                continue
            n_active = resid.shape[0] // n_base
            past = None
            if start_pos:
                past = TransformerLensKeyValueCacheEntry(
                    past_keys=base.keys[layer][:, :start_pos].repeat(n_active, 1, 1, 1),
                    past_values=base.values[layer][:, :start_pos].repeat(n_active, 1, 1, 1),
                    frozen=True,
                )
            resid = block(resid, past_kv_cache_entry=past)
    read = _read_out(model, resid[:, -1], read_ids).view(len(patches), n_base, -1)
    return read[[row[i] for i in range(len(patches))]]


def _read_out(model, final: torch.Tensor, read_ids: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """[rows, len(read_ids) + 1]: the logits at `read_ids` and their log-sum-exp, from final-layer residuals.

    Done a few rows at a time: a [rows, vocab] block is reused from the allocator's cache, where one
    block for the whole batch would be hundreds of MB of fresh memory.
    """
    out = []
    for block in final.split(rows):
        logits = residual_logits(model, block[:, None])[:, 0].float()  # [rows, vocab], float32 in any dtype
        out.append(torch.cat([logits[:, read_ids], logits.logsumexp(-1, keepdim=True)], dim=-1))
    return torch.cat(out)

"""How good is an SAE or transcoder (or a set of them): reconstruction, sparsity, and what splicing it in
does to the model.

Metrics as sae-lens defines them: L0; explained variance 1 - E|x - x_hat|^2 / Var(x) (variance summed
over dimensions); MSE = E|x - x_hat|^2; cosine(x, x_hat); CE loss score = (CE_zero - CE_sae) /
(CE_zero - CE_clean), with the hook zero-ablated as the baseline; KL score = (KL_zero - KL_sae) /
KL_zero, KL(clean || spliced) per position. For a transcoder, x is the MLP output and "splicing in"
replaces the MLP with the transcoder. The first `skip_positions` positions (the attention sink and its
massive activations) and the tokens whose norm is above the limits the SAE was trained within (its
metadata's `max_norm`, `max_norm_out`) are left out of the reconstruction metrics and left clean in
the spliced runs, as in training; the CE and KL scores still cover every position after the first.

Evaluation text is held out from training: the corpus read from its last document backwards.

Cost per batch: one clean pass, then for each SAE one pass of twice the batch (spliced and zero-ablated
side by side) that starts from the clean residual at the SAE's layer. CE and KL come from log-sum-exps
and one product with the clean distribution, never a full log-softmax of the other runs. A set (`interp
sae train --layers`) shares the clean pass among its members and adds the replacement model: every
member spliced in at once (a transcoder set replaces every MLP it covers), against all of them
zero-ablated at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp.corpus import Corpus, load_corpus, token_batches
from interp.errors import InterpError
from interp.hooks import check_hook_names, hook_layer, resid_pre
from interp.results import Result, register_result
from interp.sae import io
from interp.sae.activations import check_activations_finite, flat_tokens, sae_limits, within_limits

DENSE = 0.1  # a latent firing on more than this share of tokens is "dense"


@register_result
@dataclasses.dataclass
class SAEEvalResult(Result):
    kind = "sae_eval"
    sae: str
    hook: str
    hook_out: str | None
    arch: str
    d_in: int
    d_sae: int
    tokens: int
    outliers_left_out: int  # tokens above the SAE's norm limits, not reconstructed
    l0: float
    explained_variance: float
    mse: float
    cosine: float
    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_score: float
    kl_sae: float
    kl_zero: float
    kl_score: float
    dead_fraction: float
    dense_fraction: float
    density: torch.Tensor  # [d_sae] share of evaluated tokens each latent fired on
    seconds: float

    METRICS = ("l0", "explained_variance", "mse", "cosine", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero",
               "ce_loss_score", "kl_sae", "kl_zero", "kl_score", "dead_fraction", "dense_fraction")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"metric": list(self.METRICS), "value": [getattr(self, m) for m in self.METRICS]})

    def density_histogram(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of log10 density over the latents that fired at least once."""
        live = self.density[self.density > 0].double().log10().numpy()
        return np.histogram(live, bins=bins, range=(min(-8.0, float(live.min(initial=0))), 0.0))

    def figure(self):
        import plotly.graph_objects as go

        counts, edges = self.density_histogram()
        fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name="latents"))
        fig.update_layout(title=f"latent density ({self.dead_fraction:.1%} dead, {self.dense_fraction:.1%} dense)",
                          xaxis_title="log10 density", yaxis_title="latents")
        return fig

    def summary(self) -> str:
        what = f"transcoder {self.hook} -> {self.hook_out}" if self.hook_out else f"SAE on {self.hook}"
        return (f"{self.arch} {what} ({self.d_in} -> {self.d_sae}), {self.tokens:,} held-out tokens "
                f"({self.outliers_left_out:,} outliers above the norm limits left out)\n"
                f"L0 {self.l0:.1f}  explained variance {self.explained_variance:.3f}  MSE {self.mse:.4g}  cosine {self.cosine:.3f}\n"
                f"CE loss: clean {self.ce_loss_clean:.3f}, spliced {self.ce_loss_sae:.3f}, zero-ablated {self.ce_loss_zero:.3f}"
                f" -> score {self.ce_loss_score:.3f}\nKL: spliced {self.kl_sae:.4f}, zero-ablated {self.kl_zero:.4f} -> score {self.kl_score:.3f}\n"
                f"dead {self.dead_fraction:.1%}, dense (> {DENSE:.0%} of tokens) {self.dense_fraction:.1%}")


@register_result
@dataclasses.dataclass
class SAESetEvalResult(Result):
    """Every member of a set scored on the same held-out tokens, and the replacement model they make together."""

    kind = "sae_set_eval"
    path: str
    tokens: int  # tokens of text read (CE and KL cover every position after the first `skip_positions`)
    members: pd.DataFrame  # name, hook, hook_out, layer, arch, d_in, d_sae, tokens, outliers_left_out + SAEEvalResult.METRICS
    replacement: dict[str, Any] | None  # layers, ce_loss_clean/replaced/zero, ce_loss_score, kl_replaced/zero, kl_score
    densities: dict[str, torch.Tensor]  # member name -> [d_sae] share of evaluated tokens each latent fired on
    seconds: float

    NOTE = ("replacement model: every member spliced in at once (a transcoder replaces its layer's MLP; layers "
            "without one keep theirs); the first position and the tokens over a member's norm limits in the clean "
            "run keep the model's own output there")

    def to_frame(self) -> pd.DataFrame:
        return self.members

    def figure(self):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=("explained variance", "CE loss score", "dead fraction"))
        for i, col in enumerate(("explained_variance", "ce_loss_score", "dead_fraction"), 1):
            fig.add_bar(x=self.members["name"], y=self.members[col], name=col, row=1, col=i)
        title = f"{len(self.members)} SAEs on {self.tokens:,} held-out tokens"
        if self.replacement:
            title += f"; replacement model CE loss score {self.replacement['ce_loss_score']:.3f}"
        fig.update_layout(title=title, showlegend=False)
        return fig

    def summary(self) -> str:
        cols = ["name", "layer", "l0", "explained_variance", "ce_loss_score", "kl_score", "dead_fraction", "outliers_left_out"]
        table = self.members[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")
        lines = [f"{len(self.members)} SAEs of {self.path} on {self.tokens:,} held-out tokens ({self.seconds:.0f} s)", table]
        r = self.replacement
        if r is None:
            lines.append("no replacement model: two members splice into the same hook")
        else:
            lines.append(f"replacement model ({len(r['layers'])} layers): CE loss clean {r['ce_loss_clean']:.3f}, replaced "
                         f"{r['ce_loss_replaced']:.3f}, all zero-ablated {r['ce_loss_zero']:.3f} -> score {r['ce_loss_score']:.3f}; "
                         f"KL replaced {r['kl_replaced']:.4f}, zero {r['kl_zero']:.4f} -> score {r['kl_score']:.3f}")
            lines.append(f"({self.NOTE})")
        return "\n".join(lines)


def held_out(corpus: Corpus) -> Corpus:
    """The corpus from its last document backwards: text a training run on its start has not seen."""
    return Corpus(f"{corpus.name}:reversed", lambda: reversed(list(corpus)))


class _Mean:
    """Running float64 means of per-position values, by key."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(values.double().sum())
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def __getitem__(self, key: str) -> float:
        return self.sums[key] / self.counts[key]


class _Clean:
    """What every other run of a batch is compared with: the clean next-token distribution at positions [skip, S-1)."""

    def __init__(self, logits: torch.Tensor, tokens: torch.Tensor, skip: int):
        self.tokens, self.skip = tokens, skip
        self.logits = logits[:, skip:-1]
        self.lse = torch.logsumexp(self.logits, dim=-1)
        self.probs = (self.logits - self.lse[..., None]).exp_()
        self.ce_clean = self.lse - self.logits.gather(-1, tokens[:, skip + 1:, None])[..., 0]

    def ce(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-position next-token cross entropy of `logits` [B, S, V]."""
        logits = logits[:, self.skip:-1]
        target = logits.gather(-1, self.tokens[:, self.skip + 1:, None])[..., 0]
        return torch.logsumexp(logits, dim=-1) - target

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-position KL(clean || run) = sum p_clean (logit_clean - logit_run) - lse_clean + lse_run."""
        logits = logits[:, self.skip:-1]
        dot = torch.einsum("bsv,bsv->bs", self.probs, self.logits - logits)  # a batched product, no [B, S, V] temporary
        return dot - self.lse + torch.logsumexp(logits, dim=-1)


class _Sums:
    """Running sums for the streamed metrics (float64 on CPU, as sae-lens's EV calculator)."""

    def __init__(self, d_sae: int):
        self.n = self.left_out = 0
        self.sum_x = None
        self.sum_sq = self.sum_resid = self.sum_cos = self.sum_l0 = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.losses = _Mean()  # ce_clean, ce_sae, ce_zero, kl_sae, kl_zero

    def add(self, target: torch.Tensor, recon: torch.Tensor, feats: torch.Tensor) -> None:
        t, r = target.double(), recon.double()
        self.sum_x = t.sum(0) if self.sum_x is None else self.sum_x + t.sum(0)
        self.sum_sq += float(t.pow(2).sum())
        self.sum_resid += float((t - r).pow(2).sum())
        self.sum_cos += float(F.cosine_similarity(t, r, dim=-1).sum())
        active = feats > 0
        self.sum_l0 += float(active.sum())
        self.fired += active.sum(0).double().cpu()
        self.n += len(t)


@dataclasses.dataclass
class _Member:
    """One SAE under evaluation: where it reads and splices, its norm limits, its running sums."""

    name: str
    sae: Any
    hook: str
    hook_out: str | None
    limits: Sequence[float] | None
    arch: str
    sums: _Sums

    @property
    def splice(self) -> str:
        """Where its output replaces the model's: the target hook of a transcoder, else the input hook."""
        return self.hook_out or self.hook

    @property
    def block(self) -> int | None:
        return hook_layer(self.splice)

    def hooks(self) -> set[str]:
        """Hooks the clean pass must cache for it."""
        return {self.hook, self.splice} | ({resid_pre(self.block)} if self.block is not None else set())

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, reconstruction) of rows `x` [n, d_in], on the SAE's device."""
        feats = self.sae.encode(x.to(next(self.sae.parameters()).device))
        return feats, self.sae.decode(feats)


def _member(model, sae, name: str, path: str, hook: str | None, hook_out: str | None,
            limits: Sequence[float] | None) -> _Member:
    hook, hook_out = io.sae_hooks(sae, hook, hook_out)
    check_hook_names(model, [hook] + ([hook_out] if hook_out else []))
    io.check_fits(model, sae, hook, hook_out)
    arch = io.training_info(path).get("config", {}).get("arch", sae.cfg.architecture()) if path else sae.cfg.architecture()
    return _Member(name, sae, hook, hook_out, sae_limits(sae) if limits is None else limits, arch, _Sums(sae.cfg.d_sae))


def _positions(keep: torch.Tensor, batch: torch.Tensor, skip: int) -> torch.Tensor:
    """[B, S] mask of the positions whose rows `keep` [B * (S - skip)] marks."""
    mask = torch.zeros(batch.shape, dtype=torch.bool, device=keep.device)
    mask[:, skip:] = keep.view(batch.shape[0], -1)
    return mask


def _write_pair(act: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of `act` [2B, S, ...] with `rows` written at `positions` of the first half, zeros in the second."""
    act = act.clone()
    half = act.shape[0] // 2
    act[:half][positions] = rows.to(act.dtype).view(-1, *act.shape[2:])
    act[half:][positions] = 0
    return act


def _pair_input(model, batch: torch.Tensor, cache, block: int | None) -> tuple[torch.Tensor, int | None]:
    """(input, start layer) of a doubled run from `block` on: the clean residual there, or the tokens."""
    if block is None:
        return torch.cat([batch, batch]), None
    start = cache[resid_pre(block)]
    return torch.cat([start, start]), block


def _spliced_pair(model, batch: torch.Tensor, cache, m: _Member, positions: torch.Tensor,
                  recon: torch.Tensor) -> torch.Tensor:
    """Logits [2B, S, V]: `m` spliced in (first half) and its hook zero-ablated (second), both at `positions`."""
    inputs, start = _pair_input(model, batch, cache, m.block)
    return model.run_with_hooks(inputs, start_at_layer=start,
                                fwd_hooks=[(m.splice, lambda act, hook: _write_pair(act, positions, recon))])


def _replaced_pair(model, batch: torch.Tensor, cache, members: list[_Member], positions: list[torch.Tensor]) -> torch.Tensor:
    """Logits [2B, S, V]: every member spliced in at once, reading its input in this same run (first half),
    and every member's hook zero-ablated at once (second half)."""
    inputs, start = _pair_input(model, batch, cache, min(m.block for m in members))
    half = batch.shape[0]
    stashed: dict[str, torch.Tensor] = {}
    hooks = []
    for m, pos in zip(members, positions):
        def stash(act, hook, m=m):
            stashed[m.name] = act[:half]
            return act

        def write(act, hook, m=m, pos=pos):
            x = (stashed.pop(m.name) if m.hook != m.splice else act[:half])[pos]
            return _write_pair(act, pos, m.reconstruct(x.reshape(len(x), -1))[1])

        if m.hook != m.splice:
            hooks.append((m.hook, stash))
        hooks.append((m.splice, write))
    return model.run_with_hooks(inputs, start_at_layer=start, fwd_hooks=hooks)


@torch.no_grad()
def _evaluate(model, members: list[_Member], batches: Iterator[torch.Tensor], total: int, skip: int,
              replacement: bool, progress: bool) -> tuple[_Mean | None, int]:
    """Stream `batches` through the clean model and every member's spliced pair (and the replacement pair).

    Returns the replacement model's losses (None unless `replacement`) and the number of text tokens read.
    """
    from tqdm.auto import tqdm

    wanted = set().union(*(m.hooks() for m in members))
    replaced = _Mean() if replacement else None
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="eval", disable=not progress)
    read = 0
    try:
        for batch in batches:
            batch = batch.to(model.cfg.device)
            logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in wanted)
            clean = _Clean(logits, batch, skip)
            positions = []
            for m in members:
                x = flat_tokens(cache[m.hook], skip)
                check_activations_finite(x, m.hook, "evaluation batch")
                target = flat_tokens(cache[m.splice], skip) if m.hook_out else x
                keep = within_limits(torch.cat([x, target], 1) if m.hook_out else x, x.shape[1], m.limits)
                m.sums.left_out += int((~keep).sum())
                feats, recon = m.reconstruct(x[keep])
                m.sums.add(target[keep].to(recon.device), recon, feats)
                positions.append(_positions(keep, batch, skip))
                pair = _spliced_pair(model, batch, cache, m, positions[-1], recon)
                m.sums.losses.add("ce_clean", clean.ce_clean)
                for key, part in (("sae", pair[: len(batch)]), ("zero", pair[len(batch):])):
                    m.sums.losses.add(f"ce_{key}", clean.ce(part))
                    m.sums.losses.add(f"kl_{key}", clean.kl(part))
                del pair
            if replaced is not None:
                pair = _replaced_pair(model, batch, cache, members, positions)
                replaced.add("ce_clean", clean.ce_clean)
                for key, part in (("replaced", pair[: len(batch)]), ("zero", pair[len(batch):])):
                    replaced.add(f"ce_{key}", clean.ce(part))
                    replaced.add(f"kl_{key}", clean.kl(part))
                del pair
            bar.update(batch.numel())
            read += batch.numel()
    finally:
        bar.close()
    return replaced, read


def _scores(m: _Member) -> dict[str, Any]:
    """The member's metrics from its sums (SAEEvalResult fields)."""
    sums, losses = m.sums, m.sums.losses
    n = sums.n
    total_var = sums.sum_sq / n - float((sums.sum_x / n).pow(2).sum())
    density = (sums.fired / n).float()
    ce = {k: losses[f"ce_{k}"] for k in ("clean", "sae", "zero")}
    kl = {k: losses[f"kl_{k}"] for k in ("sae", "zero")}
    return dict(
        hook=m.hook, hook_out=m.hook_out, arch=m.arch, d_in=m.sae.cfg.d_in, d_sae=m.sae.cfg.d_sae, tokens=n,
        outliers_left_out=sums.left_out, l0=sums.sum_l0 / n, explained_variance=1 - (sums.sum_resid / n) / total_var,
        mse=sums.sum_resid / n, cosine=sums.sum_cos / n, ce_loss_clean=ce["clean"], ce_loss_sae=ce["sae"],
        ce_loss_zero=ce["zero"], ce_loss_score=(ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        kl_sae=kl["sae"], kl_zero=kl["zero"], kl_score=(kl["zero"] - kl["sae"]) / kl["zero"],
        dead_fraction=float((density == 0).float().mean()), dense_fraction=float((density > DENSE).float().mean()),
        density=density)


def _text(model, corpus: str | Corpus | None, path: str, batch_size: int, seq_len: int, tokens: int) -> Iterator[torch.Tensor]:
    """Held-out token batches of `corpus` (default: the training corpus recorded at `path`)."""
    if not isinstance(corpus, Corpus):
        train_cfg = io.training_info(path).get("config", {}) if path else {}
        corpus = load_corpus(corpus if corpus is not None else train_cfg.get("corpus"))
    return token_batches(model, held_out(corpus), batch_size, seq_len, max_tokens=tokens)


def evaluate(model, sae, tokens: int = 16_384, corpus: str | Corpus | None = None, batch_size: int = 8,
             seq_len: int | None = None, skip_positions: int | None = None, hook: str | None = None,
             hook_out: str | None = None, path: str = "", progress: bool = True,
             limits: Sequence[float] | None = None) -> SAEEvalResult:
    """Evaluate `sae` (from `load_sae(path)`) on `tokens` held-out tokens of `corpus` (default: its training corpus).

    `limits` (norm limits of input, target) overrides the SAE's own, e.g. to score two SAEs on the same tokens.
    """
    started = time.perf_counter()
    m = _member(model, sae, "", path, hook, hook_out, limits)
    meta = sae.cfg.metadata
    seq_len = seq_len or meta.context_size or 128
    skip = skip_positions if skip_positions is not None else (meta.skip_positions if meta.skip_positions is not None else 1)
    _evaluate(model, [m], _text(model, corpus, path, batch_size, seq_len, tokens), tokens, skip, False, progress)
    return SAEEvalResult(sae=path, seconds=time.perf_counter() - started, **_scores(m))


def evaluate_set(model, path: str | Path, tokens: int = 16_384, corpus: str | Corpus | None = None, batch_size: int = 8,
                 device: str | None = None, progress: bool = True) -> SAESetEvalResult:
    """Evaluate every member of the set at `path` (`interp sae train --layers` or a sweep) on the same held-out
    tokens from one clean pass per batch, and the replacement model (every member spliced in at once)."""
    started = time.perf_counter()
    folders = io.set_members(path)
    if folders is None:
        raise InterpError(f"{path} is not a set of SAEs (no subfolders with {io.CFG_FILE}); evaluate it with `interp sae eval`")
    device = device or str(model.cfg.device)
    members = [_member(model, io.load_sae(f, device=device), f.name, str(f), None, None, None) for f in folders]
    metas = [m.sae.cfg.metadata for m in members]
    seq_len = metas[0].context_size or 128
    skip = metas[0].skip_positions if metas[0].skip_positions is not None else 1
    splices = [m.splice for m in members]
    replacement = len(set(splices)) == len(splices)
    batches = _text(model, corpus, str(folders[0]), batch_size, seq_len, tokens)
    replaced, read = _evaluate(model, members, batches, tokens, skip, replacement, progress)
    rows, densities = [], {}
    for m in members:
        scores = _scores(m)
        densities[m.name] = scores.pop("density")
        rows.append({"name": m.name, "layer": m.block, **scores})
    summary = None
    if replaced is not None:
        ce = {k: replaced[f"ce_{k}"] for k in ("clean", "replaced", "zero")}
        kl = {k: replaced[f"kl_{k}"] for k in ("replaced", "zero")}
        summary = {"layers": sorted(m.block for m in members if m.block is not None),
                   "ce_loss_clean": ce["clean"], "ce_loss_replaced": ce["replaced"], "ce_loss_zero": ce["zero"],
                   "ce_loss_score": (ce["zero"] - ce["replaced"]) / (ce["zero"] - ce["clean"]),
                   "kl_replaced": kl["replaced"], "kl_zero": kl["zero"], "kl_score": (kl["zero"] - kl["replaced"]) / kl["zero"],
                   "note": SAESetEvalResult.NOTE}
    return SAESetEvalResult(path=str(path), tokens=read, members=pd.DataFrame(rows), replacement=summary,
                            densities=densities, seconds=time.perf_counter() - started)

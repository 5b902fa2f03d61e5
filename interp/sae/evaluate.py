"""How good is an SAE or transcoder: reconstruction, sparsity, and what splicing it in does to the model.

Metrics as sae-lens defines them: L0; explained variance 1 - E|x - x_hat|^2 / Var(x) (variance summed
over dimensions); MSE = E|x - x_hat|^2; cosine(x, x_hat); CE loss score = (CE_zero - CE_sae) /
(CE_zero - CE_clean), with the hook zero-ablated as the baseline; KL score = (KL_zero - KL_sae) /
KL_zero, KL(clean || spliced) per position. For a transcoder, x is the MLP output and "splicing in"
replaces the MLP with the transcoder. The first `skip_positions` positions (the attention sink and its
massive activations) and the tokens whose norm is above the limits the SAE was trained within (its
metadata's `max_norm`, `max_norm_out`) are left out of the reconstruction metrics and left clean in
the spliced runs, as in training; the CE and KL scores still cover every position after the first.

Evaluation text is held out from training: the corpus read from its last document backwards.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp.corpus import Corpus, load_corpus, token_batches
from interp.hooks import check_hook_names
from interp.results import Result, register_result
from interp.sae import io
from interp.sae.activations import check_finite, flat_tokens, sae_limits, within_limits

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


def held_out(corpus: Corpus) -> Corpus:
    """The corpus from its last document backwards: text a training run on its start has not seen."""
    return Corpus(f"{corpus.name}:reversed", lambda: reversed(list(corpus)))


def _block(hook: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else None


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """Per-position next-token cross entropy over positions [skip, S-1)."""
    logp = logits[:, skip:-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, skip + 1:, None])[..., 0]


def _kl(clean: torch.Tensor, other: torch.Tensor, skip: int) -> torch.Tensor:
    p = clean[:, skip:-1].log_softmax(-1)
    return F.kl_div(other[:, skip:-1].log_softmax(-1), p, log_target=True, reduction="none").sum(-1)


class _Sums:
    """Running sums for the streamed metrics (float64 on CPU, as sae-lens's EV calculator)."""

    def __init__(self, d_sae: int):
        self.n = self.left_out = 0
        self.sum_x = None
        self.sum_sq = self.sum_resid = self.sum_cos = self.sum_l0 = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.ce = {"clean": [], "sae": [], "zero": []}
        self.kl = {"sae": [], "zero": []}

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


@torch.no_grad()
def evaluate(model, sae, tokens: int = 16_384, corpus: str | Corpus | None = None, batch_size: int = 8,
             seq_len: int | None = None, skip_positions: int | None = None, hook: str | None = None,
             hook_out: str | None = None, path: str = "", progress: bool = True,
             limits: Sequence[float] | None = None) -> SAEEvalResult:
    """Evaluate `sae` (from `load_sae(path)`) on `tokens` held-out tokens of `corpus` (default: its training corpus).

    `limits` (norm limits of input, target) overrides the SAE's own, e.g. to score two SAEs on the same tokens.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    info = io.training_info(path) if path else {}
    train_cfg = info.get("config", {})
    meta = sae.cfg.metadata
    hook, hook_out = io.sae_hooks(sae, hook, hook_out)
    check_hook_names(model, [hook] + ([hook_out] if hook_out else []))
    io.check_fits(model, sae, hook, hook_out)
    seq_len = seq_len or meta.context_size or 128
    skip = skip_positions if skip_positions is not None else (meta.skip_positions if meta.skip_positions is not None else 1)
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus if corpus is not None else train_cfg.get("corpus"))
    splice = hook_out or hook
    block = _block(splice)
    resid_pre = f"blocks.{block}.hook_resid_pre" if block is not None else None
    wanted = {hook, splice} | ({resid_pre} if resid_pre else set())
    sums = _Sums(sae.cfg.d_sae)
    device = next(sae.parameters()).device

    limits = sae_limits(sae) if limits is None else limits

    def run_spliced(batch: torch.Tensor, cache, replacement: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        def patch(act, hook=None):
            act = act.clone()
            rows = act[:, skip:].reshape(keep.shape[0], -1)
            rows[keep] = replacement.to(act.dtype)
            act[:, skip:] = rows.reshape(act[:, skip:].shape)
            return act
        if resid_pre is None:
            return model.run_with_hooks(batch, fwd_hooks=[(splice, patch)])
        return model.run_with_hooks(cache[resid_pre], start_at_layer=block, fwd_hooks=[(splice, patch)])

    bar = tqdm(total=tokens, unit="tok", unit_scale=True, desc="eval", disable=not progress)
    try:
        for batch in token_batches(model, held_out(corpus), batch_size, seq_len, max_tokens=tokens):
            batch = batch.to(model.cfg.device)
            logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in wanted)
            x = flat_tokens(cache[hook], skip)
            check_finite(x, hook, "evaluation batch")
            target = flat_tokens(cache[splice], skip) if hook_out else x
            keep = within_limits(torch.cat([x, target], 1) if hook_out else x, x.shape[1], limits)
            sums.left_out += int((~keep).sum())
            x, target = x[keep], target[keep]
            feats = sae.encode(x.to(device))
            recon = sae.decode(feats)
            sums.add(target.to(device), recon, feats)
            logits_sae = run_spliced(batch, cache, recon, keep)
            logits_zero = run_spliced(batch, cache, torch.zeros_like(recon), keep)
            for key, value in (("clean", logits), ("sae", logits_sae), ("zero", logits_zero)):
                sums.ce[key].append(_next_token_ce(value, batch, skip).flatten().cpu())
            sums.kl["sae"].append(_kl(logits, logits_sae, skip).flatten().cpu())
            sums.kl["zero"].append(_kl(logits, logits_zero, skip).flatten().cpu())
            bar.update(batch.numel())
    finally:
        bar.close()

    n = sums.n
    total_var = sums.sum_sq / n - float((sums.sum_x / n).pow(2).sum())
    ce = {k: float(torch.cat(v).mean()) for k, v in sums.ce.items()}
    kl = {k: float(torch.cat(v).mean()) for k, v in sums.kl.items()}
    density = (sums.fired / n).float()
    return SAEEvalResult(
        sae=path, hook=hook, hook_out=hook_out, arch=train_cfg.get("arch", sae.cfg.architecture()),
        d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, tokens=n, outliers_left_out=sums.left_out, l0=sums.sum_l0 / n,
        explained_variance=1 - (sums.sum_resid / n) / total_var, mse=sums.sum_resid / n, cosine=sums.sum_cos / n,
        ce_loss_clean=ce["clean"], ce_loss_sae=ce["sae"], ce_loss_zero=ce["zero"],
        ce_loss_score=(ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        kl_sae=kl["sae"], kl_zero=kl["zero"], kl_score=(kl["zero"] - kl["sae"]) / kl["zero"],
        dead_fraction=float((density == 0).float().mean()), dense_fraction=float((density > DENSE).float().mean()),
        density=density, seconds=time.perf_counter() - started)

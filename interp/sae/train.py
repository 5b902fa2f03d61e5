"""Train an SAE or transcoder on a model's activations, with sae-lens's training SAE classes.

One runner for all architectures and for 1..N processes: our activation stream -> outlier tokens
left out (norm above `outlier_ratio` x the median, estimated on the first rows) -> a mixing buffer
-> normalization to mean norm sqrt(d) (estimated on the first rows, folded into the weights at the
end) -> sae-lens `training_forward_pass` (its losses, AuxK, thresholds) -> Adam with warm-up and
linear decay, gradient clipping at 1 as sae-lens does. Dead latents are tracked over a token window
and fed back to the architectures that use them (AuxK, pre-activation loss). Checkpoints are written
every `checkpoint_every` tokens; `resume=True` continues from the last one and ends bit-for-bit
where an uninterrupted run would, because the data order and the buffer's RNG are part of the state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.results import Result, register_result
from interp.sae import checkpoint, distributed, io
from interp.sae.activations import ActivationSource, hook_dim, norm_medians, within_limits
from interp.sae.buffer import MixingBuffer
from interp.sae.build import training_sae
from interp.sae.config import TrainConfig
from interp.sae.distributed import Dist

CONFIG_FILE = "train_config.json"


@register_result
@dataclasses.dataclass
class SAETrainResult(Result):
    kind = "sae_train"
    out: str
    arch: str
    hook: str
    hook_out: str | None
    d_in: int
    d_sae: int
    tokens: int
    steps: int
    processes: int
    resumed_from_step: int
    seconds: float
    tokens_per_s: float
    loss: float
    l0: float
    explained_variance: float
    dead_fraction: float
    outliers_left_out: int  # tokens left out for a norm above the limits
    history: pd.DataFrame  # step, tokens, loss, mse, l0, explained_variance, dead_fraction, lr

    def to_frame(self) -> pd.DataFrame:
        return self.history

    def figure(self):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=4, subplot_titles=("loss", "L0", "explained variance", "dead fraction"))
        for i, col in enumerate(("loss", "l0", "explained_variance", "dead_fraction"), 1):
            fig.add_scatter(x=self.history["tokens"], y=self.history[col], mode="lines", name=col, row=1, col=i)
        fig.update_layout(title=f"{self.arch} {'transcoder' if self.hook_out else 'SAE'} on {self.hook}", showlegend=False)
        return fig

    def summary(self) -> str:
        what = f"transcoder {self.hook} -> {self.hook_out}" if self.hook_out else f"SAE on {self.hook}"
        return (f"trained {self.arch} {what}: {self.d_in} -> {self.d_sae} latents, {self.tokens:,} tokens, "
                f"{self.steps} steps, {self.processes} process(es), {self.tokens_per_s:,.0f} tok/s\n"
                f"final batch: loss {self.loss:.4g}, L0 {self.l0:.1f}, explained variance {self.explained_variance:.3f}, "
                f"dead {self.dead_fraction:.1%}; {self.outliers_left_out:,} outlier tokens left out\nsaved to {self.out}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last `decay_fraction` of steps."""
    warm, decay = int(cfg.steps * cfg.warmup_fraction), int(cfg.steps * cfg.decay_fraction)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if decay and step >= cfg.steps - decay:
        return cfg.lr * (cfg.steps - step) / decay
    return cfg.lr


class Trainer:
    """State of one run in one process: the SAE, Adam, counters, buffer and normalization."""

    def __init__(self, cfg: TrainConfig, d_in: int, d_out: int | None, metadata: dict[str, Any], d: Dist = Dist()):
        if cfg.batch_tokens % d.world:
            raise InterpError(f"batch of {cfg.batch_tokens} tokens does not split over {d.world} processes; pick a multiple")
        self.cfg, self.d, self.d_in = cfg, d, d_in
        self.sae = training_sae(cfg, d_in, d_out, metadata)
        self.forward = distributed.train_step_fn(self.sae, d)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.coefficients = {name: c.value if isinstance(c, TrainCoefficientConfig) else float(c)
                             for name, c in self.sae.get_coefficients().items()}
        d_sae = self.sae.cfg.d_sae
        self.step = 0
        self.since_fired = torch.zeros(d_sae, dtype=torch.float64)  # tokens since each latent last fired
        self.fired = torch.zeros(d_sae, dtype=torch.float64)  # tokens each latent fired on
        self.scale_in: float | None = None
        self.scale_out: float | None = None
        self.limits: list[float] | None = None  # norm limits (input, target), raw units
        self.excluded = 0  # tokens this process left out as outliers
        self.buffer = MixingBuffer(cfg.buffer_tokens, cfg.batch_tokens // d.world, cfg.mix_fraction,
                                   seed=cfg.seed * 7919 + d.rank)
        self.history: list[dict[str, float]] = []

    # -- data -------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_from_data(self, rows: Iterator[torch.Tensor]) -> None:
        """Estimate the outlier limits, normalization factors and b_dec from the first rows (kept for training)."""
        first = []
        while sum(len(r) for r in first) < self.cfg.norm_tokens:
            first.append(next(rows))
        x = torch.cat(first)
        medians = distributed.all_reduce(norm_medians(x, self.d_in), self.d, "mean")
        self._set_limits((medians * self.cfg.outlier_ratio).tolist() if self.cfg.outlier_ratio else None)
        x = self._kept(x)
        self.buffer.add(x)
        x_in, y = x[:, : self.d_in], x[:, self.d_in:] if self.cfg.is_transcoder else x
        norms = torch.stack([x_in.norm(dim=-1).mean(), y.norm(dim=-1).mean()]).double()
        mean_y = y.mean(0).double()
        distributed.all_reduce(norms, self.d, "mean")
        distributed.all_reduce(mean_y, self.d, "mean")
        self.scale_in = math.sqrt(x_in.shape[1]) / float(norms[0])
        self.scale_out = math.sqrt(y.shape[1]) / float(norms[1])
        self.sae.b_dec.data.copy_((mean_y * self.scale_out).float())

    def _set_limits(self, limits: list[float] | None) -> None:
        """Keep the limits, and record them in the SAE's metadata (evaluation leaves the same tokens out)."""
        self.limits = limits
        meta = self.sae.cfg.metadata
        meta.max_norm = limits[0] if limits else None
        meta.max_norm_out = limits[1] if limits and len(limits) > 1 else None

    def _kept(self, rows: torch.Tensor) -> torch.Tensor:
        keep = within_limits(rows, self.d_in, self.limits)
        self.excluded += int((~keep).sum())
        return rows[keep]

    def _scaled(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.cfg.device)
        if not self.cfg.is_transcoder:
            return batch * self.scale_in
        return torch.cat([batch[:, : self.d_in] * self.scale_in, batch[:, self.d_in:] * self.scale_out], dim=1)

    # -- one step ---------------------------------------------------------------------------
    def _step(self, batch: torch.Tensor) -> dict[str, float]:
        cfg, sae = self.cfg, self.sae
        x = self._scaled(batch)
        warm = int(cfg.steps * cfg.sparsity_warmup_fraction)
        ramp = min(1.0, self.step / warm) if warm else 1.0
        dead = (self.since_fired >= cfg.dead_window_tokens).to(cfg.device)
        sae.train()
        out = self.forward(TrainStepInput(
            sae_in=x, coefficients={k: v * ramp for k, v in self.coefficients.items()},
            dead_neuron_mask=dead, n_training_steps=self.step, is_logging_step=False))
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self._check_finite(out.loss, grad_norm)
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            active = out.feature_acts > 0
            fired = distributed.all_reduce(active.sum(0).double().cpu(), self.d)
            self.since_fired += cfg.batch_tokens
            self.since_fired[fired > 0] = 0
            self.fired += fired
            if hasattr(sae, "topk_threshold"):
                distributed.all_reduce(sae.topk_threshold, self.d, "min")
            target = x[:, self.d_in:] if cfg.is_transcoder else x
            resid = (out.sae_out - target).pow(2).sum()
            total = (target - target.mean(0)).pow(2).sum()
            return {"step": self.step, "tokens": (self.step + 1) * cfg.batch_tokens, "loss": float(out.loss),
                    "mse": float(out.losses["mse_loss"]),
                    "l0": float(active.sum(-1).float().mean()), "explained_variance": float(1 - resid / total),
                    "dead_fraction": float(dead.float().mean()), "lr": lr}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop before a non-finite loss reaches the weights (it would leave a NaN SAE that looks trained).

        Gradients are averaged over processes, so a non-finite loss in any process makes the gradient norm
        non-finite in all of them: every process stops at the same step.
        """
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise InterpError(f"training stopped at step {self.step}: the loss became {float(loss.detach()):g}; "
                              f"lower --lr (was {self.cfg.lr:g}) or --sparsity-coefficient, or --outlier-ratio to "
                              "leave out more outlier tokens, and start again in a new --out")

    def fit(self, source: ActivationSource, on_checkpoint: Callable[[Trainer], None] | None = None) -> dict[str, float]:
        """Train until `cfg.steps`; returns the last step's statistics."""
        cfg = self.cfg
        rows = iter(source)
        if self.scale_in is None:
            self._init_from_data(rows)
        batches = self.buffer.batches(self._kept(r) for r in rows)
        bar = tqdm(total=cfg.steps * cfg.batch_tokens, initial=self.step * cfg.batch_tokens, unit="tok",
                   unit_scale=True, desc=f"train {cfg.arch}", file=sys.stderr, disable=not (cfg.progress and self.d.main),
                   dynamic_ncols=True)
        every = max(1, cfg.steps // 200)
        stats: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                stats = self._step(next(batches))
                self.step += 1
                bar.update(cfg.batch_tokens)
                if self.step % every == 0 or self.step == cfg.steps:
                    self.history.append(stats)
                    bar.set_postfix(loss=f"{stats['loss']:.3g}", L0=f"{stats['l0']:.1f}",
                                    EV=f"{stats['explained_variance']:.3f}", dead=f"{stats['dead_fraction']:.1%}")
                if on_checkpoint is not None and self.step < cfg.steps and self._checkpoint_due():
                    on_checkpoint(self)
        finally:
            bar.close()
        return stats

    def _checkpoint_due(self) -> bool:
        """Whether the last step crossed a multiple of `checkpoint_every` tokens."""
        every, batch = self.cfg.checkpoint_every, self.cfg.batch_tokens
        return bool(every) and (self.step * batch) // every > ((self.step - 1) * batch) // every

    # -- state ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        optim_tensors, groups = checkpoint.optimizer_tensors(self.optimizer)
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        tensors.update(optim_tensors, since_fired=self.since_fired, fired=self.fired)
        meta = {"step": self.step, "scale_in": self.scale_in, "scale_out": self.scale_out, "limits": self.limits,
                "world": self.d.world, "param_groups": groups, "config": self.cfg.to_dict(), "history": self.history}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        checkpoint.load_optimizer(self.optimizer, tensors, meta["param_groups"])
        self.since_fired, self.fired = tensors["since_fired"], tensors["fired"]
        self.step, self.scale_in, self.scale_out = meta["step"], meta["scale_in"], meta["scale_out"]
        self._set_limits(meta["limits"])
        self.history = meta["history"]


def _prepare_out(out: Path, cfg: TrainConfig, resume: bool, d: Dist) -> Path | None:
    """Check the output folder; returns the checkpoint to resume from (or None). Writes nothing."""
    config_file = out / CONFIG_FILE
    if (out / io.CFG_FILE).is_file():
        raise InterpError(f"{out} already holds a trained SAE; choose a new --out")
    if config_file.is_file():
        if not resume:
            raise InterpError(f"{out} holds an unfinished run; pass --resume to continue it or choose a new --out")
        try:
            old = TrainConfig.from_dict(json.loads(config_file.read_text()))
        except (ValueError, TypeError):
            raise InterpError(f"{config_file} is unreadable; choose a new --out") from None
        diff = cfg.differences(old)
        if diff:
            raise InterpError(f"{out} was started with other settings ({', '.join(diff)}); resume with the same settings or choose a new --out")
        return checkpoint.latest(out)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InterpError(f"{out} is not empty; choose a new --out")
    return None


def train(model, cfg: TrainConfig, out: str | Path, resume: bool = False, corpus=None, d: Dist | None = None) -> SAETrainResult:
    """Train per `cfg` on `model`'s activations, save the SAE to `out`, return a summary result.

    Run under torchrun, each process calls this with the same arguments (`d` from
    `distributed.setup`); process 0 writes the files.
    """
    from interp.corpus import load_corpus

    d = d or Dist()
    cfg = dataclasses.replace(cfg.check(), model=getattr(model.cfg, "spec", cfg.model))
    out = Path(out)
    hooks = [cfg.hook] + ([cfg.hook_out] if cfg.hook_out else [])
    d_in = hook_dim(model, cfg.hook)
    d_out = hook_dim(model, cfg.hook_out) if cfg.hook_out else None
    corpus = corpus if corpus is not None else load_corpus(cfg.corpus)
    resume_from = _prepare_out(out, cfg, resume, d)
    distributed.barrier(d)
    metadata = {"model_name": cfg.model, "hook_name": cfg.hook, "hook_name_out": cfg.hook_out,
                "context_size": cfg.seq_len, "prepend_bos": False, "dataset_path": corpus.name,
                "skip_positions": cfg.skip_positions, "interp_arch": cfg.arch}
    trainer = Trainer(cfg, d_in, d_out, metadata, d)
    source = ActivationSource(model, hooks, distributed.shard(corpus, d), cfg.lm_batch_size, cfg.seq_len, cfg.skip_positions)
    start_step = 0
    if resume_from is not None:
        tensors, meta, rank_tensors, rank_meta = checkpoint.load(resume_from, d)
        trainer.load_state(tensors, meta)
        trainer.buffer.load_state(rank_tensors)
        source.epoch, source.batch_in_epoch = rank_meta["epoch"], rank_meta["batch_in_epoch"]
        trainer.excluded = rank_meta["excluded"]
        start_step = trainer.step
    elif d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))

    def save_checkpoint(t: Trainer) -> None:
        tensors, meta = t.state()
        rank_meta = {"epoch": source.epoch, "batch_in_epoch": source.batch_in_epoch, "excluded": t.excluded}
        checkpoint.save(out, t.step, tensors, meta, t.buffer.state(), rank_meta, d)

    started = time.perf_counter()
    stats = trainer.fit(source, on_checkpoint=save_checkpoint)
    seconds = time.perf_counter() - started
    density = trainer.fired / max(1, trainer.step * cfg.batch_tokens)
    dead_fraction = float((trainer.since_fired >= cfg.dead_window_tokens).double().mean())
    tokens_per_s = (trainer.step - start_step) * cfg.batch_tokens / max(seconds, 1e-9)
    excluded = int(distributed.all_reduce(torch.tensor([float(trainer.excluded)], dtype=torch.float64), d))
    training = {"config": cfg.to_dict(), "steps": trainer.step, "tokens": trainer.step * cfg.batch_tokens,
                "processes": d.world, "scale_in": trainer.scale_in, "scale_out": trainer.scale_out,
                "norm_limits": trainer.limits, "outlier_tokens_left_out": excluded,
                "final": stats, "dead_fraction": dead_fraction, "tokens_per_s": tokens_per_s}
    distributed.barrier(d)
    if d.main:
        io.save_trained(trainer.sae, out, trainer.scale_in, trainer.scale_out, torch.log10(density + 1e-10), training)
        (out / CONFIG_FILE).unlink(missing_ok=True)
        shutil.rmtree(checkpoint.checkpoint_root(out), ignore_errors=True)
    distributed.barrier(d)
    return SAETrainResult(
        out=str(out), arch=cfg.arch, hook=cfg.hook, hook_out=cfg.hook_out, d_in=d_in, d_sae=trainer.sae.cfg.d_sae,
        tokens=trainer.step * cfg.batch_tokens, steps=trainer.step, processes=d.world, resumed_from_step=start_step,
        seconds=seconds, tokens_per_s=tokens_per_s, loss=stats.get("loss", float("nan")), l0=stats.get("l0", float("nan")),
        explained_variance=stats.get("explained_variance", float("nan")), dead_fraction=dead_fraction,
        outliers_left_out=excluded,
        history=pd.DataFrame(trainer.history))

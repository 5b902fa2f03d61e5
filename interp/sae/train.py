"""Train SAEs and transcoders on a model's activations, with sae-lens's training SAE classes.

One runner for all architectures, for 1..N processes and for 1..M SAEs at once (`train_set`: one
member per layer or per setting, all fed from the same model forward passes; `train` is the
one-member case). Per member: its rows of the shared activation stream -> a mixing buffer ->
batches less their outlier tokens (norm above `outlier_ratio` x the median, estimated on the first
rows; so a batch has slightly fewer than `batch_tokens` tokens where some are left out) ->
normalization to mean norm sqrt(d) (estimated on the first rows, folded into the weights at the
end) -> sae-lens `training_forward_pass` (its losses, AuxK, thresholds) -> Adam with warm-up and
linear decay, gradient clipping at 1 as sae-lens does. Dead latents are tracked over a token window
and fed back to the architectures that use them (AuxK, pre-activation loss). Checkpoints are written
every `checkpoint_every` tokens; `resume=True` continues from the last one and ends bit-for-bit
where an uninterrupted run would, because the data order and the buffer's RNG are part of the state.
A member of a set computes exactly what a `train` run of its own config computes (same rows, its own
outlier limits, buffer and seed), so its weights are that run's; since outliers leave a batch only
when it is served, all members read the shared stream in step, whatever each leaves out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.hooks import hook_layer
from interp.results import Result, register_result
from interp.sae import checkpoint, distributed, io
from interp.sae.activations import ActivationSource, SplitRows, hook_dims, norm_medians, within_limits
from interp.sae.buffer import MixingBuffer
from interp.sae.build import training_sae
from interp.sae.config import TrainConfig, check_members
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
    steady_tokens_per_s: float = 0.0  # a long run's rate, without one-time costs (`RunTiming`); 0 if unknown

    def to_frame(self) -> pd.DataFrame:
        return self.history

    def figure(self):
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        fig = make_subplots(rows=1, cols=4, subplot_titles=("loss", "L0", "explained variance", "dead fraction"))
        for i, col in enumerate(("loss", "l0", "explained_variance", "dead_fraction"), 1):
            fig.add_scatter(x=self.history["tokens"], y=self.history[col], mode="lines", name=col, row=1, col=i)
        fig.update_layout(title=escape_label(f"{self.arch} {'transcoder' if self.hook_out else 'SAE'} on {self.hook}"),
                          showlegend=False)
        return fig

    def summary(self) -> str:
        what = f"transcoder {self.hook} -> {self.hook_out}" if self.hook_out else f"SAE on {self.hook}"
        return (f"trained {self.arch} {what}: {self.d_in} -> {self.d_sae} latents, {self.tokens:,} tokens, "
                f"{self.steps} steps, {self.processes} process(es), {self.tokens_per_s:,.0f} tok/s "
                f"({self.steady_tokens_per_s:,.0f} in a long run)\n"
                f"final batch: loss {self.loss:.4g}, L0 {self.l0:.1f}, explained variance {self.explained_variance:.3f}, "
                f"dead {self.dead_fraction:.1%}; {self.outliers_left_out:,} outlier tokens left out\nsaved to {self.out}")


@register_result
@dataclasses.dataclass
class SAESetTrainResult(Result):
    """Several SAEs trained from one pass over the model (`train_set`): one row per member."""

    kind = "sae_set_train"
    out: str
    tokens: int
    steps: int
    processes: int
    resumed_from_step: int
    seconds: float
    tokens_per_s: float
    peak_memory_mb: float  # peak resident memory of this process
    members: pd.DataFrame  # name, folder, hook, hook_out, layer, arch, k, d_sae, loss, l0, explained_variance, dead_fraction, outliers_left_out
    steady_tokens_per_s: float = 0.0  # a long run's rate, without one-time costs (`RunTiming`); 0 if unknown

    def to_frame(self) -> pd.DataFrame:
        return self.members

    def figure(self):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=("explained variance", "L0", "dead fraction"))
        for i, col in enumerate(("explained_variance", "l0", "dead_fraction"), 1):
            fig.add_bar(x=self.members["name"], y=self.members[col], name=col, row=1, col=i)
        fig.update_layout(title=f"{len(self.members)} SAEs from one pass", showlegend=False)
        return fig

    def summary(self) -> str:
        cols = ["name", "hook_out", "arch", "k", "d_sae", "l0", "explained_variance", "dead_fraction", "outliers_left_out"]
        table = self.members[[c for c in cols if self.members[c].notna().any()]]
        return (f"trained {len(self.members)} SAEs from one pass: {self.tokens:,} tokens, {self.steps} steps, "
                f"{self.processes} process(es), {self.tokens_per_s:,.0f} tok/s ({self.steady_tokens_per_s:,.0f} in a long "
                f"run), peak memory {self.peak_memory_mb:,.0f} MB\n"
                f"{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n"
                f"last batch of each; saved to {self.out}/<name>, listed in {io.SET_FILE}")


@dataclasses.dataclass(frozen=True)
class RunTiming:
    """How fast a training run went, measured in it.

    A short run pays one-time costs (the members' first fill and normalisation) and forwards more tokens than
    it trains (the buffer's first fill); a long run pays neither. `steady_tokens_per_s` is that long run's
    rate: the source's cost per token (model forward passes or cache reads) plus the training steps' cost per
    trained token (steps, buffers, checkpoints), each measured in this run.
    """

    seconds: float  # the whole run, first fill included
    tokens_per_s: float  # tokens trained (all processes) / seconds
    steady_tokens_per_s: float  # a long run's rate, all processes

    @classmethod
    def measure(cls, tokens: int, seconds: float, step_seconds: float, rows: SplitRows, world: int) -> RunTiming:
        """`tokens` trained in `seconds`, of which `step_seconds` went to training steps (not the source)."""
        per_token = rows.source_seconds / max(rows.source_tokens, 1) + step_seconds / max(tokens / world, 1)
        return cls(seconds=seconds, tokens_per_s=tokens / max(seconds, 1e-9),
                   steady_tokens_per_s=world / max(per_token, 1e-12) if tokens else 0.0)


def fire_counts(feature_acts: torch.Tensor) -> torch.Tensor:
    """[d_sae] tokens each latent is active on, from dense [tokens, d_sae] activations or sparse COO ones."""
    if not feature_acts.is_sparse:
        return torch.count_nonzero(feature_acts, dim=0)
    latents, values = feature_acts._indices()[1], feature_acts._values()  # COO pairs, coalesced or not
    return torch.zeros(feature_acts.shape[1], dtype=torch.long, device=values.device).index_add_(0, latents, (values > 0).long())


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last `decay_fraction` of steps."""
    warm, decay = int(cfg.steps * cfg.warmup_fraction), int(cfg.steps * cfg.decay_fraction)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if decay and step >= cfg.steps - decay:
        return cfg.lr * (cfg.steps - step) / decay
    return cfg.lr


class Trainer:
    """One SAE's training state in one process: the SAE, Adam, counters, buffer and normalization.

    `name` is its member name in a set ('' alone); `folder` is where it is saved.
    """

    def __init__(self, cfg: TrainConfig, d_in: int, d_out: int | None, metadata: dict[str, Any], d: Dist = Dist(),
                 name: str = "", folder: Path | None = None):
        if cfg.batch_tokens % d.world:
            raise InterpError(f"batch of {cfg.batch_tokens} tokens does not split over {d.world} processes; pick a multiple")
        self.cfg, self.d, self.d_in, self.name, self.folder = cfg, d, d_in, name, folder
        self.sae = training_sae(cfg, d_in, d_out, metadata)
        self.forward = distributed.train_step_fn(self.sae, d)
        self._params = list(self.sae.parameters())
        self._adam_params = [_storage_order(p) for p in self._params]
        self.optimizer = torch.optim.Adam(self._adam_params, lr=cfg.lr, betas=(0.9, 0.999),
                                          fused=torch.device(cfg.device).type in ("cpu", "cuda"))  # its update 5x faster on CPU
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
        self.last: dict[str, float] = {}  # the last step's statistics
        self._batches: Iterator[torch.Tensor] | None = None

    # -- data -------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_from_data(self, rows: Iterator[torch.Tensor]) -> None:
        """Estimate the outlier limits, normalization factors and b_dec from the first rows (kept for training)."""
        first = []
        while sum(len(r) for r in first) < self.cfg.norm_tokens:
            first.append(next(rows))
        for chunk in first:
            self.buffer.add(chunk)
        x = torch.cat(first)
        medians = distributed.all_reduce(norm_medians(x, self.d_in), self.d, "mean")
        self._set_limits((medians * self.cfg.outlier_ratio).tolist() if self.cfg.outlier_ratio else None)
        x = x[within_limits(x, self.d_in, self.limits)]
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
        """`rows` without the tokens over the norm limits (counted in `excluded`)."""
        keep = within_limits(rows, self.d_in, self.limits)
        left_out = int((~keep).sum())
        self.excluded += left_out
        return rows[keep] if left_out else rows

    def _scaled(self, batch: torch.Tensor) -> torch.Tensor:
        """`batch` normalized: inputs times `scale_in`, a transcoder's targets times `scale_out` (one pass)."""
        batch = batch.to(self.cfg.device)
        scales = torch.full(batch.shape[1:], self.scale_out, dtype=batch.dtype, device=batch.device)
        scales[: self.d_in] = self.scale_in
        return batch * scales

    # -- one step ---------------------------------------------------------------------------
    def _step(self, batch: torch.Tensor, log: bool) -> dict[str, float] | None:
        """One optimizer step; its statistics when `log` (explained variance costs passes over the batch)."""
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
        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        self._check_finite(out.loss, grad_norm)
        # clip at 1 as clip_grad_norm_ would (it multiplies by exactly 1.0 otherwise). Fused Adam divides the
        # gradients by its `grad_scale` as it reads them (AMP's unscaling): the clipping costs no pass of its own
        clip, fused = grad_norm + 1e-6 > 1.0, self.optimizer.defaults["fused"]
        self.optimizer.grad_scale = (grad_norm + 1e-6).float() if clip and fused else None  # float32, as AMP's
        if clip and not fused:
            torch.nn.utils.clip_grads_with_norm_(sae.parameters(), 1.0, grad_norm)
        lr = lr_at(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for view, p in zip(self._adam_params, self._params):
            if view is not p:
                view.grad = p.grad.T  # autograd gives a gradient its parameter's strides
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.zero_grad(set_to_none=True)
        with torch.no_grad():
            fired = distributed.all_reduce(fire_counts(out.feature_acts).double().cpu(), self.d)
            self.since_fired += cfg.batch_tokens
            self.since_fired[fired > 0] = 0
            self.fired += fired
            if hasattr(sae, "topk_threshold"):
                distributed.all_reduce(sae.topk_threshold, self.d, "min")
            if not log:
                return None
            target = x[:, self.d_in:] if cfg.is_transcoder else x
            resid = torch.nn.functional.mse_loss(out.sae_out, target, reduction="sum")  # one pass each
            total = target.var(0, correction=0).sum() * len(target)
            return {"step": self.step, "tokens": (self.step + 1) * cfg.batch_tokens, "loss": float(out.loss),
                    "mse": float(out.losses["mse_loss"]),
                    "l0": float(fired.sum()) / len(x) / self.d.world, "explained_variance": float(1 - resid / total),
                    "dead_fraction": float(dead.float().mean()), "lr": lr}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop before a non-finite loss reaches the weights (it would leave a NaN SAE that looks trained).

        Gradients are averaged over processes, so a non-finite loss in any process makes the gradient norm
        non-finite in all of them: every process stops at the same step.
        """
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise InterpError(f"{self.name + ': ' if self.name else ''}training stopped at step {self.step}: the loss became {float(loss.detach()):g}; "
                              f"lower --lr (was {self.cfg.lr:g}) or --sparsity-coefficient, or --outlier-ratio to "
                              "leave out more outlier tokens, and start again in a new --out")

    def start(self, rows: Iterator[torch.Tensor]) -> None:
        """Read this member's rows from `rows`: limits and normalization from the first ones (unless resumed)."""
        if self.scale_in is None:
            self._init_from_data(rows)
        self._batches = self.buffer.batches(rows)

    def train_step(self, log: bool = True) -> dict[str, float] | None:
        """One optimizer step on the next batch, less its outlier tokens; its statistics when `log`.

        Outliers leave when a batch is served, not when rows are read: every member of a set then reads
        the shared stream at the same pace, whatever it leaves out.
        """
        stats = self._step(self._kept(next(self._batches)), log)
        self.step += 1
        if stats is not None:
            self.last = stats
        return stats

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


def _storage_order(p: torch.nn.Parameter) -> torch.nn.Parameter:
    """`p`, or where `p` is a transposed matrix (the sparse TopK step's W_enc) a Parameter over the same
    storage in its own order: fused Adam copies a strided parameter in and out at every step (3 ms of a
    90 ms step at d_in 576), and updates a parameter wrongly where its state's strides differ from its own."""
    if p.dim() == 2 and not p.is_contiguous() and p.T.is_contiguous():
        return torch.nn.Parameter(p.data.T)
    return p


def _checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    """Whether step `step` (1-based count of steps done) crossed a multiple of `checkpoint_every` tokens."""
    every, batch = cfg.checkpoint_every, cfg.batch_tokens
    return bool(every) and (step * batch) // every > ((step - 1) * batch) // every


def _fit(trainers: list[Trainer], cfg: TrainConfig, d: Dist, on_checkpoint: Callable[[], None]) -> None:
    """Step every member until `cfg.steps` (the schedule fields are shared), checkpointing on the way."""
    desc = f"train {cfg.arch}" if len(trainers) == 1 else f"train {len(trainers)} SAEs"
    bar = tqdm(total=cfg.steps * cfg.batch_tokens, initial=trainers[0].step * cfg.batch_tokens, unit="tok",
               unit_scale=True, desc=desc, file=sys.stderr, disable=not (cfg.progress and d.main), dynamic_ncols=True)
    every = max(1, cfg.steps // 200)
    try:
        while trainers[0].step < cfg.steps:
            step = trainers[0].step + 1
            log = step % every == 0 or step == cfg.steps
            stats = [t.train_step(log) for t in trainers]
            bar.update(cfg.batch_tokens)
            if log:
                for t, row in zip(trainers, stats):
                    t.history.append(row)
                mean = {k: sum(row[k] for row in stats) / len(stats) for k in ("loss", "l0", "explained_variance", "dead_fraction")}
                bar.set_postfix(loss=f"{mean['loss']:.3g}", L0=f"{mean['l0']:.1f}",
                                EV=f"{mean['explained_variance']:.3f}", dead=f"{mean['dead_fraction']:.1%}")
            if step < cfg.steps and _checkpoint_due(cfg, step):
                on_checkpoint()
    finally:
        bar.close()


def _prefixed(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}/{k}" if name else k: v for k, v in tensors.items()}


def _unprefixed(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not name:
        return tensors
    return {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + "/")}


def _read_run_config(path: Path) -> dict[str, TrainConfig]:
    try:
        data = json.loads(path.read_text())
        return {name: TrainConfig.from_dict(cfg) for name, cfg in data["members"].items()}
    except (ValueError, TypeError, KeyError, AttributeError, InterpError):
        raise InterpError(f"{path} is unreadable; choose a new --out") from None


def _prepare_out(out: Path, members: Mapping[str, TrainConfig], resume: bool) -> Path | None:
    """Check the output folder; returns the checkpoint to resume from (or None). Writes nothing."""
    config_file = out / CONFIG_FILE
    if (out / io.CFG_FILE).is_file():
        raise InterpError(f"{out} already holds a trained SAE; choose a new --out")
    if (out / io.SET_FILE).is_file():
        raise InterpError(f"{out} already holds a trained set of SAEs; choose a new --out")
    if config_file.is_file():
        if not resume:
            raise InterpError(f"{out} holds an unfinished run; pass --resume to continue it or choose a new --out")
        old = _read_run_config(config_file)
        if set(old) != set(members):
            raise InterpError(f"{out} was started with other members ({', '.join(old) or 'one SAE'}); "
                              "resume with the same settings or choose a new --out")
        diff = sorted({field for name, cfg in members.items() for field in cfg.differences(old[name])})
        if diff:
            raise InterpError(f"{out} was started with other settings ({', '.join(diff)}); resume with the same settings or choose a new --out")
        return checkpoint.latest(out)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InterpError(f"{out} is not empty; choose a new --out")
    return None


def train(model, cfg: TrainConfig, out: str | Path, resume: bool = False, corpus=None, d: Dist | None = None,
          cache: str | Path | None = None) -> SAETrainResult:
    """Train per `cfg` on `model`'s activations, save the SAE to `out`, return a summary result.

    With `cache` (a folder from `interp.sae.cache.cache_activations`) the activations are read from it and
    `model` may be None: the cache must match `cfg`'s model files, dtype, corpus and cut (checked first).
    Run under torchrun, each process calls this with the same arguments (`d` from
    `distributed.setup`); process 0 writes the files.
    """
    return _run(model, {"": cfg}, Path(out), resume, corpus, d, cache)[0][0]


def train_set(model, members: Mapping[str, TrainConfig], out: str | Path, resume: bool = False, corpus=None,
              d: Dist | None = None, cache: str | Path | None = None) -> SAESetTrainResult:
    """Train several SAEs from one pass over the model: member `name` is saved to `out/name` (an sae-lens
    folder, as `train` writes), and `out/set.json` lists them.

    Build `members` with `config.layer_configs` (one per layer) or `config.sweep_configs` (settings on one
    hook). Members share the fields in `config.SHARED` (data stream and step schedule); each gets the
    weights that `train` with its own config would give. Resume, torchrun and `cache` work as for `train`.
    """
    out = Path(out)
    results, timing, peak = _run(model, dict(members), out, resume, corpus, d, cache)
    frame = pd.DataFrame([{
        "name": name, "folder": r.out, "hook": r.hook, "hook_out": r.hook_out, "layer": hook_layer(r.hook),
        "arch": r.arch, "k": members[name].k, "d_sae": r.d_sae, "loss": r.loss, "l0": r.l0,
        "explained_variance": r.explained_variance, "dead_fraction": r.dead_fraction,
        "outliers_left_out": r.outliers_left_out} for name, r in zip(members, results)])
    first = results[0]
    return SAESetTrainResult(out=str(out), tokens=first.tokens, steps=first.steps, processes=first.processes,
                             resumed_from_step=first.resumed_from_step, seconds=timing.seconds,
                             tokens_per_s=timing.tokens_per_s, steady_tokens_per_s=timing.steady_tokens_per_s,
                             peak_memory_mb=peak, members=frame)


def _run(model, members: dict[str, TrainConfig], out: Path, resume: bool, corpus, d: Dist | None,
         cache: str | Path | None = None) -> tuple[list[SAETrainResult], RunTiming, float]:
    """Train `members` ({name: config}; the name '' saves to `out` itself) from one activation stream
    (the model's, or a cache folder's). Returns the per-member results, the run's timing and this process's
    peak resident memory in MB (saving included)."""
    from interp.corpus import load_corpus

    d = d or Dist()
    if model is not None:  # what made the activations, as the model says
        spec, dtype = getattr(model.cfg, "spec", None), str(model.cfg.dtype).removeprefix("torch.")
        members = {name: dataclasses.replace(cfg, model=spec or cfg.model, dtype=dtype) for name, cfg in members.items()}
    if list(members) != [""]:
        check_members(members)
    cfg = next(iter(members.values()))  # the shared fields
    hooks = {name: [c.hook] + ([c.hook_out] if c.hook_out else []) for name, c in members.items()}
    all_hooks = list(dict.fromkeys(h for hs in hooks.values() for h in hs))
    if cache is None:
        dims = hook_dims(model, all_hooks)
        corpus = corpus if corpus is not None else load_corpus(cfg.corpus)
        corpus_name = corpus.name
        source = ActivationSource(model, all_hooks, distributed.shard(corpus, d), cfg.lm_batch_size, cfg.seq_len,
                                  cfg.skip_positions)
    else:
        from interp.sae.cache import CachedSource, check_cache

        corpus_name = check_cache(cache, all_hooks, cfg.model, cfg.dtype, cfg.corpus, cfg.seq_len,
                                  cfg.lm_batch_size)["corpus"]
        source = CachedSource(cache, all_hooks, cfg.lm_batch_size, cfg.skip_positions, d)
        dims = source.dims()
    resume_from = _prepare_out(out, members, resume)
    distributed.barrier(d)
    trainers = []
    for name, c in members.items():
        metadata = {"model_name": c.model, "hook_name": c.hook, "hook_name_out": c.hook_out,
                    "context_size": c.seq_len, "prepend_bos": False, "dataset_path": corpus_name,
                    "skip_positions": c.skip_positions, "interp_arch": c.arch}
        c.d_sae(dims[c.hook])  # k against the width, now that d_in is known
        trainers.append(Trainer(c, dims[c.hook], dims[c.hook_out] if c.hook_out else None, metadata, d,
                                name=name, folder=out / name if name else out))
    rows = SplitRows(source, list(hooks.values()))
    start_step = 0
    if resume_from is not None:
        tensors, meta, rank_tensors, rank_meta = checkpoint.load(resume_from, d)
        source.epoch, source.batch_in_epoch = rank_meta["epoch"], rank_meta["batch_in_epoch"]
        for i, t in enumerate(trainers):
            t.load_state(_unprefixed(t.name, tensors), meta["members"][t.name])
            t.buffer.load_state(_unprefixed("buffer", _unprefixed(t.name, rank_tensors)))
            t.excluded = rank_meta["members"][t.name]["excluded"]
        start_step = trainers[0].step
    elif d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps({"members": {n: c.to_dict() for n, c in members.items()}}, indent=1))

    def save_checkpoint() -> None:
        tensors, meta, rank_tensors = {}, {"step": trainers[0].step, "world": d.world, "members": {}}, {}
        rank_meta = {"epoch": source.epoch, "batch_in_epoch": source.batch_in_epoch, "members": {}}
        assert not any(rows.waiting), "members read the stream in step; no rows wait between steps"
        for t in trainers:
            own, meta["members"][t.name] = t.state()
            tensors.update(_prefixed(t.name, own))
            rank_tensors.update(_prefixed(t.name, _prefixed("buffer", t.buffer.state())))
            rank_meta["members"][t.name] = {"excluded": t.excluded}
        checkpoint.save(out, trainers[0].step, tensors, meta, rank_tensors, rank_meta, d)

    started = time.perf_counter()
    for i, t in enumerate(trainers):
        t.start(rows.member(i))
    fit_started, source_before = time.perf_counter(), rows.source_seconds
    _fit(trainers, cfg, d, save_checkpoint)
    ended = time.perf_counter()
    timing = RunTiming.measure(tokens=(trainers[0].step - start_step) * cfg.batch_tokens, seconds=ended - started,
                               step_seconds=ended - fit_started - (rows.source_seconds - source_before),
                               rows=rows, world=d.world)
    results = [_finish(t, d, start_step, timing) for t in trainers]
    distributed.barrier(d)
    if d.main:
        if "" not in members:
            io.write_set(out, [{"name": name, "hook": c.hook, "hook_out": c.hook_out, "layer": hook_layer(c.hook),
                                "arch": c.arch, "k": c.k, "d_sae": r.d_sae} for (name, c), r in zip(members.items(), results)],
                         {"model": cfg.model, "tokens": results[0].tokens, "processes": d.world,
                          "seconds": timing.seconds, "tokens_per_s": timing.tokens_per_s,
                          "steady_tokens_per_s": timing.steady_tokens_per_s})
        (out / CONFIG_FILE).unlink(missing_ok=True)
        shutil.rmtree(checkpoint.checkpoint_root(out), ignore_errors=True)
    distributed.barrier(d)
    return results, timing, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _finish(t: Trainer, d: Dist, start_step: int, timing: RunTiming) -> SAETrainResult:
    """Save one member (process 0) and summarise it."""
    cfg, stats = t.cfg, t.last
    density = t.fired / max(1, t.step * cfg.batch_tokens)
    dead_fraction = float((t.since_fired >= cfg.dead_window_tokens).double().mean())
    excluded = int(distributed.all_reduce(torch.tensor([float(t.excluded)], dtype=torch.float64), d))
    training = {"config": cfg.to_dict(), "steps": t.step, "tokens": t.step * cfg.batch_tokens,
                "processes": d.world, "scale_in": t.scale_in, "scale_out": t.scale_out,
                "norm_limits": t.limits, "outlier_tokens_left_out": excluded,
                "final": stats, "dead_fraction": dead_fraction, "tokens_per_s": timing.tokens_per_s,
                "steady_tokens_per_s": timing.steady_tokens_per_s}
    if d.main:
        io.save_trained(t.sae, t.folder, t.scale_in, t.scale_out, torch.log10(density + 1e-10), training)
    return SAETrainResult(
        out=str(t.folder), arch=cfg.arch, hook=cfg.hook, hook_out=cfg.hook_out, d_in=t.d_in, d_sae=t.sae.cfg.d_sae,
        tokens=t.step * cfg.batch_tokens, steps=t.step, processes=d.world, resumed_from_step=start_step,
        seconds=timing.seconds, tokens_per_s=timing.tokens_per_s, steady_tokens_per_s=timing.steady_tokens_per_s,
        loss=stats.get("loss", float("nan")), l0=stats.get("l0", float("nan")),
        explained_variance=stats.get("explained_variance", float("nan")), dead_fraction=dead_fraction,
        outliers_left_out=excluded, history=pd.DataFrame(t.history))

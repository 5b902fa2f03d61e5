"""How extreme-token phenomena emerge over training (after "Hidden Dynamics of Massive Activations",
which follows them over Pythia checkpoints): the same statistics over a list of models or a folder of
checkpoints, and a small Llama-style trainer that writes such a folder from the built-in corpus.

    python -m interp.outliers.checkpoints OUT --steps 1200 --save-every 100   # a few minutes on CPU
    interp outliers --checkpoints OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import time
import types
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.outliers.analyze import OutlierAnalysis, analyze_outliers
from interp.outliers.common import DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS
from interp.outliers.interventions import DEFAULT_PPL_TOKENS
from interp.results import Result, register_result

TRAINING_FILE = "training.json"


# -- training ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainConfig:
    """A tiny Llama (RMSNorm, RoPE, SwiGLU, grouped-query attention) and its optimiser settings."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 512
    tokenizer: str = "byte"  # "byte" (257 tokens) or "smollm2" (the default model's 49,152)
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0


def _tokenizer(name: str):
    if name == "byte":
        from interp.models.tiny import byte_tokenizer

        return byte_tokenizer()
    if name == "smollm2":
        from transformers import AutoTokenizer

        from interp.models import resolve_spec

        return AutoTokenizer.from_pretrained(resolve_spec("smollm2-135m"))
    raise InterpError(f"unknown tokenizer {name!r}; use 'byte' or 'smollm2'")


def _llama(cfg: TrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
        raise InterpError("d_model must divide by n_heads and n_heads by n_kv_heads; pick other sizes")
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=max(512, cfg.seq_len), rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )
    return LlamaForCausalLM(config)


def _lr_factor(step: int, cfg: TrainConfig, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def _batches(tokenizer, corpus, cfg: TrainConfig):
    """Endless [batch, seq_len] batches packed from the corpus (restarting at its end)."""
    from interp.corpus import token_batches

    holder = types.SimpleNamespace(tokenizer=tokenizer)  # token_batches only needs the tokenizer
    while True:
        yield from token_batches(holder, corpus, cfg.batch_size, cfg.seq_len)


def _save(model, tokenizer, folder: Path, record: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / TRAINING_FILE).write_text(json.dumps(record, indent=1))
    return folder


def train_checkpoints(out_dir: str | Path, steps: int = 1200, save_every: int = 100, corpus=None,
                      config: TrainConfig | None = None) -> list[Path]:
    """Train a tiny Llama on `corpus` (default: built-in) and save Hugging Face folders `step-NNNNNN`
    at step 0, every `save_every` steps and at the end; each loads with `load_model(path)`.

    Every folder holds `training.json` (step, tokens seen, recent loss, settings).
    """
    from interp.corpus import load_corpus

    cfg = config or TrainConfig()
    if steps < 1 or save_every < 1:
        raise InterpError("steps and save_every must be at least 1")
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.glob("step-*")):
        raise InterpError(f"{out} already holds checkpoints; pass an empty or new folder")
    torch.manual_seed(cfg.seed)
    tokenizer = _tokenizer(cfg.tokenizer)
    model = _llama(cfg, tokenizer)
    corpus = corpus if hasattr(corpus, "documents") else load_corpus(corpus)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    keep = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": keep, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg, steps))
    settings = dataclasses.asdict(cfg)

    def record(step: int, loss: float | None) -> dict:
        return {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "loss": loss, "config": settings}

    saved = [_save(model, tokenizer, out / "step-000000", record(0, None))]
    batches = _batches(tokenizer, corpus, cfg)
    recent: list[float] = []
    model.train()
    bar = tqdm(range(1, steps + 1), desc="training", unit="step")
    for step in bar:
        tokens = next(batches)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        recent = (recent + [float(loss)])[-20:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        if step % save_every == 0 or step == steps:
            model.eval()
            saved.append(_save(model, tokenizer, out / f"step-{step:06d}", record(step, sum(recent) / len(recent))))
            model.train()
    return saved


# -- analysis across checkpoints --------------------------------------------------------------------

def _step_of(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / TRAINING_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        digits = re.findall(r"\d+", folder.name)
        return int(digits[-1]) if digits else None


def resolve_checkpoints(specs: str | Path | Sequence[str | Path]) -> list[tuple[str, int | None]]:
    """(spec, step) pairs: a folder of checkpoint folders sorted by step, or the given specs in order."""
    if isinstance(specs, (str, Path)):
        specs = [specs]
    specs = [str(s) for s in specs]
    if not specs:
        raise InterpError("no checkpoints given; pass model specs or a folder of checkpoint folders")
    if len(specs) == 1 and Path(specs[0]).is_dir() and not (Path(specs[0]) / "config.json").is_file():
        parent = Path(specs[0])
        folders = [p for p in parent.iterdir() if (p / "config.json").is_file()]
        if not folders:
            raise InterpError(f"{parent} holds no checkpoint folders (none has a config.json)")
        folders.sort(key=lambda p: (_step_of(p) is None, _step_of(p) or 0, p.name))
        return [(str(p), _step_of(p)) for p in folders]
    return [(s, _step_of(Path(s)) if Path(s).is_dir() else None) for s in specs]


def checkpoint_rows(name: str, step: int | None, a: OutlierAnalysis) -> tuple[dict, pd.DataFrame]:
    """One summary row and the per-layer rows of one checkpoint's analysis."""
    layers = a.massive.to_frame()
    sinks = a.sinks.to_frame()
    drains = a.drains.to_frame()
    dims = a.massive.dims()
    peak = layers.loc[layers["top"].idxmax()]
    flagged = dims["count"].sum() if not dims.empty else 0
    row = {
        "checkpoint": name, "step": step,
        "top": float(peak["top"]), "top_layer": int(peak["layer"]), "top_dim": int(peak["dim"]),
        "top_position": int(peak["position"]), "max_ratio": float(layers["ratio"].max()),
        "flagged_per_seq": flagged / max(a.massive.n_sequences, 1),
        "massive_dims": ",".join(str(d) for d in dims["dim"]),
        "first_flag_layer": int(dims["first_layer"].min()) if not dims.empty else None,
        "first_token_share": float((dims["count"] * dims["first_token_share"]).sum() / flagged) if flagged else None,
        "sink_rate": a.sinks.sink_rate, "first_attention": float(sinks["first_attention"].mean()),
        "value_ratio": float(drains["value_ratio"].dropna().median()), "resid_ratio": float(drains["resid_ratio"].max()),
        "secondary_per_seq": len(a.secondary.events) / max(a.secondary.n_sequences, 1),
        "typical_cos": float(a.secondary.typical_cos.max()),
    }
    if a.intervention is not None:
        row.update({f"ppl_{mode}": v for mode, v in a.intervention.perplexity.items()})
    per_layer = pd.DataFrame({
        "checkpoint": name, "step": step, "layer": layers["layer"], "top": layers["top"],
        "median": layers["median"], "ratio": layers["ratio"], "resid_ratio": drains["resid_ratio"],
        "first_attention": sinks["first_attention"].reindex(layers["layer"]).tolist(),
        "sink_score": sinks["sink_score"].reindex(layers["layer"]).tolist(),
    })
    return row, per_layer


@register_result
@dataclasses.dataclass
class CheckpointResult(Result):
    """The outlier statistics of each checkpoint (one row each) and per layer (long table)."""

    kind = "outlier_checkpoints"
    source: str
    n_tokens: int
    ratio_threshold: float
    sink_threshold: float
    checkpoints: pd.DataFrame
    layers: pd.DataFrame  # checkpoint, step, layer, top, median, ratio, resid_ratio, first_attention, sink_score

    def to_frame(self) -> pd.DataFrame:
        return self.checkpoints

    def summary(self) -> str:
        show = ["checkpoint", "step", "top", "top_layer", "top_dim", "top_position", "max_ratio",
                "flagged_per_seq", "sink_rate", "first_attention", "value_ratio", "resid_ratio",
                "secondary_per_seq", "typical_cos"] + [c for c in self.checkpoints if c.startswith("ppl_")]
        frame = self.checkpoints[show].copy()
        frame["checkpoint"] = frame["checkpoint"].map(lambda s: Path(s).name)
        return "\n".join([
            f"outliers across {len(frame)} checkpoints ({self.n_tokens} tokens of {self.source} each); "
            f"massive = > {self.ratio_threshold:g} x median, sink = attention > {self.sink_threshold:g}",
            frame.to_string(index=False, float_format="{:,.3g}".format),
        ])

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        c = self.checkpoints
        steps_known = c["step"].notna().all()
        x = c["step"].tolist() if steps_known else [escape_label(Path(s).name) for s in c["checkpoint"]]
        fig = make_subplots(rows=2, cols=3, subplot_titles=(
            "largest |h| (any layer)", "largest ratio to the median", "first-token sink rate and attention",
            "first-token residual and value norm ratios", "perplexity", "log10 ratio top/median per layer"))
        fig.add_trace(go.Scatter(x=x, y=c["top"], mode="lines+markers", name="top |h|"), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=c["max_ratio"], mode="lines+markers", name="top / median"), 1, 2)
        fig.add_hline(y=self.ratio_threshold, line_dash="dot", row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=c["sink_rate"], mode="lines+markers", name="sink rate"), 1, 3)
        fig.add_trace(go.Scatter(x=x, y=c["first_attention"], mode="lines+markers", name="attention to first"), 1, 3)
        fig.add_trace(go.Scatter(x=x, y=c["resid_ratio"], mode="lines+markers", name="residual norm ratio"), 2, 1)
        fig.add_trace(go.Scatter(x=x, y=c["value_ratio"], mode="lines+markers", name="value norm ratio"), 2, 1)
        for col in [k for k in c if k.startswith("ppl_")]:
            fig.add_trace(go.Scatter(x=x, y=c[col], mode="lines+markers", name=col), 2, 2)
        grid = self.layers.pivot_table(index="layer", columns="checkpoint", values="ratio", sort=False)
        grid = grid[list(c["checkpoint"])]
        fig.add_trace(go.Heatmap(z=grid.clip(lower=1e-6).map(math.log10).values.tolist(), x=x,
                                 y=grid.index.tolist(), colorscale="Viridis", colorbar=dict(title="log10")), 2, 3)
        for row, col in [(1, 1), (1, 2), (2, 1), (2, 2)]:
            fig.update_yaxes(type="log", row=row, col=col)
        fig.update_layout(title=escape_label(f"Emergence of extreme-token phenomena ({self.source})"), height=800)
        return fig


def across_checkpoints(specs: str | Path | Sequence[str | Path], corpus=None, *, max_tokens: int = DEFAULT_TOKENS,
                       batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                       ppl_tokens: int = DEFAULT_PPL_TOKENS, device: str = "cpu", dtype: str = "float32",
                       **thresholds) -> CheckpointResult:
    """Run `analyze_outliers` on each checkpoint (model specs, or one folder of checkpoint folders, each loaded
    on `device` in `dtype`) over the same corpus tokens and tabulate how the phenomena change. `thresholds` go
    to `analyze_outliers`."""
    from interp.models import load_model

    rows, per_layer, analysis = [], [], None
    for spec, step in tqdm(resolve_checkpoints(specs), desc="checkpoints", unit="model"):
        model = load_model(spec, device=device, dtype=dtype)
        analysis = analyze_outliers(model, corpus=corpus, max_tokens=max_tokens, batch_size=batch_size,
                                    seq_len=seq_len, ppl_tokens=ppl_tokens, **thresholds)
        row, layers = checkpoint_rows(spec, step, analysis)
        rows.append(row)
        per_layer.append(layers)
        del model
    return CheckpointResult(source=analysis.massive.source, n_tokens=analysis.massive.n_tokens,
                            ratio_threshold=analysis.massive.ratio_threshold,
                            sink_threshold=analysis.sinks.threshold, checkpoints=pd.DataFrame(rows),
                            layers=pd.concat(per_layer, ignore_index=True))


def main(argv: list[str] | None = None) -> None:
    """`python -m interp.outliers.checkpoints OUT`: train the tiny Llama and save its checkpoints."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", help="folder for the step-NNNNNN checkpoint folders")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--corpus", default=None, help="training text (default: built-in corpus)")
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.time()
    saved = train_checkpoints(args.out, args.steps, args.save_every, args.corpus, cfg)
    print(f"saved {len(saved)} checkpoints in {time.time() - start:.0f} s under {args.out}")


if __name__ == "__main__":
    main()

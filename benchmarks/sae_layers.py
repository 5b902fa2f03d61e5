"""Many transcoders from one model pass: cost of the 30-layer set against one layer, measured in one run.

1. Member step: one TopK transcoder training step (forward, backward, Adam) with our sparse decoding
   against sae-lens's dense step, same shapes (d_model x expansion latents, 1024-token batch).
2. Training: `interp sae train --layers L` (one layer) and `--layers all` on the same tokens and
   settings, each in its own process (so peak memory is its own): seconds, tokens/s, peak memory,
   and the ratio all / one (goal: at most 3). A short run pays one-time costs (model load, the
   members' first fill and normalisation) and forwards more tokens than it trains (the buffer's first
   fill); a long run neither. Each run also reports its long-run rate (`steady_tokens_per_s`: the
   model's cost per forwarded token plus the steps' cost per trained token, both measured in it), and
   the ratio of those rates is a long run's ratio. `--repeats 2` alternates the trainings twice and
   keeps each one's fastest run (other jobs on a shared machine slow whichever runs beside them).
3. Evaluation: `evaluate` of the one-layer transcoder against the clean forward throughput on the
   same batches (the bound is about a third: a clean, a spliced and a zero-ablated pass), and
   `evaluate_set` of the whole set (one clean pass, one doubled pass per member, the replacement model).

    python benchmarks/sae_layers.py --model tiny-llama --layer 1 --tokens 8192
    python benchmarks/sae_layers.py                  # default model, layer 15 vs all 30, 20k tokens
    python benchmarks/sae_layers.py --dead-window-tokens 1000000 --set-eval-tokens 0
                                                     # AuxK beyond the run, as in a long run's steady state
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LN2, MLP_OUT = "blocks.{l}.ln2.hook_normalized", "blocks.{l}.hook_mlp_out"


def step_seconds(d_model: int, expansion: float, k: int, sparse: bool, steps: int = 12, dead_share: float = 0.0) -> float:
    """Median seconds of one transcoder training step (1024 tokens): ours (the trainer's own step: sparse
    decoding, fused Adam on W_enc's storage, clipping) or sae-lens's (dense decoding, its default Adam,
    clipping); `dead_share` of the latents dead (AuxK on)."""
    from sae_lens import TopKTrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    from interp.sae.config import TrainConfig
    from interp.sae.train import Trainer

    cfg = TrainConfig(hook="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out", k=k, expansion=expansion)
    trainer = Trainer(cfg, d_model, d_model, {})
    trainer.scale_in = trainer.scale_out = 1.0
    sae = trainer.sae
    optimizer = torch.optim.Adam(sae.parameters())
    x = torch.randn(1024, 2 * d_model)
    dead = torch.rand(sae.cfg.d_sae, generator=torch.Generator().manual_seed(0)) < dead_share

    def dense_step(i: int) -> None:
        out = TopKTrainingSAE.training_forward_pass(sae, TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(steps):
        trainer.since_fired = dead.double() * cfg.dead_window_tokens  # the same latents dead every step
        started = time.perf_counter()
        trainer._step(x, log=False) if sparse else dense_step(i)
        times.append(time.perf_counter() - started)
    return sorted(times[2:])[len(times[2:]) // 2]


def train_run(model: str, layers: str, out: Path, args) -> dict:
    """`interp sae train --layers LAYERS` in its own process; its JSON result."""
    cmd = [sys.executable, "-m", "interp", "sae", "train", "--model", model, "--hook", LN2, "--hook-out", MLP_OUT,
           "--layers", layers, "--arch", "topk", "--k", str(args.k), "--expansion", str(args.expansion),
           "--tokens", str(args.tokens), "--buffer-tokens", str(args.buffer_tokens), "--checkpoint-every", "0",
           "--out", str(out), "--json"]
    if args.dead_window_tokens:
        cmd += ["--dead-window-tokens", str(args.dead_window_tokens)]
    threads = str(args.threads)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": threads, "INTERP_THREADS": threads})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout)


@torch.no_grad()
def clean_tokens_per_s(model, tokens: int, batch_size: int) -> float:
    """Full forward passes (with logits) over the held-out text `evaluate` reads."""
    from interp.corpus import load_corpus, token_batches
    from interp.sae.evaluate import held_out

    seen, started = 0, time.perf_counter()
    for batch in token_batches(model, held_out(load_corpus()), batch_size, 128, max_tokens=tokens):
        model(batch)
        seen += batch.numel()
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=15, help="the one layer to compare the set with")
    parser.add_argument("--tokens", type=int, default=20_480)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=float, default=4.0)
    parser.add_argument("--buffer-tokens", type=int, default=8192)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--set-eval-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dead-window-tokens", type=int, default=None,
                        help="AuxK's dead window (default: training's). Most of a 20k-token run falls in the revival "
                             "after the first window, when most latents are dead and AuxK costs 2-3 member steps; a "
                             "window beyond --tokens measures the steady state of a long run, where few are dead")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate the trainings this many times and keep each one's fastest run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from interp.models import load_model
    from interp.sae import load_sae
    from interp.sae.evaluate import evaluate, evaluate_set

    model = load_model(args.model)
    d_model = model.cfg.d_model
    report: dict = {"model": args.model, "tokens": args.tokens, "k": args.k, "expansion": args.expansion,
                    "dead_window_tokens": args.dead_window_tokens,
                    "buffer_tokens": args.buffer_tokens, "threads": args.threads, "layer": args.layer}

    sparse, dense = (step_seconds(d_model, args.expansion, args.k, s) for s in (True, False))
    report["member_step_s"] = {"ours": round(sparse, 4), "sae_lens": round(dense, 4), "speedup": round(dense / sparse, 2)}
    aux = {share: (step_seconds(d_model, args.expansion, args.k, True, dead_share=share),
                   step_seconds(d_model, args.expansion, args.k, False, dead_share=share)) for share in (0.05, 0.7)}
    report["member_step_with_auxk_s"] = {f"{share:.0%} dead": {"ours": round(o, 4), "sae_lens": round(d, 4)}
                                         for share, (o, d) in aux.items()}

    tmp = Path(tempfile.mkdtemp(prefix="sae-layers-"))
    runs: dict[str, list[dict]] = {"one": [], "all": []}
    for i in range(args.repeats):
        for name, layers in (("one", str(args.layer)), ("all", "all")):
            runs[name].append(train_run(args.model, layers, tmp / f"{name}-{i}", args))
    one, every = (min(runs[name], key=lambda r: r["seconds"]) for name in ("one", "all"))
    for name, run in (("one_layer", one), ("all_layers", every)):
        report[name] = {"members": len(run["members"]), "seconds": round(run["seconds"], 1),
                        "tokens_per_s": round(run["tokens_per_s"], 1),
                        "steady_tokens_per_s": round(run["steady_tokens_per_s"], 1),
                        "peak_memory_mb": round(run["peak_memory_mb"]),
                        "explained_variance": [round(m["explained_variance"], 3) for m in run["members"]]}
    report["time_ratio_all_vs_one"] = round(every["seconds"] / one["seconds"], 2)
    steady = {name: max(r["steady_tokens_per_s"] for r in runs[name]) for name in ("one", "all")}
    report["long_run_ratio_all_vs_one"] = round(steady["one"] / steady["all"], 2)
    report["seconds_of_every_run"] = {name: [round(r["seconds"], 1) for r in rs] for name, rs in runs.items()}
    report["steady_tokens_per_s_of_every_run"] = {name: [round(r["steady_tokens_per_s"], 1) for r in rs]
                                                  for name, rs in runs.items()}

    folder = Path(one["out"]) / f"layer-{args.layer:02d}"
    result = evaluate(model, load_sae(folder), tokens=args.eval_tokens, path=str(folder), progress=False)
    clean = clean_tokens_per_s(model, args.eval_tokens, 8)
    text_tokens = (args.eval_tokens // 128) * 128
    report["eval_one"] = {"tokens_per_s": round(text_tokens / result.seconds, 1), "clean_forward_tokens_per_s": round(clean, 1),
                          "share_of_forward": round(text_tokens / result.seconds / clean, 3)}
    if args.set_eval_tokens:
        result = evaluate_set(model, every["out"], tokens=args.set_eval_tokens, progress=False)
        report["eval_set"] = {"members": len(result.members), "tokens": result.tokens, "seconds": round(result.seconds, 1),
                              "tokens_per_s": round(result.tokens / result.seconds, 1),
                              "replacement_ce_loss_score": round(result.replacement["ce_loss_score"], 4)}

    print(f"member step: ours {sparse * 1e3:.1f} ms, sae-lens {dense * 1e3:.1f} ms ({dense / sparse:.2f}x)")
    for share, (o, d) in aux.items():
        print(f"  with {share:.0%} of latents dead (AuxK): ours {o * 1e3:.1f} ms, sae-lens {d * 1e3:.1f} ms")
    for name in ("one_layer", "all_layers"):
        r = report[name]
        print(f"{name:11} {r['members']:>3} SAEs  {r['seconds']:>7.1f} s  {r['tokens_per_s']:>7.1f} tok/s  "
              f"peak {r['peak_memory_mb']:>6} MB")
    print(f"time all / one: {report['time_ratio_all_vs_one']}x (goal: at most 3x)")
    print(f"a long run (steady rates {steady['one']:.1f} vs {steady['all']:.1f} tok/s): "
          f"{report['long_run_ratio_all_vs_one']}x (goal: at most 3x)")
    e = report["eval_one"]
    print(f"eval one layer: {e['tokens_per_s']} tok/s = {e['share_of_forward']:.0%} of the clean forward "
          f"({e['clean_forward_tokens_per_s']} tok/s)")
    if "eval_set" in report:
        e = report["eval_set"]
        print(f"eval set: {e['members']} members on {e['tokens']} tokens in {e['seconds']} s; "
              f"replacement CE loss score {e['replacement_ce_loss_score']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

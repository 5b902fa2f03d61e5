"""SAE training and analysis speed, ours vs sae-lens, measured in one run on the same machine.

1. Training tokens/s: `interp.sae.train` vs sae-lens's `LanguageModelSAETrainingRunner` on the same
   model object, hook, architecture (topk), token rows (pre-tokenized, position 0 left out by both),
   buffer, batch, learning-rate schedule and token budget; then both SAEs evaluated by the same
   held-out evaluation at the same L0 (k).
   Ours leaves out tokens with massive activations (norm over 10x the median); both SAEs are scored
   on the same held-out tokens, without those.
2. 1 vs 2 processes: `torchrun --nproc-per-node {1,2} -m interp sae train` (gloo on CPU).
3. Feature analysis: seconds per 1,000 latents after the model pass, and in total.

    python benchmarks/sae.py --model tiny-llama --hook blocks.1.hook_resid_post --tokens 32768
    python benchmarks/sae.py                 # default model, blocks.15.hook_resid_post (slow on CPU)
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


def sae_lens_run(model, cfg, out: Path) -> float:
    """Train with sae-lens's runner on the token rows ours reads; returns seconds."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

    from interp.corpus import load_corpus, token_batches
    from interp.sae.activations import hook_dim

    rows_needed = cfg.tokens // (cfg.seq_len - 1) + 4 * cfg.buffer_tokens // (cfg.seq_len - 1) + 64
    rows = torch.cat(list(token_batches(model, load_corpus(cfg.corpus), 64, cfg.seq_len, rows_needed * cfg.seq_len)))
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    d_in = hook_dim(model, cfg.hook)
    steps = cfg.steps
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae(d_in), k=cfg.k, aux_loss_coefficient=cfg.aux_k_coefficient,
                                  normalize_activations="expected_average_only_in"),
        model_name=model.cfg.model_name, hook_name=cfg.hook, dataset_path="", is_dataset_tokenized=True,
        context_size=cfg.seq_len, seqpos_slice=(cfg.skip_positions, None), prepend_bos=False,
        training_tokens=cfg.tokens, train_batch_size_tokens=cfg.batch_tokens, store_batch_size_prompts=cfg.lm_batch_size,
        n_batches_in_buffer=max(1, cfg.buffer_tokens // (cfg.seq_len - cfg.skip_positions)),  # sae-lens: x context size
        n_batches_for_norm_estimate=max(1, cfg.norm_tokens // cfg.batch_tokens), lr=cfg.lr,
        lr_warm_up_steps=int(steps * cfg.warmup_fraction), lr_decay_steps=int(steps * cfg.decay_fraction),
        dead_feature_window=max(1, cfg.dead_window_tokens // cfg.batch_tokens), seed=cfg.seed, device=cfg.device,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=str(out), verbose=False)
    started = time.perf_counter()
    LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model).run()
    return time.perf_counter() - started


def torchrun_train(n: int, model: str, hook: str, tokens: int, out: Path, extra: list[str]) -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    threads = str(max(1, torch.get_num_threads() // n))
    cmd = [str(torchrun), "--nproc-per-node", str(n), "-m", "interp", "sae", "train", "--model", model, "--hook", hook,
           "--tokens", str(tokens), "--out", str(out), "--json", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": threads, "INTERP_THREADS": threads})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--feature-tokens", type=int, default=16_384)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from interp.models import load_model
    from interp.sae import TrainConfig, load_sae, train
    from interp.sae.activations import sae_limits
    from interp.sae.evaluate import evaluate
    from interp.sae.features import feature_statistics

    model = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="sae-bench-"))
    cfg = TrainConfig(hook=args.hook, arch="topk", k=args.k, tokens=args.tokens, batch_tokens=args.batch_tokens,
                      lr=args.lr, checkpoint_every=0, buffer_tokens=8 * args.batch_tokens, norm_tokens=4 * args.batch_tokens,
                      model=args.model)
    report: dict = {"model": args.model, "hook": args.hook, "tokens": args.tokens, "k": args.k, "threads": args.threads}

    started = time.perf_counter()
    train(model, cfg, tmp / "ours")
    ours_s = time.perf_counter() - started
    theirs_s = sae_lens_run(model, cfg, tmp / "sae_lens")
    limits = sae_limits(load_sae(tmp / "ours"))  # both scored on the same tokens: ours leaves outliers out
    for name, seconds in (("ours", ours_s), ("sae_lens", theirs_s)):
        result = evaluate(model, load_sae(tmp / name), tokens=args.eval_tokens, path=str(tmp / name), progress=False,
                          limits=limits)
        report[name] = {"seconds": round(seconds, 1), "tokens_per_s": round(args.tokens / seconds, 1),
                        "l0": round(result.l0, 2), "explained_variance": round(result.explained_variance, 4),
                        "ce_loss_score": round(result.ce_loss_score, 4), "dead_fraction": round(result.dead_fraction, 4)}
    report["speedup_vs_sae_lens"] = round(theirs_s / ours_s, 2)

    extra = ["--arch", "topk", "--k", str(args.k), "--batch-tokens", str(args.batch_tokens), "--lr", str(args.lr),
             "--checkpoint-every", "0", "--buffer-tokens", str(cfg.buffer_tokens)]
    for n in (1, 2):
        run = torchrun_train(n, args.model, args.hook, args.tokens, tmp / f"procs{n}", extra)
        result = evaluate(model, load_sae(tmp / f"procs{n}"), tokens=args.eval_tokens, progress=False)
        report[f"processes_{n}"] = {"tokens_per_s": round(run["tokens_per_s"], 1),
                                    "explained_variance": round(result.explained_variance, 4)}

    stats = feature_statistics(model, load_sae(tmp / "ours"), tmp / "ws", path=tmp / "ours", tokens=args.feature_tokens,
                               progress=False)
    report["features"] = {"latents": stats.n_features, "tokens": stats.tokens, "seconds_total": round(stats.seconds, 1),
                          "seconds_per_1k_latents": round(stats.seconds_per_1k_features, 2)}

    print(f"{'':22}{'ours':>12}{'sae-lens':>12}")
    for key in ("tokens_per_s", "explained_variance", "l0", "ce_loss_score", "dead_fraction"):
        print(f"{key:22}{report['ours'][key]:>12}{report['sae_lens'][key]:>12}")
    print(f"processes 1 vs 2 tok/s: {report['processes_1']['tokens_per_s']} vs {report['processes_2']['tokens_per_s']}"
          f" (EV {report['processes_1']['explained_variance']} vs {report['processes_2']['explained_variance']})")
    print(f"feature analysis: {report['features']['seconds_per_1k_latents']} s per 1k latents "
          f"({report['features']['seconds_total']} s total for {report['features']['latents']} latents)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

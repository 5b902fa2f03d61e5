"""Causal tracing: our batched tracer vs the plain reference loop (one forward pass per cell), same model,
same noise draw, in one run.

    .venv/bin/python benchmarks/tracing.py [--model smollm2-135m] [--samples 10] [--prompt P --subject S]

For each prompt (default: the paper's "Danielle Darrieux" prompt, 10 tokens, and the Eiffel Tower prompt,
11 tokens, whose subject starts at token 1): all three kinds with the default window; the max absolute
difference of every cell, high and low scores, both wall times and the speed ratio. The reference runs
3 x (2 + T x L) passes of 1 + samples copies; it takes minutes on CPU. Prints a table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PROMPTS = [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("The Eiffel Tower is located in the city of", "Eiffel Tower"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--subject", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from circuits.reference import trace_reference
    from circuits.tracing import embedding_noise_std, trace
    from interp.models import load_model

    model = load_model(args.model)
    std = 3.0 * embedding_noise_std(model)  # computed (and cached) outside the timings
    prompts = [(args.prompt, args.subject)] if args.prompt else PROMPTS
    rows = []
    for prompt, subject in prompts:
        kw = dict(samples=args.samples, window=args.window, noise_std=std)
        trace(model, prompt, subject, kinds=("hidden",), **{**kw, "samples": 1})  # warm up
        began = time.perf_counter()
        fast = trace(model, prompt, subject, **kw)
        fast_s = time.perf_counter() - began
        began = time.perf_counter()
        ref, high, low = trace_reference(model, prompt, subject, **kw)
        ref_s = time.perf_counter() - began
        diff = max(float((fast.scores[k] - ref[k]).abs().max()) for k in ref)
        rows.append({
            "prompt": prompt, "tokens": len(fast.tokens), "subject_range": fast.subject_range,
            "answer": fast.answer, "high": fast.high, "low": fast.low,
            "max_abs_diff": max(diff, abs(fast.high - high), abs(fast.low - low)),
            "reference_passes": 3 * (2 + len(fast.tokens) * model.cfg.n_layers),
            "fast_s": fast_s, "reference_s": ref_s, "speedup": ref_s / fast_s,
        })
    print(f"{'prompt':45} {'T':>3} {'max|diff|':>10} {'ours s':>8} {'ref s':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['prompt'][:45]:45} {r['tokens']:>3} {r['max_abs_diff']:>10.2e} {r['fast_s']:>8.1f} "
              f"{r['reference_s']:>8.1f} {r['speedup']:>6.1f}")
    print(json.dumps({"model": args.model, "samples": args.samples, "window": args.window,
                      "threads": args.threads, "noise_std": std, "results": rows}))


if __name__ == "__main__":
    main()

"""Causal tracing: our batched tracer vs the plain reference loop (one forward pass per cell), same model,
same noise draw, in one run.

    .venv/bin/python benchmarks/tracing.py [--model smollm2-135m] [--samples 10] [--reference-cells N]
                                           [--prompt P --subject S] [--threads 2]

For each prompt (default: the paper's "Danielle Darrieux" prompt and the Eiffel Tower prompt, 10 tokens
each on the default model; the Eiffel subject starts at token 1, the worst case for skipping positions):
all three kinds with the default window; the max absolute difference over the compared cells, high and
low scores, both wall times and the speed ratio. The reference needs 3 x (2 + T x L) passes of
1 + samples copies, every pass the same size; on a slow CPU that is an hour per prompt, so
`--reference-cells N` runs it on N evenly spread cells per kind (compared exactly) and extrapolates its
time from the mean pass time (measured before and after our run, to even out machine load). Prints a
table, then one JSON object.
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


def spread_cells(n_tokens: int, n_layers: int, n: int | None) -> list[tuple[int, int]] | None:
    """n (token, layer) cells evenly spread over the grid, or None for all of them."""
    if not n:
        return None
    total = n_tokens * n_layers
    return [divmod(round(i * (total - 1) / max(1, n - 1)), n_layers) for i in range(min(n, total))]


def timed_reference(model, prompt, subject, cells, **kw):
    from circuits.reference import trace_reference

    began = time.perf_counter()
    scores, high, low = trace_reference(model, prompt, subject, cells=cells, **kw)
    return scores, high, low, time.perf_counter() - began


def block_work(T: int, L: int, subject_start: int, samples: int, window: int) -> tuple[int, int]:
    """(ours, reference): (row, position, layer) block passes of the two tracers over all three kinds,
    their floating-point work.

    The reference runs every cell as a full pass of 1 + samples rows; ours runs `samples` rows of
    positions >= t from the layer where the tracer's rows for the cell join (`circuits.restore._joins`:
    its first restored layer, or where its window parts from a shorter one that starts alike), and
    skips positions before the subject.
    """
    from circuits.restore import Patch, _joins
    from circuits.tracing import KINDS, OUTPUT_HOOKS, _restore_writes
    from interp.hooks import resid_post

    hooks = [resid_post(l) for l in range(L)] + [OUTPUT_HOOKS[k](l) for k in ("mlp", "attn") for l in range(L)]
    clean = {name: torch.zeros(1, 1, 1) for name in hooks}  # one tensor per hook, as in the tracer's clean cache
    patches = [Patch(_restore_writes(kind, 0, l, clean, window, L)) for kind in KINDS for l in range(L)]
    firsts = [join for join, _ in _joins(patches)]
    ours = samples * sum(T - t for t in range(subject_start, T)) * sum(L - f for f in firsts)
    reference = 3 * (2 + T * L) * (1 + samples) * T * L
    return ours, reference


def bench(model, prompt: str, subject: str, n_cells: int | None, **kw) -> dict:
    from circuits.tracing import trace

    trace(model, prompt, subject, kinds=("hidden",), **{**kw, "samples": 1})  # warm up
    T, L, n_kinds = len(model.to_str_tokens(prompt, prepend_bos=False)), model.cfg.n_layers, 3
    cells = spread_cells(T, L, n_cells)
    half = None if cells is None else cells[::2]
    first = timed_reference(model, prompt, subject, half if half else cells, **kw)
    began = time.perf_counter()
    fast = trace(model, prompt, subject, **kw)
    fast_s = time.perf_counter() - began
    parts = [first] if cells is None else [first, timed_reference(model, prompt, subject, cells[1::2], **kw)]
    diffs = [abs(fast.high - p[1]) for p in parts] + [abs(fast.low - p[2]) for p in parts]
    for scores, *_ in parts:
        for kind, ref in scores.items():
            done = ~ref.isnan()
            diffs.append(float((fast.scores[kind][done] - ref[done]).abs().max()))
    full_passes = n_kinds * (2 + T * L)
    if cells is None:
        ref_s, compared = first[3], T * L * n_kinds
    else:
        passes = sum(2 + n_kinds * len(c) for c in (cells[::2], cells[1::2]))
        ref_s, compared = sum(p[3] for p in parts) / passes * full_passes, len(cells) * n_kinds
    ours_work, ref_work = block_work(T, L, fast.subject_range[0], kw["samples"], kw["window"])
    return {"prompt": prompt, "tokens": T, "subject_range": fast.subject_range, "answer": fast.answer,
            "high": fast.high, "low": fast.low, "max_abs_diff": max(diffs), "cells_compared": compared,
            "reference_passes": full_passes, "reference_extrapolated": cells is not None,
            "fast_s": fast_s, "reference_s": ref_s, "speedup": ref_s / fast_s, "work_ratio": ref_work / ours_work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--reference-cells", type=int, default=0, help="0: the full reference loop")
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--subject", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from circuits.tracing import embedding_noise_std
    from interp.models import load_model

    model = load_model(args.model)
    std = 3.0 * embedding_noise_std(model)  # computed (and cached) outside the timings
    prompts = [(args.prompt, args.subject)] if args.prompt else PROMPTS
    kw = dict(samples=args.samples, window=args.window, noise_std=std)
    rows = [bench(model, prompt, subject, args.reference_cells, **kw) for prompt, subject in prompts]
    print(f"{'prompt':45} {'T':>3} {'subject':>8} {'max|diff|':>10} {'ours s':>8} {'ref s':>8} {'ratio':>6} {'work':>5}")
    for r in rows:
        est = "~" if r["reference_extrapolated"] else ""
        print(f"{r['prompt'][:45]:45} {r['tokens']:>3} {str(r['subject_range']):>8} {r['max_abs_diff']:>10.2e} "
              f"{r['fast_s']:>8.1f} {est + format(r['reference_s'], '.1f'):>8} {r['speedup']:>6.1f} {r['work_ratio']:>5.1f}")
    print("ratio: reference seconds / ours; work: the reference's block passes (row x position x layer) / ours")
    print(json.dumps({"model": args.model, "samples": args.samples, "window": args.window,
                      "threads": args.threads, "noise_std": std, "results": rows}))


if __name__ == "__main__":
    main()

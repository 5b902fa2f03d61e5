"""Tokens/s of the outlier analysis over the corpus vs a plain forward pass, measured in the same run.

    .venv/bin/python benchmarks/outliers.py [--model smollm2-135m] [--tokens 2048] [--threads 2] [--repeats 2]

Every pass sees the same pre-tokenized batches (tokenization is not timed); each figure is the best of
`--repeats` runs. "full analysis" is all collectors in one pass; each collector is also timed alone.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import best_of


class Fixed:
    """A TokenSource stand-in that replays pre-tokenized batches."""

    name = "benchmark"

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def total(self):
        return len(self.batches)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from interp.corpus import load_corpus, token_batches
    from interp.models import load_model
    from interp.outliers.common import run_collectors
    from interp.outliers.drains import DrainCollector
    from interp.outliers.massive import MassiveCollector
    from interp.outliers.secondary import SecondaryCollector
    from interp.outliers.sinks import SinkCollector

    model = load_model(args.model)
    batches = list(token_batches(model, load_corpus(), args.batch_size, args.seq_len, args.tokens))
    n_tokens = sum(b.numel() for b in batches)
    kinds = {"massive": MassiveCollector, "sinks": SinkCollector, "drains": DrainCollector,
             "secondary": SecondaryCollector}

    def forward():
        with torch.no_grad():
            for b in batches:
                model(b)

    def analysis(*names):
        return lambda: run_collectors(model, Fixed(batches), [kinds[n](model) for n in names])

    forward()  # warm-up
    rows = {"forward pass (logits)": best_of(args.repeats, forward),
            "full analysis (one pass)": best_of(args.repeats, analysis(*kinds))}
    for name in kinds:
        rows[f"  {name} alone"] = best_of(args.repeats, analysis(name))
    reference = rows["forward pass (logits)"]
    table = [{"what": what, "seconds": round(s, 3), "tokens_per_s": round(n_tokens / s, 1),
              "time_vs_forward": round(s / reference, 3)} for what, s in rows.items()]
    rows_total = sum(b.shape[0] for b in batches)
    print(f"{args.model}, {n_tokens} tokens ({rows_total} rows of {args.seq_len} in {len(batches)} batches), "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"{'what':28s} {'seconds':>8s} {'tokens/s':>9s} {'x forward':>9s}")
    for r in table:
        print(f"{r['what']:28s} {r['seconds']:8.2f} {r['tokens_per_s']:9.1f} {r['time_vs_forward']:9.2f}")
    print(json.dumps({"model": args.model, "tokens": n_tokens, "threads": args.threads, "rows": table}))


if __name__ == "__main__":
    main()

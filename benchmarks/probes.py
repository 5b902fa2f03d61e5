"""Benchmark: collect last-token activations of 1k statements at every layer, then fit every probe.

References measured in the same run: a bare forward pass over the same padded batches (what the
collection costs beyond the model itself), and scikit-learn's LinearDiscriminantAnalysis on the same
folds (what the whitened mass-mean probe computes).

    .venv/bin/python benchmarks/probes.py [--n 1000] [--model smollm2-135m] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would shadow the probes package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _time(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bare_forward(model, texts, batch_size: int) -> None:
    """The model alone over the same length-sorted, right-padded batches the collector builds."""
    from probes.collect import _batches, tokenize

    ids = tokenize(model, texts)
    pad = model.tokenizer.pad_token_id or 0
    with torch.no_grad():
        for rows in _batches([len(x) for x in ids], batch_size):
            tokens = torch.full((len(rows), max(len(ids[r]) for r in rows)), pad, dtype=torch.long)
            for b, r in enumerate(rows):
                tokens[b, :len(ids[r])] = torch.tensor(ids[r])
            model(tokens, stop_at_layer=model.cfg.n_layers)


def fit_all(acts: torch.Tensor, dataset, method: str, folds: int = 5) -> float:
    """Seconds to cross-validate `method` (or 'sklearn-lda') at every layer and refit on all rows."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from probes.estimators import make_probe
    from probes.sweep import cv_splits

    splits = cv_splits(dataset, folds, seed=0)
    start = time.perf_counter()
    for layer in range(acts.shape[0]):
        X = acts[layer].double().numpy()
        for train, _ in [*splits, (np.arange(len(X)), None)]:
            probe = LinearDiscriminantAnalysis() if method == "sklearn-lda" else make_probe(method)
            probe.fit(X[train], dataset.labels[train])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="statements (from cities, neg_cities, larger_than)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from interp.models import load_model
    from probes.collect import collect_activations
    from probes.datasets import load_dataset

    model = load_model(args.model)
    data = load_dataset("cities+neg_cities+larger_than")
    rng = np.random.default_rng(0)
    data = data.subset(np.sort(rng.choice(len(data), size=min(args.n, len(data)), replace=False)))
    n_tokens = sum(len(x) for x in model.tokenizer(data.texts, add_special_tokens=False)["input_ids"])

    forward_s, _ = _time(lambda: bare_forward(model, data.texts, args.batch_size))
    collect_s, acts = _time(lambda: collect_activations(model, data.texts, batch_size=args.batch_size))
    rows = {"statements": len(data), "tokens": n_tokens, "layers": model.cfg.n_layers, "threads": args.threads,
            "bare_forward_s": round(forward_s, 2), "collect_s": round(collect_s, 2),
            "collect_over_forward": round(collect_s / forward_s, 2),
            "collect_tokens_per_s": round(n_tokens / collect_s, 1)}
    lda_s = fit_all(acts, data, "sklearn-lda")
    rows["fit_sklearn_lda_s"] = round(lda_s, 2)
    for method in ("logistic", "mass-mean", "mass-mean-iid"):
        seconds = fit_all(acts, data, method)
        rows[f"fit_{method}_s"] = round(seconds, 2)
        if method == "mass-mean-iid":
            rows["mass_mean_iid_over_lda"] = round(seconds / lda_s, 2)
    rows["fits_per_method"] = model.cfg.n_layers * 6
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(map(len, rows))
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows.items()))


if __name__ == "__main__":
    main()

"""Fact-editing benchmark on the default model, in one run:

- time to compute the key statistics of one layer (a fresh cache, so nothing is reused),
- ROME: time per edit with statistics cached, and CounterFact scores over held-out cases
  (each case edited alone, scored, undone),
- MEMIT: time for 10 / 50 / 100 edits at once, and the scores of each batch.

Cases are the built-in facts the model answers correctly; ROME uses the held-out "test" split,
MEMIT batches draw test cases first, then dev cases. Prints a table and, with --json, one JSON object.

    .venv/bin/python benchmarks/editing.py [--rome-cases 40] [--memit-sizes 10,50,100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rome-cases", type=int, default=40, help="0: skip ROME")
    parser.add_argument("--memit-sizes", default="10,50,100")
    parser.add_argument("--stats-tokens", type=int, default=200_000)
    parser.add_argument("--generations", type=int, default=1, help="generations per case for fluency")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-stats-timing", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from circuits.editing import (
        MEMITSettings, ROMESettings, edit_and_evaluate, evaluate_each, memit_layers, rome_layer, second_moments,
    )
    from circuits.facts import load_facts
    from interp.models import load_model

    model = load_model(args.model)
    report: dict = {"model": args.model, "threads": args.threads, "stats_tokens": args.stats_tokens}
    layer, layers = rome_layer(model), memit_layers(model)
    report.update(rome_layer=layer, memit_layers=layers)

    if not args.skip_stats_timing:  # statistics of one layer from scratch, in a throwaway cache
        old = os.environ.get("INTERP_CACHE")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["INTERP_CACHE"] = tmp
            from interp.corpus import load_corpus

            load_corpus()  # building the corpus file is not part of the statistics time
            start = time.perf_counter()
            second_moments(model, [layer], n_tokens=args.stats_tokens)
            report["stats_seconds_one_layer"] = time.perf_counter() - start
            _progress(report, "stats_seconds_one_layer")
        if old is None:
            os.environ.pop("INTERP_CACHE")
        else:
            os.environ["INTERP_CACHE"] = old
    second_moments(model, sorted({layer, *layers}), n_tokens=args.stats_tokens)  # cached for the edits

    test = load_facts(verified_only=True, model=model, split="test")
    dev = load_facts(verified_only=True, model=model, split="dev")
    report["verified_cases"] = {"test": len(test), "dev": len(dev)}

    if args.rome_cases:
        rome_settings = ROMESettings(stats_tokens=args.stats_tokens)
        result = evaluate_each(model, test[:args.rome_cases], "rome", layer, args.generations, settings=rome_settings)
        per_edit = result.cases["edit_seconds"].dropna().tolist()
        report["rome"] = {"cases": len(per_edit), "seconds_per_edit": statistics.mean(per_edit),
                          "seconds_per_edit_stdev": statistics.pstdev(per_edit), "scores": _scores(result)}
        _progress(report, "rome")

    pool = test + dev
    report["memit"] = {}
    for size in [int(s) for s in args.memit_sizes.split(",")]:
        cases = pool[:size]
        result, handle = edit_and_evaluate(model, cases, "memit", layers, generations=args.generations,
                                           settings=MEMITSettings(stats_tokens=args.stats_tokens))
        handle.undo()
        report["memit"][str(len(cases))] = {"seconds": result.edit_seconds, "scores": _scores(result)}
        _progress(report, "memit")

    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        _table(report)


def _progress(report: dict, key: str) -> None:
    """Each finished stage as one JSON line on stderr, so a long run can be followed."""
    print(json.dumps({key: report[key]}), file=sys.stderr, flush=True)


def _scores(result) -> dict:
    table = result.scores()
    keep = ["efficacy", "paraphrase", "neighborhood", "score", "efficacy_magnitude", "paraphrase_magnitude",
            "neighborhood_magnitude", "fluency"]
    return {phase: {k: round(float(row[k]), 4) for k in keep if k in row} for phase, row in table.iterrows()}


def _table(report: dict) -> None:
    print(f"model {report['model']} ({report['threads']} thread(s)); ROME layer {report['rome_layer']}, "
          f"MEMIT layers {report['memit_layers']}; verified cases {report['verified_cases']}")
    if "stats_seconds_one_layer" in report:
        print(f"key statistics, one layer, {report['stats_tokens']} tokens: {report['stats_seconds_one_layer']:.1f} s")
    rows = []
    if "rome" in report:
        rome = report["rome"]
        print(f"ROME: {rome['seconds_per_edit']:.1f} +- {rome['seconds_per_edit_stdev']:.1f} s per edit (statistics cached)")
        rows.append(("ROME", rome["cases"], rome["seconds_per_edit"], rome["scores"]))
    rows += [(f"MEMIT x{n}", int(n), r["seconds"], r["scores"]) for n, r in report["memit"].items()]
    print(f"{'method':<11}{'cases':>6}{'edit s':>9}  phase {'eff':>6}{'para':>6}{'neigh':>6}{'score':>6}{'fluency':>8}")
    for name, n, seconds, scores in rows:
        for phase, s in scores.items():
            print(f"{name:<11}{n:>6}{seconds:>9.1f}  {phase:<5} {s['efficacy']:>6.3f}{s['paraphrase']:>6.3f}"
                  f"{s['neighborhood']:>6.3f}{s['score']:>6.3f}{s.get('fluency', float('nan')):>8.3f}")
    print("(ROME 'edit s' is per edit; MEMIT's is for the whole batch)")


if __name__ == "__main__":
    main()

"""Attribution graphs: `interp graph` vs the naive way (one autograd backward per target node through the
frozen TransformerLens model, the way `circuits.graph.naive` does it), same graph, in one run.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/graph.py [--model smollm2-135m] [--prompt P]
        [--transcoders DIR] [--naive-targets 150] [--threads 2]

Without --transcoders it writes randomly initialised TopK transcoders of the default width (expansion 8,
k 32) at every layer: untrained, so their features mean nothing, but the graph has the size a trained set
gives (k active latents per layer and position), which is what the timing depends on. The naive way
needs one backward per target (every active feature and every logit); it runs on --naive-targets of them
spread evenly (plus every logit), its rows are compared with ours, and its total time is extrapolated
from the mean time per backward. Prints a table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from timing import best_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    parser.add_argument("--transcoders", default=None, help="transcoder set (default: random, every layer)")
    parser.add_argument("--naive-targets", type=int, default=150, help="targets the naive way runs on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from circuits.graph import GraphConfig, graph
    from circuits.graph.build import attribution, load_set
    from circuits.graph.naive import NaiveAttribution
    from interp.models import load_model
    from interp.sae.sets import write_random_set

    model = load_model(args.model)
    if args.transcoders is None:
        with tempfile.TemporaryDirectory(prefix="graph-bench-") as tmp:
            tcs, _ = load_set(model, write_random_set(model, Path(tmp) / "set"))
    else:
        tcs, _ = load_set(model, args.transcoders)

    result = {}

    def run_graph():  # keeps the fastest run's graph, whose stage times are printed
        g = graph(model, args.prompt, tcs)
        if "graph" not in result or g.metadata["seconds"]["total"] < result["graph"].metadata["seconds"]["total"]:
            result["graph"] = g

    edge_times = []

    def run_edges():
        result["att"] = attribution(model, args.prompt, tcs, GraphConfig())
        edge_times.append(result["att"].seconds)

    ours_total = best_of(args.repeats, run_graph)
    best_of(args.repeats, run_edges)
    ours_edges = min(edge_times)
    g, att = result["graph"], result["att"]
    nd = att.nodes
    n_targets = att.n_selected + nd.n_logits

    began = time.perf_counter()
    naive = NaiveAttribution(model, att.frozen, nd)
    naive_forward = time.perf_counter() - began
    sample = torch.linspace(0, att.n_selected - 1, min(args.naive_targets, att.n_selected)).round().long().unique()
    worst = 0.0

    def compare(value, row_index):
        nonlocal worst
        row = naive.row(value)
        worst = max(worst, float((row - att.adjacency[row_index]).abs().max() / row.abs().max()))

    def naive_rows():
        for j in sample.tolist():
            compare(naive.feature_value(tcs, int(att.selected[j])), j)
        for k in range(nd.n_logits):
            compare(naive.logit_value(k), att.n_nodes - nd.n_logits + k)

    per_backward = best_of(args.repeats, naive_rows) / (len(sample) + nd.n_logits)
    naive_total = naive_forward + per_backward * n_targets

    out = {
        "model": args.model, "prompt": args.prompt, "tokens": int(att.frozen.n_pos), "layers": nd.n_layers,
        "transcoder_layers": len(tcs), "random_transcoders": args.transcoders is None,
        "d_sae": int(next(iter(tcs.values())).cfg.d_sae), "active_features": nd.n_features, "logits": nd.n_logits,
        "targets": n_targets, "threads": args.threads,
        "ours_graph_s": ours_total, "ours_edges_s": ours_edges, "graph_stages_s": g.metadata["seconds"],
        "naive_targets_run": int(len(sample) + nd.n_logits), "naive_s_per_target": per_backward,
        "naive_forward_s": naive_forward, "naive_total_s_extrapolated": naive_total,
        "max_rel_difference": worst,
        "ratio_edges": naive_total / ours_edges, "ratio_graph": naive_total / ours_total,
        "graph_nodes": len(g.nodes), "graph_links": len(g.links), "scores": g.scores,
    }
    print(f"{args.model}, {out['tokens']} tokens, transcoders at {len(tcs)} of {nd.n_layers} layers "
          f"(d_sae {out['d_sae']}{', random init' if out['random_transcoders'] else ''}), {args.threads} threads")
    print(f"targets: {nd.n_features} active features + {nd.n_logits} logits")
    print(f"interp graph, whole command after loading:  {ours_total:8.1f} s  (stages: "
          + ", ".join(f"{k} {v:.1f}" for k, v in g.metadata["seconds"].items()) + ")")
    print(f"interp edges (transposed passes):           {ours_edges:8.1f} s")
    print(f"naive, one backward per target (extrapolated from {out['naive_targets_run']}): {naive_total:8.1f} s "
          f"({per_backward * 1000:.0f} ms per target)")
    print(f"max |naive - ours| / max |row| over the compared rows: {worst:.2e}")
    print(f"speed-up: {out['ratio_edges']:.0f}x on the edges, {out['ratio_graph']:.0f}x on the whole graph")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""`interp outliers [PROMPT ...] [--corpus PATH]`: massive activations, attention sinks, value drains,
residual peaks, secondary sinks and the zero/mean intervention; `--checkpoints` compares models and
fits the massive activations' course over training; `--by-domain` finds active and dormant heads."""

from __future__ import annotations

from interp.cli.types import int_range, nonneg_int, positive_float, positive_int, probability


def register(sub, common) -> None:
    p = sub.add_parser("outliers", parents=[common],
                       help="massive activations, attention sinks, value drains, norm peaks, secondary sinks")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="analyse these prompts instead of a corpus")
    p.add_argument("--corpus", default=None, help="text/JSONL/Parquet file or folder (default: built-in corpus)")
    p.add_argument("--tokens", type=positive_int, default=2048, help="corpus tokens to analyse (default: 2048)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seq-len", type=int_range(2), default=128)
    p.add_argument("--top-k", type=positive_int, default=10, help="largest magnitudes kept per layer")
    p.add_argument("--abs-threshold", type=positive_float, default=100.0, help="massive: |h| above this (default: 100)")
    p.add_argument("--ratio-threshold", type=positive_float, default=1000.0,
                   help="massive: |h| >= this x the median |h| of its hidden state (default: 1000)")
    p.add_argument("--sink-threshold", type=probability, default=0.3, help="sink head: attention received > this")
    p.add_argument("--cos-threshold", type=probability, default=0.9,
                   help="secondary sink: |cos| with the first token's hidden state > this")
    p.add_argument("--secondary-layers", default=None, help="hidden states to scan, e.g. '4-20' (default: 1..L-1)")
    p.add_argument("--ppl-tokens", type=nonneg_int, default=1024,
                   help="corpus tokens for the zero/mean perplexity test; 0 skips it (default: 1024)")
    p.add_argument("--checkpoints", nargs="+", default=None, metavar="SPEC",
                   help="compare these models, or every checkpoint folder in one folder (ignores --model)")
    p.add_argument("--fit", choices=["top", "ratio"], default="top",
                   help="--checkpoints: fit the training curve to each layer's largest |h| (default) or to its "
                        "ratio to the median (the Hidden Dynamics paper's quantity)")
    p.add_argument("--by-domain", action="store_true",
                   help="active/dormant heads: sink rate per head on prose, code, lists and numbers (--tokens "
                        "each), or on the domains of a --corpus JSONL whose records carry 'text' and 'domain'")
    p.add_argument("--dormant-rate", type=probability, default=0.5,
                   help="--by-domain: a head is dormant when this share of queries sink (default: 0.5)")
    p.set_defaults(run=run)


def run(args):
    from interp.errors import InterpError

    if args.by_domain:
        return [by_domain(args)]
    thresholds = dict(abs_threshold=args.abs_threshold, ratio_threshold=args.ratio_threshold, top_k=args.top_k,
                      sink_threshold=args.sink_threshold, cos_threshold=args.cos_threshold)
    sizes = dict(max_tokens=args.tokens, batch_size=args.batch_size, seq_len=args.seq_len, ppl_tokens=args.ppl_tokens)
    if args.checkpoints:
        from interp.outliers.checkpoints import across_checkpoints
        from interp.outliers.dynamics import massive_dynamics

        if args.prompts or args.secondary_layers:
            raise InterpError("--checkpoints runs over the corpus; drop the prompts and --secondary-layers")
        result = across_checkpoints(args.checkpoints, args.corpus, device=args.device, dtype=args.dtype, **sizes,
                                    **thresholds)
        return [result, massive_dynamics(result, args.fit)]

    from interp.cli import load_model_for
    from interp.hooks import parse_layers
    from interp.outliers import analyze_outliers

    model = load_model_for(args)
    layers = parse_layers(model, args.secondary_layers) if args.secondary_layers else None
    analysis = analyze_outliers(model, args.prompts or None, args.corpus, secondary_layers=layers,
                                **sizes, **thresholds)
    return analysis.results()


def by_domain(args):
    """`--by-domain`: the corpora are checked before the model loads."""
    from interp.cli import load_model_for
    from interp.corpus_domains import labelled_corpora
    from interp.errors import InterpError
    from interp.outliers.dormant import domain_sinks

    if args.prompts or args.checkpoints:
        raise InterpError("--by-domain runs over domain samples; drop the prompts and --checkpoints")
    corpora = labelled_corpora(args.corpus) if args.corpus else None
    model = load_model_for(args)
    return domain_sinks(model, corpora, max_tokens=args.tokens, batch_size=args.batch_size, seq_len=args.seq_len,
                        threshold=args.sink_threshold, dormant_rate=args.dormant_rate)

"""`interp trace`: causal tracing of one prompt (Meng et al. 2022), or the average indirect effect over a
fact set (`--facts builtin --limit N`); `--knockout` adds attention knockout."""

from interp.cli.types import nonneg_int, positive_float, positive_int

KINDS = ("hidden", "mlp", "attn", "all")


def register(sub, common) -> None:
    p = sub.add_parser("trace", parents=[common], help="causal tracing: where the model recalls a fact")
    p.add_argument("prompt", nargs="?", help="prompt ending where the answer comes (omit with --facts)")
    p.add_argument("--subject", help="subject text inside the prompt, corrupted with noise")
    p.add_argument("--target", default=None, help="answer to score (default: the model's top-1; several tokens "
                                                  "are scored by the first)")
    p.add_argument("--kind", default="all", choices=KINDS, help="what to restore (default: all three)")
    p.add_argument("--samples", type=positive_int, default=10, help="noisy copies (default 10)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=positive_float, default=3.0,
                       help="noise std as a multiple of the subject-embedding std of the built-in facts (default 3)")
    noise.add_argument("--noise-std", type=positive_float, default=None, help="absolute noise std")
    p.add_argument("--window", type=positive_int, default=10, help="layers restored together for mlp/attn (default 10)")
    p.add_argument("--seed", type=nonneg_int, default=1, help="seed of the noise draw (default 1)")
    p.add_argument("--facts", default=None, help="'builtin' or a CounterFact .json/.jsonl file: average "
                                                 "indirect effect over the facts the model answers correctly")
    p.add_argument("--limit", type=positive_int, default=50, help="facts to trace with --facts (default 50)")
    p.add_argument("--knockout", action="store_true", help="also block attention from the last token to the "
                                                           "subject, per layer window")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError

    kinds = "all" if args.kind == "all" else (args.kind,)
    common = dict(kinds=kinds, samples=args.samples, noise=args.noise, noise_std=args.noise_std,
                  window=args.window, seed=args.seed)
    if args.facts is not None:
        if args.prompt is not None or args.knockout:
            raise InterpError("--facts traces the fact set; drop the prompt and --knockout, or drop --facts")
        from circuits.facts import read_facts
        from circuits.trace_study import trace_facts

        if args.facts != "builtin":
            read_facts(args.facts)  # a bad file fails here, before the model loads
        return trace_facts(load_model_for(args), args.facts, limit=args.limit, **common)
    if args.prompt is None or not args.subject:
        raise InterpError("pass a prompt and --subject (e.g. interp trace \"The Eiffel Tower is in\" "
                          "--subject \"Eiffel Tower\"), or --facts builtin")
    from circuits.tracing import trace

    model = load_model_for(args)
    result = trace(model, args.prompt, args.subject, target=args.target, **common)
    if not args.knockout:
        return result
    from circuits.knockout import knockout

    return [result, knockout(model, args.prompt, args.subject, target=args.target)]

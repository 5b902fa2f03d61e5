"""`interp edit`: rewrite facts with ROME, MEMIT or PMET and score them before and after."""

from interp.cli.outputs import NEW_DIR, declare_outputs
from interp.cli.types import nonneg_int, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("edit", parents=[common], help="edit facts (ROME/MEMIT/PMET) with CounterFact-style scores")
    p.add_argument("--subject", help="the entity whose fact changes, e.g. 'The Eiffel Tower'")
    p.add_argument("--prompt", help="template with {} for the subject, e.g. '{} is located in the city of'")
    p.add_argument("--target", help="the new answer, e.g. ' Rome'")
    p.add_argument("--true-target", default=None, help="the old answer (default: the model's top-1 token)")
    p.add_argument("--requests", help="CounterFact-format .json/.jsonl file of edits to apply together")
    p.add_argument("--method", default="rome", choices=["rome", "memit", "pmet"])
    p.add_argument("--layers", default=None, help="edit layer(s): '5', '3-7' or '3,5' (default: from causal tracing)")
    p.add_argument("--eval", default=None, help="CounterFact-format file of cases to score (default: the edits)")
    p.add_argument("--generations", type=nonneg_int, default=1, help="generation prompts per case for fluency (0: none)")
    p.add_argument("--gen-tokens", type=positive_int, default=50, help="tokens per generation")
    p.add_argument("--corpus", default=None, help="corpus for the key statistics (default: built-in)")
    p.add_argument("--stats-tokens", type=positive_int, default=None, help="corpus tokens for the key statistics")
    p.add_argument("--save", default=None, help="save the edited model as a Hugging Face folder here")
    p.set_defaults(run=run)
    declare_outputs(p, save=NEW_DIR)


def _requests(args):
    from interp.errors import InterpError

    from circuits.editing import load_records, make_request

    single = [args.subject, args.prompt, args.target]
    if args.requests:
        if any(x is not None for x in single):
            raise InterpError("give either --requests FILE or --subject/--prompt/--target, not both")
        return load_records(args.requests)
    if any(x is None for x in single):
        missing = [f"--{n}" for n, x in zip(("subject", "prompt", "target"), single) if x is None]
        raise InterpError(f"missing {', '.join(missing)}; or pass --requests FILE")
    return [make_request(args.prompt, args.subject, args.target, args.true_target)]


def run(args):
    from interp.cli import load_model_for

    from circuits.editing import edit_and_evaluate, load_records
    from circuits.editing.run import settings_for

    requests = _requests(args)
    eval_records = load_records(args.eval) if args.eval else None
    settings = settings_for(args.method, args.corpus, args.stats_tokens)
    model = load_model_for(args)
    result, _ = edit_and_evaluate(
        model, requests, args.method, args.layers, eval_records, args.generations, args.gen_tokens,
        save=args.save, settings=settings)
    return result

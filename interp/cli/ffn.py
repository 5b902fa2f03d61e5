"""`interp ffn PROMPT`: the MLP sub-updates per layer in vocabulary space (Geva et al. 2022); with
`--workspace`, the whole-model neuron table is saved beside the result once, for the dashboard's search."""

from interp.cli.types import integer, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("ffn", parents=[common], help="MLP sub-updates in vocabulary space (Geva et al. 2022)")
    p.add_argument("prompt", help="text whose next-token prediction to follow, e.g. \"The Eiffel Tower is located in the city of\"")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--layer", type=integer, default=None, help="one layer (-1 the last)")
    where.add_argument("--layers", default="all", help="'all' (default), '5', '3,7' or '20-29'")
    p.add_argument("--top", type=positive_int, default=10, help="sub-updates listed per layer (default 10)")
    p.add_argument("--tokens", type=positive_int, default=8, help="top and bottom tokens per value vector (default 8)")
    p.add_argument("--position", type=integer, default=-1, help="token position (default -1, the last)")
    p.add_argument("--target", default=None, help="answer to follow (default: the model's top-1 at the position)")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.ffn import ffn_updates, neuron_table
    from interp.ffn.table import saved_table
    from interp.hooks import parse_layers

    model = load_model_for(args)
    layers = parse_layers(model, str(args.layer) if args.layer is not None else args.layers)
    result = ffn_updates(model, args.prompt, layers=layers, top=args.top, position=args.position,
                         target=args.target, n_tokens=args.tokens)
    if not args.workspace or saved_table(args.workspace, result.weights):
        return result
    return [result, neuron_table(model)]

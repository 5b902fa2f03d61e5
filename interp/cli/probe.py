"""`interp probe --dataset NAME|FILE`: linear probes per layer, generalisation, and steering with them."""

from interp.cli.types import finite_float, int_range, nonneg_int, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("probe", parents=[common], help="linear probes per layer (+ generalisation and steering)")
    p.add_argument("--dataset", required=True, help="built-in name (cities, neg_cities, larger_than, numbers, "
                   "neg_larger_than, smaller_than, sentiment, neg_sentiment), a .csv/.jsonl with text,label, "
                   "or several joined with + (cities+neg_cities)")
    p.add_argument("--layers", default="all", help="'all', '5', '3,7' or '4-8' (default: all)")
    p.add_argument("--method", default=None, help="comma list of logistic, mass-mean, mass-mean-iid, ridge "
                   "(default: logistic,mass-mean; ridge for continuous labels)")
    p.add_argument("--position", default="last", help="last, mean, mark (the row's 'mark' word) or a token index")
    p.add_argument("--test", default="", help="comma list of datasets to test the probes on (e.g. neg_cities)")
    p.add_argument("--folds", type=int_range(2), default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--steer", action="store_true",
                   help="also add/subtract/ablate the probe direction in a few-shot True/False prompt")
    p.add_argument("--steer-layers", default=None,
                   help="layers to intervene at (default: the best layer of the steering method)")
    p.add_argument("--steer-method", default="mass-mean", help="probe whose direction steers (default: mass-mean)")
    p.add_argument("--alpha", type=finite_float, default=1.0, help="multiple of the class-mean gap to add (default: 1)")
    p.add_argument("--steer-n", type=int_range(2), default=60, help="held-out statements to judge (default: 60)")
    p.add_argument("--answers", default=" True, False", help="the two answers, comma separated (default: ' True, False')")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.hooks import parse_layers
    from probes.collect import parse_position
    from probes.datasets import load_dataset
    from probes.steering import check_steer, steer
    from probes.sweep import check_methods, probe_layers

    dataset = load_dataset(args.dataset)
    tests = [load_dataset(name.strip()) for name in args.test.split(",") if name.strip()]
    method = args.method or ("logistic,mass-mean" if dataset.binary else "ridge")
    methods = check_methods([m.strip() for m in method.split(",") if m.strip()], dataset)
    position = parse_position(args.position)
    model = load_model_for(args)
    layers = parse_layers(model, args.layers)
    steer_layers = parse_layers(model, args.steer_layers) if args.steer and args.steer_layers else None
    answers = args.answers.split(",")
    if args.steer:  # before the sweep, which takes the time
        check_steer(model, dataset, args.steer_method, args.alpha, args.steer_n, answers=answers, seed=args.seed)
    result = probe_layers(model, dataset, layers, methods, position, args.folds, tests, args.batch_size,
                          args.workspace, args.seed)
    if not args.steer:
        return result
    if steer_layers is None:
        steer_layers = [result.best_layer(args.steer_method)] if args.steer_method in methods else layers[:1]
    steered = steer(model, dataset, steer_layers, args.steer_method, args.alpha, args.steer_n,
                    answers=answers, seed=args.seed, workspace=args.workspace)
    return [result, steered]

"""`interp probe --dataset NAME|FILE`: linear probes per layer, generalisation, and steering with them;
`--trajectory` follows each statement across the layers and fits a single-pass detector on that;
`--checkpoints` tracks probe accuracy over training."""

from interp.cli.types import finite_float, float_range, int_range, nonneg_int, positive_float, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("probe", parents=[common], help="linear probes per layer (+ generalisation and steering)")
    p.add_argument("--dataset", required=True, help="built-in name (cities, neg_cities, larger_than, numbers, "
                   "neg_larger_than, smaller_than, sentiment, neg_sentiment), a .csv/.jsonl with text,label, "
                   "or several joined with + (cities+neg_cities)")
    p.add_argument("--layers", default="all", help="'all', '5', '3,7' or '4-8' (default: all)")
    p.add_argument("--method", default=None, help="comma list of logistic, mass-mean, mass-mean-iid, ridge "
                   "(default: logistic,mass-mean; ridge for continuous labels; --trajectory: mass-mean,mass-mean-iid)")
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
    p.add_argument("--trajectory", action="store_true",
                   help="per statement: alignment to the true/false class means at each layer and drift between "
                        "layers; a logistic detector on them vs the best single-layer probe on a held-out split")
    p.add_argument("--holdout", type=float_range(0.0, 0.5, low_open=True), default=0.25,
                   help="--trajectory: share of the groups held out (default: 0.25)")
    p.add_argument("--no-center", action="store_true",
                   help="--trajectory: take alignments of the raw states (default: minus the training mean)")
    p.add_argument("--C", type=positive_float, default=1.0, help="--trajectory: detector's inverse L2 strength")
    p.add_argument("--checkpoints", nargs="+", default=None, metavar="DIR",
                   help="probe accuracy per layer at every checkpoint in this folder (or these model specs; "
                        "ignores --model)")
    p.set_defaults(run=run)


def check_modes(args) -> None:
    """Refuse options that do not combine, before any data or model is read."""
    from interp.errors import InterpError

    if args.trajectory and args.checkpoints:
        raise InterpError("--trajectory and --checkpoints are separate analyses; run them one at a time")
    mode = "--trajectory" if args.trajectory else "--checkpoints" if args.checkpoints else None
    if mode and args.steer:
        raise InterpError(f"{mode} does not steer; drop --steer (run it without {mode})")
    if mode and args.test:
        raise InterpError(f"{mode} scores on its own held-out rows; drop --test")
    only = [flag for flag, changed in (("--holdout", args.holdout != 0.25), ("--no-center", args.no_center),
                                       ("--C", args.C != 1.0)) if changed]
    if only and not args.trajectory:
        raise InterpError(f"{only[0]} applies to --trajectory only; add --trajectory or drop it")


def run(args):
    from interp.cli import load_model_for
    from interp.hooks import parse_layers
    from probes.collect import parse_position
    from probes.datasets import load_dataset
    from probes.steering import check_steer, steer
    from probes.sweep import check_methods, probe_layers

    check_modes(args)
    dataset = load_dataset(args.dataset)
    if args.trajectory or args.checkpoints:
        return _trajectory_or_checkpoints(args, dataset)
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


def _trajectory_or_checkpoints(args, dataset):
    """`--trajectory` or `--checkpoints`: checked (split, methods, folder) before the model loads."""
    from interp.cli import load_model_for
    from interp.hooks import parse_layers
    from probes.collect import parse_position
    from probes.trajectory import METHODS

    position = parse_position(args.position)
    chosen = args.method or ("logistic,mass-mean" if args.checkpoints else ",".join(METHODS))
    methods = [m.strip() for m in chosen.split(",") if m.strip()]
    if args.checkpoints:
        from probes.checkpoints import probe_checkpoints

        return probe_checkpoints(args.checkpoints, dataset, args.layers, methods, position, args.folds, args.seed,
                                 args.batch_size, args.device, args.dtype)
    from probes.trajectory import TrajectoryConfig, check_trajectory, probe_trajectory

    config = TrajectoryConfig(holdout=args.holdout, folds=args.folds, seed=args.seed, center=not args.no_center,
                              C=args.C)
    methods = check_trajectory(dataset, config, methods)
    model = load_model_for(args)
    return probe_trajectory(model, dataset, parse_layers(model, args.layers), config, methods, position,
                            args.batch_size, args.workspace)

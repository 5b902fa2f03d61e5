"""`interp patch`: activation patching from a clean into a corrupted prompt of equal length, with
attribution patching beside it."""


def register(sub, common) -> None:
    p = sub.add_parser("patch", parents=[common], help="activation + attribution patching, clean -> corrupted")
    p.add_argument("--clean", required=True, help="prompt whose activations are patched in")
    p.add_argument("--corrupt", required=True, help="prompt of the same token length that receives them")
    p.add_argument("--target", default=None, help="answer (default: the clean run's top-1)")
    p.add_argument("--foil", default=None, help="token the answer competes with (default: the corrupted "
                                                "run's top-1 other than the answer)")
    p.add_argument("--hooks", default="resid,attn,mlp,heads",
                   help="comma list of resid, attn, mlp, heads (default: all)")
    p.set_defaults(run=run)


def run(args):
    from circuits.patching import patch
    from interp.cli import load_model_for

    return patch(load_model_for(args), args.clean, args.corrupt, target=args.target, foil=args.foil,
                 sites=args.hooks)

"""`interp lens PROMPT`: logit lens per layer (final norm applied) and direct logit attribution."""

from interp.cli.types import positive_int


def register(sub, common) -> None:
    p = sub.add_parser("lens", parents=[common], help="logit lens per layer + direct logit attribution")
    p.add_argument("prompt")
    p.add_argument("--target", default=None, help="answer to follow (default: the model's top-1)")
    p.add_argument("--top", type=positive_int, default=5, help="top tokens per layer")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.lens import logit_lens

    return logit_lens(load_model_for(args), args.prompt, target=args.target, k=args.top)

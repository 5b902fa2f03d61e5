"""`interp info`: model summary; `--hooks` lists every hook name."""


def register(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="model summary (layers, widths, hooks)")
    p.add_argument("--hooks", action="store_true", help="list every hook name")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.info import model_info

    return model_info(load_model_for(args), hooks=args.hooks)

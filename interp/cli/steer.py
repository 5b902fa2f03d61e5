"""`interp steer PROMPT --vector SPEC --layer L`: add a vector during generation, per coefficient, beside a
random direction of the same norm, with the source's behaviour measure, side effects and fluency."""

from __future__ import annotations

import argparse

from interp.cli.types import finite_float, integer, nonneg_int, positive_int


def coef_list(text: str) -> list[float]:
    """'0,2,4,8' -> [0.0, 2.0, 4.0, 8.0]; every item a finite number."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas such as 0,2,4,8, got {text!r}")
    return [finite_float(item) for item in items]


def register(sub, common) -> None:
    p = sub.add_parser("steer", parents=[common], help="steer generation with a vector; dose-response with a control")
    p.add_argument("prompt", help="the prompt to continue")
    p.add_argument("--vector", required=True, metavar="SPEC",
                   help="dataset:NAME|FILE (mean difference of the classes), contrast:POS_FILE,NEG_FILE, "
                        "probe:DIR[:METHOD] (a saved probe sweep), feature:SAE_DIR:INDEX, file:PATH (--save-vector's), "
                        "edit:DIR (a saved ROME edit)")
    p.add_argument("--layer", type=integer, default=None,
                   help="the layer whose residual the vector is read at and added to (dataset, contrast, probe; "
                        "picks the member of an SAE set)")
    p.add_argument("--hook", default=None, help="add at this hook instead (default: blocks.L.hook_resid_post, or "
                   "the hook the source carries: an SAE's hook, a transcoder's blocks.L.hook_mlp_out)")
    p.add_argument("--coef", type=coef_list, default=[0.0, 2.0, 4.0, 8.0],
                   help="coefficients, comma separated (default: 0,2,4,8)")
    p.add_argument("--positions", choices=("all", "last", "prompt"), default="all",
                   help="all: every position; prompt: the prompt's only; last: the last prompt token and every "
                        "generated one (default: all)")
    p.add_argument("--max-new-tokens", type=positive_int, default=24, help="tokens to generate (default: 24)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="generations per coefficient: 1 is greedy, more are seeded top-5 samples (default: 1)")
    p.add_argument("--neutral", type=positive_int, default=8,
                   help="neutral corpus prompts for the KL side effect (default: 8)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the control direction and the samples")
    p.add_argument("--save-vector", default=None, metavar="FILE",
                   help="write the vector added at coefficient 1 (.safetensors, key 'vector', metadata hook_name)")
    p.set_defaults(run=run)


def run(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.steering import parse_vector_spec, resolve_vector, save_vector, steer
    from interp.steering.vectors import check_vector_path

    if not args.prompt.strip():
        raise InterpError("the prompt is empty; pass some text")
    spec = parse_vector_spec(args.vector, args.layer)  # datasets, SAEs and files are read before the model
    if args.save_vector is not None:
        check_vector_path(args.save_vector)
    model = load_model_for(args)
    vector = resolve_vector(model, spec, args.layer, args.hook, args.workspace, args.seed)
    if args.save_vector is not None:
        save_vector(vector, args.save_vector)
    return steer(model, vector, coefs=args.coef, prompt=args.prompt, positions=args.positions,
                 max_new_tokens=args.max_new_tokens, samples=args.samples, seed=args.seed, neutral=args.neutral,
                 workspace=args.workspace)

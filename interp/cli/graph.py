"""`interp graph PROMPT --transcoders DIR`: the attribution graph of a prompt over a transcoder set
(circuit-tracer's graph-file schema with `--json`), optionally checked by interventions (`--check N`)."""

from __future__ import annotations

from interp.cli.types import float_range, nonneg_int, positive_int

share = float_range(0.0, 1.0, low_open=True)  # a share of total influence: (0, 1]


def register(sub, common) -> None:
    p = sub.add_parser("graph", parents=[common], help="attribution graph of a prompt over transcoder features")
    p.add_argument("prompt", help="the prompt; the graph explains its next-token logits")
    p.add_argument("--transcoders", required=True, metavar="DIR",
                   help="transcoder set (folder of transcoder folders, as `interp sae train --layers` writes)")
    p.add_argument("--target", default=None, help="attribute this token's logit alone, e.g. ' Paris' "
                   "(default: the most likely logits covering 0.95 probability, at most 10)")
    p.add_argument("--node-threshold", type=share, default=0.8, help="share of total influence kept in nodes")
    p.add_argument("--edge-threshold", type=share, default=0.98, help="share of total influence kept in links")
    p.add_argument("--max-feature-nodes", type=positive_int, default=None,
                   help="attribute at most this many features, most influential first (default 12000: all "
                   "of a short prompt; the graph is dense, about 4 x (features)^2 bytes)")
    p.add_argument("--check", type=nonneg_int, default=0, metavar="N",
                   help="ablate and scale the N most influential features in the spliced model; report "
                   "observed beside predicted logit changes")
    p.add_argument("--frozen-check", action="store_true",
                   help="run the --check interventions with attention patterns and norm scales frozen")
    p.add_argument("--batch-size", type=positive_int, default=512, help="targets per transposed pass (memory vs speed)")
    p.set_defaults(run=run)


def run(args):
    from circuits.graph import GraphConfig, graph
    from circuits.graph.attribute import stderr_progress
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.sae.sets import transcoder_folders

    limit = {} if args.max_feature_nodes is None else {"max_feature_nodes": args.max_feature_nodes}
    config = GraphConfig(target=args.target, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                         batch_size=args.batch_size, check=args.check, frozen_check=args.frozen_check, **limit)
    if not args.prompt.strip():
        raise InterpError("the prompt is empty; pass some text")
    transcoder_folders(args.transcoders)  # the folder exists and holds transcoders: checked before loading
    return graph(load_model_for(args), args.prompt, args.transcoders, config, progress=stderr_progress)

"""`interp sae train|cache|eval|features|attribute`: sparse autoencoders and transcoders.

`train --layers SPEC` with `{l}` in the hooks trains one SAE per layer, and `--k 16,32` or
`--expansion 4,8` one per setting, all from the same model passes, into a set folder (`eval` takes it).

`train` also runs under `torchrun --nproc-per-node N -m interp sae train ...` (one process per share
of the corpus, gradients averaged with DistributedDataParallel); only process 0 prints.

`attribute` splits one activation of an attention-output SAE (`--hook blocks.L.attn.hook_z`) over heads
and source positions (Kissane et al. 2024).

`cache --hooks H1,H2 --tokens N --out DIR` writes a model's activations once; `train --from-cache DIR`
trains from them without loading the model (many SAEs from one pass of a big model).
"""

from __future__ import annotations

from interp.cli.outputs import Output, declare_outputs
from interp.cli.types import int_range, nonneg_float, nonneg_int, positive_float, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("sae", help="train, evaluate and analyse SAEs and transcoders")
    actions = p.add_subparsers(dest="sae_command", required=True, metavar="ACTION")

    t = actions.add_parser("train", parents=[common], help="train an SAE (or a transcoder with --hook-out)")
    t.add_argument("--hook", required=True, help="input hook, e.g. blocks.15.hook_resid_post; "
                   "with --layers a template such as 'blocks.{l}.ln2.hook_normalized'")
    t.add_argument("--hook-out", default=None, help="transcoder target hook, e.g. blocks.15.hook_mlp_out "
                   "(then --hook is blocks.15.ln2.hook_normalized); with --layers 'blocks.{l}.hook_mlp_out'")
    t.add_argument("--layers", default=None, help="one SAE per layer, {l} in the hooks: 'all', '3,7,15' or '0-29' "
                   "(folders layer-00, ... under --out, one model pass for all)")
    t.add_argument("--arch", default="topk", choices=["relu", "topk", "batchtopk", "jumprelu"])
    t.add_argument("--k", type=_comma_list(positive_int), default=None,
                   help="active latents per token (topk, batchtopk; default 32); '16,32,64' trains one SAE per value")
    width = t.add_mutually_exclusive_group()
    width.add_argument("--width", type=positive_int, default=None, help="number of latents")
    width.add_argument("--expansion", type=_comma_list(positive_float), default=None,
                       help="latents per input dimension (default 8); '4,8' trains one SAE per value")
    t.add_argument("--tokens", type=positive_int, default=2_000_000, help="training tokens (default 2M)")
    t.add_argument("--corpus", default=None, help="text file, folder, .jsonl, .parquet (default: built-in)")
    t.add_argument("--out", required=True, help="folder for cfg.json + sae_weights.safetensors and checkpoints "
                   "(a set: one such folder per member + set.json)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--lr", type=positive_float, default=None, help="peak learning rate")
    t.add_argument("--batch-tokens", type=positive_int, default=None, help="tokens per optimizer step (all processes)")
    t.add_argument("--sparsity-coefficient", type=nonneg_float, default=None, help="L1 (relu) / L0 (jumprelu) coefficient")
    t.add_argument("--seq-len", type=int_range(2), default=None, help="tokens per sequence (default 128)")
    t.add_argument("--lm-batch-size", type=positive_int, default=None, help="sequences per model forward pass (default 16)")
    t.add_argument("--buffer-tokens", type=positive_int, default=None, help="mixing buffer per process (default 32768)")
    t.add_argument("--checkpoint-every", type=nonneg_int, default=None, help="tokens between checkpoints (0: none)")
    t.add_argument("--seed", type=nonneg_int, default=None)
    t.add_argument("--outlier-ratio", type=nonneg_float, default=None,
                   help="leave out tokens whose norm exceeds this x the median (massive activations; default 10, 0 keeps all)")
    t.add_argument("--dead-window-tokens", type=positive_int, default=None,
                   help="a latent silent for this many tokens is dead: AuxK trains it (topk, batchtopk; default 10000)")
    t.add_argument("--from-cache", default=None, metavar="DIR", help="read the activations from an `interp sae cache` "
                   "folder instead of running the model (it must match --model, --dtype, --corpus, --seq-len, "
                   "--lm-batch-size)")
    t.set_defaults(run=run_train)
    declare_outputs(t, out=Output("dir", unless="resume", why="to continue an interrupted run in it"))

    c = actions.add_parser("cache", parents=[common], help="write a model's activations at some hooks to disk, "
                           "for `train --from-cache`")
    c.add_argument("--hooks", required=True, help="comma-separated hooks, e.g. blocks.15.hook_resid_post or, with "
                   "--layers, templates such as 'blocks.{l}.ln2.hook_normalized,blocks.{l}.hook_mlp_out'")
    c.add_argument("--layers", default=None, help="with {l} in --hooks: 'all', '3,7,15' or '0-29'")
    c.add_argument("--tokens", type=positive_int, default=None, help="tokens to cache (required: as many as training "
                   "will read, its --tokens plus --buffer-tokens and the normalisation's 8192)")
    c.add_argument("--corpus", default=None, help="text file, folder, .jsonl, .parquet (default: built-in)")
    c.add_argument("--seq-len", type=int_range(2), default=128, help="tokens per sequence (default 128)")
    c.add_argument("--lm-batch-size", type=positive_int, default=16, help="sequences per model forward pass (default 16)")
    c.add_argument("--cache-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="stored dtype (bfloat16 halves the disk; training reads float32 either way)")
    c.add_argument("--out", required=True, help="cache folder")
    c.add_argument("--resume", action="store_true", help="continue an interrupted cache in --out")
    c.set_defaults(run=run_cache)
    declare_outputs(c, out=Output("dir", unless="resume", why="to continue an interrupted cache in it"))

    e = actions.add_parser("eval", parents=[common], help="L0, explained variance, CE loss score, dead latents")
    e.add_argument("dir", help="SAE folder (ours or sae-lens's), or a set folder from `train --layers` / a sweep: "
                   "every member from one clean pass, plus the replacement model (all members spliced in at once)")
    e.add_argument("--tokens", type=positive_int, default=16_384, help="held-out tokens to evaluate on")
    e.add_argument("--corpus", default=None, help="evaluation corpus (default: the training corpus, read backwards)")
    e.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass")
    e.add_argument("--hook", default=None, help="input hook, when cfg.json does not name it")
    e.add_argument("--hook-out", default=None, help="transcoder output hook, when cfg.json does not name it")
    e.set_defaults(run=run_eval)

    f = actions.add_parser("features", parents=[common], help="per-latent statistics and contexts for the dashboard")
    f.add_argument("dir", help="SAE folder")
    f.add_argument("--tokens", type=positive_int, default=131_072, help="tokens to collect statistics over")
    f.add_argument("--corpus", default=None, help="corpus (default: the training corpus, read backwards)")
    f.add_argument("--name", default=None, help="name of the feature set in the workspace (default: folder name)")
    f.add_argument("--top", type=positive_int, default=16, help="top activating contexts per latent")
    f.add_argument("--quantiles", type=nonneg_int, default=4, help="quantile groups per latent")
    f.add_argument("--per-quantile", type=nonneg_int, default=4, help="contexts per quantile group")
    f.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass")
    f.add_argument("--force", action="store_true", help="replace a feature set of the same name")
    f.set_defaults(run=run_features)
    declare_outputs(f, name=Output("dir", unless="force", why="to replace it", path=_feature_folder))

    a = actions.add_parser("attribute", parents=[common],
                           help="attention-output SAE: which heads and earlier tokens one feature activation reads from")
    a.add_argument("dir", help="SAE folder trained on blocks.L.attn.hook_z")
    a.add_argument("prompt")
    a.add_argument("--feature", type=nonneg_int, default=None, help="the SAE feature (latent index; required)")
    a.add_argument("--position", type=int_range(None), default=None,
                   help="destination token (negative counts from the end; default: where the feature is largest)")
    a.set_defaults(run=run_attribute)


def _feature_folder(args):
    """Where `sae features` writes its tables (None without --workspace, which `run_features` asks for)."""
    from interp.sae.features import feature_folder

    return feature_folder(args.workspace, args.dir, args.name) if args.workspace else None


def _comma_list(parse):
    """An argparse type: comma-separated values, each read by `parse`."""
    def parse_list(text: str) -> list:
        return [parse(part.strip()) for part in text.split(",")]

    parse_list.__name__ = f"list_of_{parse.__name__}"
    return parse_list


def run_train(args):
    import os
    import sys

    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.hooks import parse_layers
    from interp.sae import TrainConfig, distributed, layer_configs, sweep_configs, train, train_set

    ks, expansions = args.k or [], args.expansion or []
    fields = {"hook": args.hook, "hook_out": args.hook_out, "arch": args.arch, "width": args.width, "tokens": args.tokens,
              "corpus": args.corpus, "model": args.model, "device": args.device, "lr": args.lr,
              "batch_tokens": args.batch_tokens, "sparsity_coefficient": args.sparsity_coefficient,
              "seq_len": args.seq_len, "lm_batch_size": args.lm_batch_size, "buffer_tokens": args.buffer_tokens,
              "checkpoint_every": args.checkpoint_every, "seed": args.seed, "outlier_ratio": args.outlier_ratio,
              "dead_window_tokens": args.dead_window_tokens,
              "k": ks[0] if len(ks) == 1 else None, "expansion": expansions[0] if len(expansions) == 1 else None}
    fields = {k: v for k, v in fields.items() if v is not None}
    sweep = len(ks) > 1 or len(expansions) > 1
    if args.layers is not None and sweep:
        raise InterpError("--layers and a --k/--expansion list do not combine; give one value, or sweep one layer")
    if args.from_cache:
        fields["dtype"] = args.dtype
    d = distributed.setup(args.device)
    try:
        if not d.main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - process 0 alone reports
        fields["progress"] = d.main
        if sweep:
            members = sweep_configs(k=ks if len(ks) > 1 else (), expansion=expansions if len(expansions) > 1 else (),
                                    **fields)
            return train_set(_model_unless_cached(args), members, args.out, resume=args.resume, d=d,
                             cache=args.from_cache)
        if args.layers is None:
            cfg = TrainConfig(**fields)  # checked before the model loads
            return train(_model_unless_cached(args), cfg, args.out, resume=args.resume, d=d, cache=args.from_cache)
        layer_configs([0], **fields)  # the template and settings, checked before the model loads
        model = _model_unless_cached(args)
        members = layer_configs(parse_layers(model or _layer_count(args.model), args.layers), **fields)
        return train_set(model, members, args.out, resume=args.resume, d=d, cache=args.from_cache)
    finally:
        distributed.teardown(d)


def _model_unless_cached(args):
    """The model, or None when training reads a cache (which is checked against the model's files instead)."""
    from interp.cli import load_model_for

    return None if args.from_cache else load_model_for(args)


def _layer_count(spec: str):
    """A stand-in with `cfg.n_layers` read from the model's config.json, for layer lists without loading it."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from interp.models import resolve_spec

    return SimpleNamespace(cfg=SimpleNamespace(n_layers=AutoConfig.from_pretrained(resolve_spec(spec)).num_hidden_layers))


def run_cache(args):
    import torch

    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.hooks import parse_layers
    from interp.sae.cache import cache_activations
    from interp.sae.config import LAYER

    if args.tokens is None:
        raise InterpError("interp sae cache needs --tokens N: as many as the trainings will read")
    hooks = [h.strip() for h in args.hooks.split(",") if h.strip()]
    templated = any(LAYER in h for h in hooks)
    if templated != (args.layers is not None):
        raise InterpError(f"--layers goes with {LAYER} in --hooks (both or neither); e.g. --hooks "
                          f"'blocks.{LAYER}.hook_resid_post' --layers all")
    model = load_model_for(args)
    if templated:
        hooks = [h.replace(LAYER, str(layer)) for layer in parse_layers(model, args.layers) for h in hooks]
    return cache_activations(model, hooks, args.out, args.tokens, corpus=args.corpus, seq_len=args.seq_len,
                             batch_size=args.lm_batch_size, dtype=getattr(torch, args.cache_dtype))


def run_eval(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.sae import load_sae
    from interp.sae.evaluate import evaluate, evaluate_set
    from interp.sae.io import set_members

    if set_members(args.dir) is not None:
        if args.hook or args.hook_out:
            raise InterpError("--hook/--hook-out name one SAE's hooks; a set's members name their own in cfg.json")
        return evaluate_set(load_model_for(args), args.dir, tokens=args.tokens, corpus=args.corpus,
                            batch_size=args.batch_size, device=args.device)
    sae = load_sae(args.dir, device=args.device)
    return evaluate(load_model_for(args), sae, tokens=args.tokens, corpus=args.corpus, batch_size=args.batch_size,
                    hook=args.hook, hook_out=args.hook_out, path=args.dir)


def run_features(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.sae import load_sae
    from interp.sae.features import feature_statistics

    if not args.workspace:
        raise InterpError("interp sae features needs --workspace DIR to write the feature tables into")
    sae = load_sae(args.dir, device=args.device)
    return feature_statistics(load_model_for(args), sae, args.workspace, path=args.dir, name=args.name,
                              tokens=args.tokens, corpus=args.corpus, n_top=args.top, quantiles=args.quantiles,
                              per_quantile=args.per_quantile, batch_size=args.batch_size, force=args.force)


def run_attribute(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.sae import load_sae
    from interp.sae.attention import attn_layer, attribute_feature, check_feature

    if args.feature is None:  # checked here, after the output destinations, rather than by argparse
        raise InterpError("interp sae attribute needs --feature F, the latent to attribute")
    sae = load_sae(args.dir, device=args.device)
    attn_layer(sae)  # the hook and the feature are checked before the model loads
    check_feature(sae, args.feature)
    return attribute_feature(load_model_for(args), sae, args.prompt, args.feature, position=args.position, path=args.dir)

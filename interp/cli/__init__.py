"""The `interp` command: a thin layer over the Python API.

Each command lives in its own module with `register(subparsers, common)`, which adds a parser whose
`run(args)` returns a `Result` (or a list of them). This module prints it (text or `--json`), saves
it to `--workspace`, and turns bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from interp.errors import InterpError

COMMAND_MODULES = [
    "interp.cli.edit",
    "interp.cli.info",
    "interp.cli.lens",
    "interp.cli.outliers",
    "interp.cli.probe",
    "interp.cli.dashboard",
    "interp.cli.sae",
    "interp.cli.trace",
    "interp.cli.patch",
    "interp.cli.graph",
]


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    common.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--workspace", default=None, help="save the result into this workspace folder")
    common.add_argument("--html", default=None, metavar="FILE",
                        help="also write the result's figure as a standalone HTML file (opens offline)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Mechanistic interpretability toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def load_model_for(args):
    """The hooked model named by `--model`, loaded with progress on stderr."""
    from interp.models import load_model

    return load_model(args.model, device=args.device)


def _emit(results, args) -> None:
    results = results if isinstance(results, list) else [results]
    saved = []
    if getattr(args, "workspace", None):
        saved = [str(r.save(args.workspace)) for r in results]
        for path in saved:
            print(f"saved {path}", file=sys.stderr)
    if getattr(args, "html", None):
        for i, r in enumerate(results):
            path = args.html if len(results) == 1 else args.html.replace(".html", f"-{i}.html")
            r.figure().write_html(path, include_plotlyjs=True)
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        payload = results[0].to_dict() if len(results) == 1 else {"results": [r.to_dict() for r in results]}
        if saved:
            payload["saved"] = saved if len(saved) > 1 else saved[0]
        from interp.results import jsonable  # NaN and inf, also those a subclass's to_dict adds, as null

        json.dump(jsonable(payload), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print("\n\n".join(r.summary() for r in results))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("INTERP_THREADS", torch.get_num_threads())))
    try:
        _emit(args.run(args), args)
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; the traceback on request
        if os.environ.get("INTERP_DEBUG"):
            raise
        print(f"error: internal {type(e).__name__}: {e} (set INTERP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0

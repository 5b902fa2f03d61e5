"""The `interp` command: a thin layer over the Python API.

Each command lives in its own module with `register(subparsers, common)`, which adds a parser whose
`run(args)` returns a `Result` (or a list of them). This module prints it (text or `--json`), saves
it to `--workspace`, and turns bad input into one line on stderr with exit code 2: usage errors
(`Parser`), numbers out of range (`interp.cli.types`), output destinations that cannot be written
(`interp.cli.outputs`, checked before the command runs) and unreadable user files alike. A result that
was computed is printed even when saving it fails; only genuine bugs exit 1 ("error: internal ...").
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from interp.cli.outputs import HTML, WORKSPACE, check_outputs, declare_outputs, html_paths
from interp.cli.types import device, dtype, positive_int
from interp.errors import USER_ERRNOS, InterpError, file_error

COMMAND_MODULES = [
    "interp.cli.edit",
    "interp.cli.info",
    "interp.cli.lens",
    "interp.cli.microscope",
    "interp.cli.outliers",
    "interp.cli.probe",
    "interp.cli.dashboard",
    "interp.cli.sae",
    "interp.cli.trace",
    "interp.cli.patch",
    "interp.cli.graph",
    "interp.cli.steer",
    "interp.cli.ffn",
]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the fix (exit 2 through `main`)."""

    def error(self, message: str):
        raise InterpError(f"{' '.join(message.split())}; see {self.prog} --help")


def common_parser() -> argparse.ArgumentParser:
    """Options every command takes; `--workspace` and `--html` are declared outputs (see `outputs`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="smollm2-135m", help="model spec (default: smollm2-135m)")
    common.add_argument("--device", default="cpu", type=device, help="torch device: cpu, cuda, cuda:N, mps "
                        "(default: cpu)")
    common.add_argument("--dtype", default="float32", type=dtype, help="model weights and activations: float32, "
                        "bfloat16 or float16 (default: float32); fits, covariances and SAE training stay float32")
    common.add_argument("--n-devices", type=positive_int, default=1, help="split the layers over this many GPUs "
                        "from --device on (TransformerLens's layer split; default 1)")
    common.add_argument("--device-map", default=None, choices=["auto"], help="auto: let transformers/accelerate "
                        "place the model over every GPU, then CPU memory (loads through TransformerBridge)")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--workspace", default=None, help="save the result into this workspace folder")
    common.add_argument("--html", default=None, metavar="FILE",
                        help="also write the result's figure as a standalone .html file (opens offline); "
                             "several results go to FILE-0.html, FILE-1.html, ...")
    declare_outputs(common, workspace=WORKSPACE, html=HTML)
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="interp", description="Mechanistic interpretability toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def load_model_for(args):
    """The hooked model named by `--model`, loaded with progress on stderr."""
    from interp.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, n_devices=args.n_devices,
                      device_map=args.device_map)


def _save(results, args, saved: list[str]) -> None:
    """Save `results` to `--workspace` (appending each folder to `saved`) and their figures to `--html`."""
    if getattr(args, "workspace", None):
        for r in results:
            saved.append(str(r.save(args.workspace)))
            print(f"saved {saved[-1]}", file=sys.stderr)
    if getattr(args, "html", None):
        for path, r in zip(html_paths(args.html, len(results)), results, strict=True):
            r.figure().write_html(path, include_plotlyjs=True)
            print(f"wrote {path}", file=sys.stderr)


def _emit(results, args) -> int:
    """Save and print `results`; the exit code. A failed save still prints the result, then one error line."""
    results = results if isinstance(results, list) else [results]
    saved: list[str] = []
    failure = None
    try:
        _save(results, args, saved)
    except Exception as e:  # printed after the result, which must not be lost
        if os.environ.get("INTERP_DEBUG"):
            raise
        failure = e
    if args.json:
        payload = results[0].to_dict() if len(results) == 1 else {"results": [r.to_dict() for r in results]}
        if saved:
            payload["saved"] = saved if len(saved) > 1 else saved[0]
        from interp.results import jsonable  # NaN and inf, also those a subclass's to_dict adds, as null

        json.dump(jsonable(payload), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print("\n\n".join(r.summary() for r in results))
    if failure is None:
        return 0
    code, line = _error_line(failure)
    print(line, file=sys.stderr)
    return code


def _error_line(e: Exception) -> tuple[int, str]:
    """(exit code, one line) for an exception: 2 for bad input (ours, or the user's files and disk), 1 for a bug."""
    if isinstance(e, InterpError):
        return 2, f"error: {e}"
    if isinstance(e, OSError) and (e.filename is not None or e.errno in USER_ERRNOS):
        return 2, f"error: {file_error(e.filename or 'output', e)}"
    return 1, f"error: internal {type(e).__name__}: {' '.join(str(e).split())} (set INTERP_DEBUG=1 for the traceback)"


def _check_argv(argv: list[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (Python passes their bytes through as lone surrogates)."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise InterpError(f"argument {ascii(arg)} is not valid UTF-8; retype it or use a UTF-8 terminal") from None


def _set_threads() -> None:
    """Apply INTERP_THREADS (torch's CPU threads) when it is set."""
    text = os.environ.get("INTERP_THREADS")
    if text is None:
        return
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise InterpError(f"INTERP_THREADS={text!r} is not a positive whole number; set it to e.g. 4 or unset it")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv); the exit code (0 ok, 2 bad input, 1 a bug, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_argv(argv)
        args = build_parser().parse_args(argv)
        _set_threads()
        check_outputs(args)  # before the command's expensive work
        return _emit(args.run(args), args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; the traceback on request
        if os.environ.get("INTERP_DEBUG") and not isinstance(e, InterpError):
            raise
        code, line = _error_line(e)
        print(line, file=sys.stderr)
        return code

"""One short run of every `interp` command, for the dtype, device and GPU checks (tests/test_dtype.py,
tests/test_cuda.py, benchmarks/gpu.py): the same argument lines on every model, small enough to run in
seconds on a tiny model and in about a minute on the default one (CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from interp.cli import main

PROMPT = "The Eiffel Tower is located in the city of"


def command_lines(work: Path, layer: int) -> list[tuple[str, list[str]]]:
    """(name, argv) of every command, in order (SAE training before the commands that read its SAEs);
    `work` is an empty folder for their files, `layer` a middle layer of the model."""
    sae, tc, ws = str(work / "sae"), str(work / "transcoders"), str(work / "ws")
    small = ["--batch-tokens", "256", "--buffer-tokens", "2048", "--lm-batch-size", "8", "--seq-len", "64",
             "--checkpoint-every", "0"]
    return [
        ("info", ["info"]),
        ("lens", ["lens", PROMPT, "--top", "5"]),
        ("trace", ["trace", PROMPT, "--subject", "Eiffel Tower", "--samples", "4", "--window", "2"]),
        ("patch", ["patch", "--clean", "The capital of Spain is", "--corrupt", "The capital of Italy is"]),
        ("edit", ["edit", "--subject", "The Eiffel Tower", "--prompt", "{} is located in the city of",
                  "--target", " Rome", "--layers", str(layer), "--generations", "0", "--stats-tokens", "10000"]),
        ("sae train", ["sae", "train", "--hook", f"blocks.{layer}.hook_resid_post", "--tokens", "4096",
                       "--expansion", "2", "--k", "8", *small, "--out", sae]),
        ("sae eval", ["sae", "eval", sae, "--tokens", "1024"]),
        ("sae features", ["sae", "features", sae, "--tokens", "2048", "--workspace", ws]),
        ("transcoders", ["sae", "train", "--layers", "all", "--hook", "blocks.{l}.ln2.hook_normalized",
                         "--hook-out", "blocks.{l}.hook_mlp_out", "--tokens", "2048", "--expansion", "2", "--k", "8",
                         *small, "--out", tc]),
        ("graph", ["graph", "The capital of France is", "--transcoders", tc]),
        ("probe", ["probe", "--dataset", "cities", "--layers", str(layer), "--folds", "2"]),
        ("outliers", ["outliers", "--tokens", "512", "--seq-len", "64", "--ppl-tokens", "0"]),
        ("steer", ["steer", PROMPT, "--vector", f"feature:{sae}:0", "--coef", "0,4", "--max-new-tokens", "6",
                   "--neutral", "2"]),
        ("ffn", ["ffn", PROMPT, "--layer", str(layer), "--top", "5"]),
        ("microscope", ["microscope", PROMPT, "--reference-tokens", "512", "--steps", "20"]),
    ]


def run_all(model: str, dtype: str, device: str, work: Path, names: list[str] | None = None,
            ) -> dict[str, dict]:
    """Run `command_lines` (those in `names`, with what they depend on) with `--json` on `model` in `dtype` on
    `device`: {name: {"payload": the printed object or None, "seconds": wall time less model loading,
    "error": the last stderr line or None}}. The model is loaded once and shared (edit, which changes the
    weights, gets its own, so its time includes loading); CUDA work is synchronised before each time is read.

    With INTERP_RUNS_DIR set, a full run (`names` None) is kept there as JSON and read back by a later call for
    the same model, dtype and device: `make gpu-check` runs the CUDA tests and then the GPU benchmark on the
    same runs instead of twice.
    """
    import os

    memo = Path(os.environ["INTERP_RUNS_DIR"]) / f"{model}-{dtype}-{device}.json" \
        if os.environ.get("INTERP_RUNS_DIR") and names is None else None
    if memo is not None and memo.is_file():
        return json.loads(memo.read_text())
    out = _run_all(model, dtype, device, work, names)
    if memo is not None:
        memo.write_text(json.dumps(out))
    return out


def _run_all(model: str, dtype: str, device: str, work: Path, names: list[str] | None) -> dict[str, dict]:
    import contextlib
    import io
    import time

    import torch

    import interp.cli as cli

    layer = {"tiny-llama": 1, "tiny-gpt2": 1}.get(model, 15)
    loaded: dict = {}
    real_load = cli.load_model_for

    def shared_load(args):
        if args.command == "edit":
            return real_load(args)
        if "model" not in loaded:
            loaded["model"] = real_load(args)
        return loaded["model"]

    needs = {"sae eval": "sae train", "sae features": "sae train", "steer": "sae train", "graph": "transcoders"}
    wanted = None if names is None else set(names) | {needs[n] for n in names if n in needs}
    out: dict[str, dict] = {}
    cli.load_model_for = shared_load
    try:
        shared_load(cli.build_parser().parse_args(["info", "--model", model, "--dtype", dtype, "--device", device]))
        for name, argv in command_lines(work, layer):
            if wanted is not None and name not in wanted:
                continue
            stdout, stderr = io.StringIO(), io.StringIO()
            began = time.perf_counter()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main([*argv, "--model", model, "--dtype", dtype, "--device", device, "--json"])
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            seconds = time.perf_counter() - began
            lines = stderr.getvalue().strip().splitlines()
            out[name] = {"payload": json.loads(stdout.getvalue()) if code == 0 else None, "seconds": seconds,
                         "error": None if code == 0 else (lines[-1] if lines else f"exit {code}")}
    finally:
        cli.load_model_for = real_load
    return out


def run_json(argv: list[str], capsys) -> dict:
    """Run one command line with --json; its printed object (fails the test on a non-zero exit)."""
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, f"{' '.join(argv)} exited {code}: {err.strip().splitlines()[-1:]}"
    return json.loads(out)


def numbers(payload, path: str = "") -> dict[str, float]:
    """Every number in a JSON payload by its path (lists by index); booleans and strings are left out."""
    if isinstance(payload, dict):
        return {k: v for key, value in payload.items() for k, v in numbers(value, f"{path}.{key}").items()}
    if isinstance(payload, list):
        return {k: v for i, value in enumerate(payload) for k, v in numbers(value, f"{path}[{i}]").items()}
    if isinstance(payload, (int, float)) and not isinstance(payload, bool):
        return {path: float(payload)}
    return {}


def agreement(a: dict, b: dict, rtol: float, skip: tuple[str, ...] = ("seconds", "tokens_per_s", "memory", "saved",
                                                                      "out", "folder", "path")) -> float:
    """Share of the numbers two payloads have in common that agree within `rtol` of the larger magnitude, or
    of 1% of the largest magnitude in the same field (one array: the path less its indices) for values near
    zero; timings, memory and paths left out. 1.0 when they share none."""
    import re

    na, nb = numbers(a), numbers(b)
    common = [k for k in na.keys() & nb.keys() if not any(s in k for s in skip)]
    if not common:
        return 1.0
    field = {k: re.sub(r"\[\d+\]", "[]", k) for k in common}
    scale: dict[str, float] = {}
    for k in common:
        if math.isfinite(na[k]):
            scale[field[k]] = max(scale.get(field[k], 0.0), abs(na[k]))

    def close(k: str) -> bool:
        x, y = na[k], nb[k]
        if not (math.isfinite(x) and math.isfinite(y)):
            return x == y or (math.isnan(x) and math.isnan(y))
        return abs(x - y) <= rtol * max(abs(x), abs(y), 0.01 * scale.get(field[k], 0.0), 1e-12)

    return sum(close(k) for k in common) / len(common)

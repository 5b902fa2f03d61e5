"""Every command's time on the GPU against the CPU, default model, in one run.

    .venv/bin/python benchmarks/gpu.py [--model smollm2-135m] [--commands lens,trace,...]

Runs `tests/commands.py`'s line of every command (the model loaded once per column, so times leave loading
out, except edit's) on CPU in float32, then on CUDA in float32 and bfloat16; prints one table (seconds and
the CPU / GPU ratio) and then one JSON object. Without a CUDA device it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

COLUMNS = (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--commands", default=None, help="comma-separated command names (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device on this machine; nothing to compare")
        return
    from commands import run_all

    names = args.commands.split(",") if args.commands else None
    runs = {f"{device}/{dtype}": run_all(args.model, dtype, device, Path(tempfile.mkdtemp(prefix="interp-gpu-")), names)
            for device, dtype in COLUMNS}
    rows = []
    for name in runs["cpu/float32"]:
        row = {"command": name, **{key: run[name]["seconds"] if run[name]["error"] is None else None
                                   for key, run in runs.items()}}
        row["errors"] = {key: run[name]["error"] for key, run in runs.items() if run[name]["error"]}
        cpu, gpu = row["cpu/float32"], row["cuda/float32"]
        row["speedup"] = cpu / gpu if cpu and gpu else None
        rows.append(row)
    print(f"{args.model} on {torch.cuda.get_device_name()}")
    print(f"{'command':<14} {'cpu fp32 s':>10} {'cuda fp32 s':>11} {'cuda bf16 s':>11} {'cpu/cuda':>8}")
    for r in rows:
        cells = [f"{r[k]:.2f}" if r[k] is not None else "error" for k in ("cpu/float32", "cuda/float32", "cuda/bfloat16")]
        ratio = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        print(f"{r['command']:<14} {cells[0]:>10} {cells[1]:>11} {cells[2]:>11} {ratio:>8}")
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()

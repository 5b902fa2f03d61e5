"""Peak memory of `load_model` on a model about twice the default's size, float32 and bfloat16.

    .venv/bin/python benchmarks/memory.py [--layers 36] [--dtypes float32,bfloat16] [--model SPEC]

Writes a random-init Llama folder (hidden 768, 36 layers, SmolLM2's vocabulary: about 2x the default
model's 135M parameters) into a temporary folder, then for each dtype loads it with `load_model` in a
fresh subprocess and reads that process's peak resident memory (VmHWM: ru_maxrss would count the
parent's, which outlives exec). The process's resident memory just before the call (torch,
transformers and TransformerLens imported, about 0.5 GB) is subtracted, so the figure is what
loading costs. Goal: peak about the weights' size in that dtype plus one copy at most, that is a
ratio peak / weights of 2 or less. `--model SPEC` measures that model instead (e.g. smollm2-135m). Prints a
table, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
import torch, transformers, transformer_lens  # imported before the baseline: their code is not the model's
from interp.models import load_model
import transformers.models.llama.modeling_llama  # noqa: F401 - the model's code, imported before the baseline too
def status_mb(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024
base = status_mb("VmRSS")
model = load_model(sys.argv[1], dtype=sys.argv[2])
peak = status_mb("VmHWM")
params = sum(p.numel() for p in model.parameters())
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"baseline_mb": base, "peak_mb": peak, "params": params, "weights_mb": weights / 2**20}))
"""


def write_model(folder: Path, layers: int) -> None:
    """A random-init Llama (SmolLM2's vocabulary, wider and deeper) saved as float32."""
    from transformers import LlamaConfig

    from interp.models.tiny import write_random_model

    config = LlamaConfig(vocab_size=49152, hidden_size=768, intermediate_size=2048, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=256, eos_token_id=256,
                         pad_token_id=256)
    write_random_model(config, folder)


def measure(folder: Path | str, dtype: str) -> dict:
    """Load `folder` in `dtype` in a fresh process; its peak and baseline memory (MB) and weight size."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["dtype"] = dtype
    row["load_mb"] = row["peak_mb"] - row["baseline_mb"]
    row["ratio"] = row["load_mb"] / row["weights_mb"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--model", default=None, help="measure this model spec instead of a random folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interp-memory-") as tmp:
        folder = args.model or Path(tmp) / "model"
        if args.model is None:
            write_model(folder, args.layers)
        rows = [measure(folder, dtype) for dtype in args.dtypes.split(",")]
    print(f"{'dtype':<9} {'params':>8} {'weights MB':>10} {'peak MB':>8} {'base MB':>8} {'load MB':>8} {'load/weights':>12}")
    for r in rows:
        print(f"{r['dtype']:<9} {r['params'] / 1e6:>7.0f}M {r['weights_mb']:>10.0f} {r['peak_mb']:>8.0f} "
              f"{r['baseline_mb']:>8.0f} {r['load_mb']:>8.0f} {r['ratio']:>12.2f}")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()

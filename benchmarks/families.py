"""Which loader takes each model family and how closely it reproduces transformers' logits.

For every family in `interp.models.tiny.FAMILIES` a tiny random folder (2 layers, width 32, noisy norm weights and
biases) is loaded with `load_model` and with plain transformers; prints per family the loader, the largest
|logit difference| over one 56-token prompt and the load time, as JSON lines.

    .venv/bin/python benchmarks/families.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

TEXT = "The Eiffel Tower is in Paris, Москва is in Russia."


def main() -> None:
    from interp.models import load_hf_model, load_model
    from interp.models.tiny import FAMILIES, write_family_model

    with tempfile.TemporaryDirectory() as root:
        for family in FAMILIES:
            folder = write_family_model(family, Path(root) / family)
            start = time.perf_counter()
            model = load_model(str(folder))
            seconds = time.perf_counter() - start
            hf, tok = load_hf_model(str(folder))
            ids = tok(TEXT, return_tensors="pt").input_ids
            with torch.no_grad():
                diff = float((model(ids) - hf(ids).logits).abs().max())
            print(json.dumps({"family": family, "architecture": hf.config.architectures[0], "loader": model.loader,
                              "max_abs_logit_diff": diff, "load_s": round(seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()

"""Placement options: `device_map="auto"` (accelerate, through TransformerBridge) gives the model's own logits
(on a CPU-only machine accelerate places everything in CPU memory), and options that cannot work here are one
line before anything loads. Splitting over GPUs is checked in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch

from interp.cli import main
from interp.errors import InterpError
from interp.models import load_model


def test_device_map_auto_loads_through_the_bridge_with_the_same_logits(tiny_llama):
    placed = load_model("tiny-llama", device_map="auto")
    assert placed.loader == "transformer-bridge"
    tokens = tiny_llama.to_tokens("The Eiffel Tower is in", prepend_bos=False)
    with torch.no_grad():
        assert (placed(tokens) - tiny_llama(tokens)).abs().max() < 1e-4
        _, cache = placed.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        _, ours = tiny_llama.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert (cache["blocks.1.hook_resid_post"] - ours["blocks.1.hook_resid_post"]).abs().max() < 1e-4


@pytest.mark.parametrize("options, message", [
    (dict(n_devices=2), "splits the layers over CUDA devices; pass --device cuda"),
    (dict(n_devices=0), "n_devices must be 1 or more"),
    (dict(device_map="balanced"), "unknown device map 'balanced'"),
    (dict(device_map="auto", n_devices=2), "either --n-devices or --device-map auto"),
    (dict(device_map="auto", loader="hooked-transformer"), "use loader='auto'"),
])
def test_placements_that_cannot_work_are_refused(options, message):
    with pytest.raises(InterpError, match=message):
        load_model("tiny-llama", **options)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs to split over")
def test_cli_names_the_fix_for_too_few_gpus(capsys):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    code = main(["lens", "hi", "--model", "tiny-llama", "--device", device, "--n-devices", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--n-devices 2" in err

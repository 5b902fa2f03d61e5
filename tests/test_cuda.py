"""Every command on a CUDA device (skipped without one): tiny-llama and the default model, float32 and bfloat16,
each compared with the same command on CPU in float32.

    make gpu-check     # these tests, then benchmarks/gpu.py on the same runs: about 5-8 minutes on one H200

Runs go through the command line (`tests/commands.py`), one model load per model, dtype and device. Results must
agree number by number with the CPU run (a share of the numbers in each command's JSON within a relative
tolerance; timings and paths left out): closely for the deterministic analyses, loosely for the commands that
train (SAEs, transcoders, the microscope's read-out) or read what was trained, whose optimisers take other
float paths on the GPU. With two or more GPUs, the layer split (--n-devices 2) and accelerate's placement
(--device-map auto) are checked against one GPU too.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch

from commands import agreement, command_lines, run_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

MODELS = ("tiny-llama", "smollm2-135m")
COMMANDS = [name for name, _ in command_lines(Path("."), 1)]
TRAINED = {"sae train", "sae eval", "sae features", "transcoders", "graph", "steer", "microscope"}
# (relative tolerance, share of numbers that must agree): deterministic commands, then trained ones. bfloat16
# against float32 is loose: on CPU, tiny-llama's bfloat16 patching and probe numbers agree with float32's at
# 0.3 for 65% and 75% of them (differences of near-equal logits; probes on random features), the rest for 84-100%
TOLERANCE = {"float32": ((0.02, 0.95), (0.2, 0.5)), "bfloat16": ((0.3, 0.5), (0.3, 0.4))}


@functools.cache
def runs(model: str, dtype: str, device: str) -> dict[str, dict]:
    """Every command's output for one model, dtype and device, run once per test session."""
    return run_all(model, dtype, device, Path(tempfile.mkdtemp(prefix=f"interp-cuda-{model}-{dtype}-{device}-")))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_runs_on_cuda_and_agrees_with_cpu(command, model, dtype):
    gpu, cpu = runs(model, dtype, "cuda")[command], runs(model, "float32", "cpu")[command]
    assert gpu["error"] is None, gpu["error"]
    assert cpu["error"] is None, cpu["error"]
    rtol, share = TOLERANCE[dtype][command in TRAINED]
    assert agreement(gpu["payload"], cpu["payload"], rtol) >= share
    if command in ("lens", "trace") and model != "tiny-llama":  # a real model's answer is no near-tie
        assert gpu["payload"]["answer"] == cpu["payload"]["answer"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than two CUDA devices")
@pytest.mark.parametrize("placement", [["--n-devices", "2"], ["--device-map", "auto"]])
def test_a_model_placed_over_two_gpus_gives_one_gpus_results(placement, capsys):
    from commands import run_json

    work = Path(tempfile.mkdtemp(prefix="interp-multi-gpu-"))
    lines = dict(command_lines(work, 15))
    for name in ("lens", "trace", "patch", "sae train", "probe"):
        split = run_json([*lines[name], "--model", "smollm2-135m", "--device", "cuda", *placement], capsys)
        single = runs("smollm2-135m", "float32", "cuda")[name]["payload"]
        assert agreement(split, single, 0.02) >= (0.5 if name == "sae train" else 0.95), name

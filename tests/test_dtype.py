"""Models in bfloat16 on CPU: every command runs, statistics that need precision stay float32, and the logit
lens and causal tracing give the float32 model's answer with close scores."""

from __future__ import annotations

import pytest
import torch

from circuits.tracing import trace
from interp.lens import logit_lens
from interp.models import load_model
from commands import command_lines, run_json

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"


@pytest.fixture(scope="module")
def tiny_llama_bf16():
    return load_model("tiny-llama", dtype="bfloat16")


def test_load_model_takes_a_dtype_or_its_name(tiny_llama_bf16):
    assert {p.dtype for p in tiny_llama_bf16.parameters()} == {torch.bfloat16}
    assert tiny_llama_bf16.cfg.dtype == torch.bfloat16
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="unknown dtype 'float8'"):
        load_model("tiny-llama", dtype="float8")


def test_every_command_runs_in_bfloat16_and_saes_stay_float32(tmp_path, capsys):
    from interp.sae import load_sae

    for name, argv in command_lines(tmp_path, layer=1):
        payload = run_json([*argv, "--model", "tiny-llama", "--dtype", "bfloat16"], capsys)
        assert payload, name
    sae = load_sae(tmp_path / "sae")
    assert {p.dtype for p in sae.parameters()} == {torch.float32}


def _compare_lens(model32, model16, answer_tol: float) -> None:
    a, b = logit_lens(model32, PROMPT), logit_lens(model16, PROMPT)
    assert a.answer == b.answer
    assert a.dla.dtype == b.dla.dtype == torch.float32
    assert (a.answer_prob - b.answer_prob).abs().max() < answer_tol


def _compare_lens_and_trace(model32, model16, answer_tol: float, score_tol: float) -> None:
    _compare_lens(model32, model16, answer_tol)
    ta = trace(model32, PROMPT, SUBJECT, samples=4, window=2, kinds=("hidden",), progress=False)
    tb = trace(model16, PROMPT, SUBJECT, target=ta.answer, samples=4, window=2, kinds=("hidden",), progress=False)
    assert ta.answer == tb.answer and abs(ta.high - tb.high) < answer_tol
    assert tb.noise_std == pytest.approx(ta.noise_std, rel=0.02)  # the embedding scale, in float32 either way
    for kind in ta.scores:
        assert (ta.scores[kind] - tb.scores[kind]).abs().max() < score_tol * ta.high, kind


def test_bfloat16_lens_and_trace_agree_with_float32_on_tiny_llama(tiny_llama, tiny_llama_bf16):
    """A random model: near-uniform probabilities (about 1/257), so bfloat16 rounding moves them by a larger share."""
    _compare_lens_and_trace(tiny_llama, tiny_llama_bf16, answer_tol=0.01, score_tol=0.3)


@pytest.mark.real
def test_bfloat16_lens_agrees_with_float32_on_the_default_model(smollm):
    """The default model in bfloat16: " Paris", and every layer's probability of it within 0.05 of float32's.
    (The trace is compared on tiny-llama only: on CPUs without bfloat16 units its 1,200 corrupted runs of
    the default model took over 10 minutes.)"""
    _compare_lens(smollm, load_model("smollm2-135m", dtype="bfloat16"), answer_tol=0.05)

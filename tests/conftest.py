"""Shared fixtures: tiny seeded models for mechanics, the real default model for truth."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama():
    from interp.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from interp.models import load_model

    return load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def smollm():
    """The real default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from interp.models import load_model

    return load_model("smollm2-135m")

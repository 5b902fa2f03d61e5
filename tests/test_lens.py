"""Logit lens and direct logit attribution."""

from __future__ import annotations

import pytest
import torch

from interp.errors import InterpError
from interp.lens import LensResult, logit_lens


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_lens_last_layer_is_the_model_output(fixture, request):
    model = request.getfixturevalue(fixture)
    result = logit_lens(model, "The cat sat on the")
    probs = model(model.to_tokens("The cat sat on the", prepend_bos=False))[0, -1].softmax(-1)
    assert result.answer_id == int(probs.argmax())
    assert result.answer_rank[-1] == 0
    assert torch.isclose(result.answer_prob[-1], probs.max(), atol=1e-5)
    assert len(result.layers) == model.cfg.n_layers + 1 == result.grid_probs.shape[0]


def test_dla_sums_to_the_answer_logit(tiny_llama):
    """Llama has no biases, so the attributions add up to the logit exactly."""
    result = logit_lens(tiny_llama, "The cat sat on the")
    assert result.dla_labels[0] == "embed" and len(result.dla) == 1 + 2 * 3
    assert abs(float(result.dla.sum()) - result.answer_logit) < 1e-4


def test_lens_target_and_round_trip(tiny_llama, tmp_path):
    result = logit_lens(tiny_llama, "The cat sat on the", target=" mat")
    assert result.answer == " "  # byte tokenizer: first token of the target
    back = LensResult.read(result.save(tmp_path))
    assert torch.equal(back.answer_prob, result.answer_prob)
    assert list(back.to_frame().columns) == ["layer", "answer_prob", "answer_rank", "top_token", "top_prob"]
    assert len(result.figure().data) == 3


def test_lens_bad_input(tiny_llama):
    with pytest.raises(InterpError, match="empty"):
        logit_lens(tiny_llama, "  ")
    with pytest.raises(InterpError, match="context is 512"):
        logit_lens(tiny_llama, "x" * 600)


@pytest.mark.real
def test_lens_ranks_paris_first_at_the_last_layer(smollm):
    result = logit_lens(smollm, "The Eiffel Tower is located in the city of")
    assert result.answer == " Paris"
    assert result.answer_rank[-1] == 0
    assert result.top_tokens[-1][0] == " Paris"
    assert result.answer_rank[5] > 100  # early layers do not know it yet

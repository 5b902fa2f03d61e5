"""Activation patching (exact, batched) against plain hooks, normalisation, attribution patching, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.patching import PatchResult, patch
from interp.cli import main
from interp.errors import InterpError

CLEAN, CORRUPT = "The cat sat on", "The cot sat on"  # differ in one byte, position 5


@pytest.fixture(scope="module")
def result(tiny_llama):
    return patch(tiny_llama, CLEAN, CORRUPT)


def _plain_patch(model, name: str, index, result: PatchResult) -> float:
    """Normalised logit difference after writing one clean activation into the corrupted run with a hook."""
    _, clean = model.run_with_cache(model.to_tokens(CLEAN, prepend_bos=False))
    answer, foil = (int(model.to_tokens(t, prepend_bos=False)[0, 0]) for t in (result.answer, result.foil))

    def write(act, hook):
        act[index] = clean[name][index]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(model.to_tokens(CORRUPT, prepend_bos=False), fwd_hooks=[(name, write)])
    ld = float(logits[0, -1, answer] - logits[0, -1, foil])
    return (ld - result.corrupt_logit_diff) / (result.clean_logit_diff - result.corrupt_logit_diff)


@pytest.mark.parametrize(("site", "name", "layer", "index"), [
    ("resid", "blocks.1.hook_resid_pre", 1, 5),
    ("resid", "blocks.2.hook_resid_pre", 2, 13),
    ("attn", "blocks.0.hook_attn_out", 0, 5),
    ("mlp", "blocks.1.hook_mlp_out", 1, 6),
    ("heads", "blocks.1.attn.hook_z", 1, 2),
])
def test_batched_patching_equals_plain_hooks(tiny_llama, result, site, name, layer, index):
    where = (slice(None), slice(None), index) if site == "heads" else (slice(None), index)
    expected = _plain_patch(tiny_llama, name, where, result)
    assert float(result.logit_diff[site][layer, index]) == pytest.approx(expected, abs=1e-4)


def test_normalisation_and_shapes(tiny_llama, result):
    L, T, H = tiny_llama.cfg.n_layers, len(result.clean_tokens), tiny_llama.cfg.n_heads
    assert result.logit_diff["resid"].shape == (L, T) and result.logit_diff["heads"].shape == (L, H)
    resid0 = result.logit_diff["resid"][0]  # the whole input differs only at position 5
    assert float(resid0[5]) == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(torch.cat([resid0[:5], resid0[6:]]), torch.zeros(T - 1), atol=1e-4)
    assert float(result.probability["resid"][0, 5]) == pytest.approx(1.0, abs=1e-2)


def test_attribution_patching_approximates_the_exact_effects(result):
    for site in ("attn", "mlp", "heads"):
        assert result.attribution[site].shape == result.logit_diff[site].shape
        assert result.agreement(site) > 0.9
    assert "attribution vs exact" in result.summary()


def test_round_trip_and_figure(result, tmp_path):
    back = PatchResult.read(result.save(tmp_path))
    assert torch.equal(back.attribution["heads"], result.attribution["heads"])
    frame = result.to_frame()
    assert set(frame["site"]) == {"resid", "attn", "mlp", "heads"}
    assert len(result.figure().data) == 8


def test_bad_input(tiny_llama):
    with pytest.raises(InterpError, match="equal token length"):
        patch(tiny_llama, CLEAN, "The cat sat on a")
    with pytest.raises(InterpError, match="same logit difference"):
        patch(tiny_llama, CLEAN, CLEAN)
    with pytest.raises(InterpError, match="patching site"):
        patch(tiny_llama, CLEAN, CORRUPT, sites="resid,neurons")
    with pytest.raises(InterpError, match="same token"):
        patch(tiny_llama, CLEAN, CORRUPT, target="a", foil="a")


def test_cli_patch(capsys):
    code = main(["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--model", "tiny-gpt2", "--hooks", "resid,heads",
                 "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["logit_diff"]) == {"resid", "heads"} and payload["answer"]
    assert main(["patch", "--clean", CLEAN, "--corrupt", "The cat", "--model", "tiny-gpt2"]) == 2
    assert "equal token length" in capsys.readouterr().err

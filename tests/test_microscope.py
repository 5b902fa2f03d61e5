"""LLM-Microscope (interp.microscope): each measure against a plain reference computation, the read-out on
data whose answer is known, the removal test against direct model calls, the CLI's refusals, and one run on
the real default model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_errors import forbid, run_bad  # noqa: F401  (forbid is a fixture)

from interp.cli import main
from interp.errors import InterpError
from interp.microscope import MicroscopeConfig, MicroscopeResult, microscope
from interp.microscope.measures import fit_linear, two_nn_dimension
from interp.microscope.memory import (
    ContextHead,
    MemoryConfig,
    context_scores,
    prefix_targets,
    train_context_head,
)
from interp.microscope.removal import removal_effects, token_nll
from interp.microscope.words import is_prose, token_class
from interp.results import Result, jsonable

M = ["--model", "tiny-llama"]
SMALL = dict(reference_tokens=256, corpus_tokens=128, seq_len=64, id_points=128)


# -- nonlinearity and linearity ------------------------------------------------------------------
def test_an_exactly_linear_layer_has_zero_nonlinearity_and_linearity_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    A, b = torch.randn(6, 6, generator=g), torch.randn(6, generator=g)
    fit = fit_linear(x, x @ A + b)
    assert fit.linearity == pytest.approx(1.0, abs=1e-10)
    unseen = torch.randn(50, 6, generator=g)  # the map holds out of sample too
    assert fit.errors(unseen, unseen @ A + b).abs().max() < 1e-9


def test_nonlinearity_of_a_square_by_hand():
    """y = x^2 on x = -1, 0, 1: centred y = (1, -2, 1)/3 is orthogonal to x, so the best map is 0, linearity is
    0 and each token's error is its share of |y|^2 = 6/9, times 3 tokens: (1/6, 4/6, 1/6) x 3."""
    x = torch.tensor([[-1.0], [0.0], [1.0]])
    fit = fit_linear(x, x ** 2)
    assert fit.linearity == pytest.approx(0.0, abs=1e-12)
    assert fit.errors(x, x ** 2).tolist() == pytest.approx([0.5, 2.0, 0.5])


def test_nonlinearity_matches_numpy_least_squares():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = np.tanh(x @ rng.normal(size=(5, 5))) + 0.1 * x ** 2
    xc, yc = x - x.mean(0), y - y.mean(0)
    xn, yn = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    A = np.linalg.lstsq(xn, yn, rcond=None)[0]
    per_token = ((xn @ A - yn) ** 2).sum(1)  # the paper's per-token error
    fit = fit_linear(torch.tensor(x), torch.tensor(y))
    assert fit.linearity == pytest.approx(1 - per_token.sum(), abs=1e-10)
    assert fit.errors(torch.tensor(x), torch.tensor(y)).numpy() == pytest.approx(per_token * len(x), rel=1e-8)
    assert 0 < fit.linearity < 1


# -- intrinsic dimension -------------------------------------------------------------------------
def reference_two_nn(points: np.ndarray, fraction: float) -> float:
    """Two-NN by brute force in numpy: mu = r2/r1, sorted, line through the origin over the smallest
    `fraction` of the mu values against -log(1 - i/N) (no duplicates in the data)."""
    x = points - points.mean(0)
    x = x / np.linalg.norm(x, axis=1).mean()
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    two = np.sort(dist, axis=1)[:, :2]
    mu = np.sort(two[:, 1] / two[:, 0])
    n = len(mu)
    used = min(int(n * fraction), n - 1)
    log_mu, target = np.log(mu[:used]), -np.log(1 - np.arange(1, used + 1) / n)
    return float((log_mu * target).sum() / (log_mu ** 2).sum())


@pytest.mark.parametrize("fraction", [0.2, 0.9])
def test_two_nn_matches_a_brute_force_reference(fraction):
    points = np.random.default_rng(2).normal(size=(300, 4))
    estimate = two_nn_dimension(torch.tensor(points), fraction)  # distances in float32, the reference's in float64
    assert estimate == pytest.approx(reference_two_nn(points, fraction), rel=1e-5)


@pytest.mark.parametrize("dim", [2, 6])
def test_two_nn_recovers_the_dimension_of_a_subspace(dim):
    g = torch.Generator().manual_seed(dim)
    basis = torch.linalg.qr(torch.randn(40, dim, generator=g))[0]  # a dim-dimensional plane in R^40
    points = torch.randn(2000, dim, generator=g) @ basis.T
    assert two_nn_dimension(points) == pytest.approx(dim, rel=0.15)


def test_two_nn_sets_duplicates_aside():
    """A repeated vector (a repeated token's embedding) counts once."""
    g = torch.Generator().manual_seed(3)
    points = torch.randn(1500, 3, generator=g)
    doubled = torch.cat([points, points[:300]])  # 600 points with a twin at distance 0
    assert two_nn_dimension(doubled) == pytest.approx(two_nn_dimension(points), rel=1e-9)
    assert two_nn_dimension(points) == pytest.approx(3, rel=0.2)


# -- context memory ------------------------------------------------------------------------------
def test_prefix_targets_by_hand():
    ids, mask = prefix_targets(torch.tensor([[5, 6, 7]]), 2)
    assert mask[0].tolist() == [[False, False], [True, False], [True, True]]
    assert ids[0][mask[0]].tolist() == [5, 6, 5]  # position 1: 5; position 2: 6 then 5


def test_context_scores_match_a_plain_loop():
    g = torch.Generator().manual_seed(4)
    head = ContextHead(3, 8, 2, g)
    head.pool.data = torch.tensor([0.3, -1.0, 0.5])
    states, tokens = torch.randn(3, 2, 5, 8, generator=g), torch.randint(0, 12, (2, 5), generator=g)
    emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    loss, acc = context_scores(head, states, tokens, emb, chunk=3)
    weights = head.pool.softmax(0)
    for r in range(2):
        for s in range(5):
            if s == 0:
                assert math.isnan(loss[r, s]) and math.isnan(acc[r, s])
                continue
            h = sum(weights[l] * states[l, r, s] / states[l, r, s].square().mean().sqrt() for l in range(3))
            losses, hits = [], []
            for k in range(1, min(2, s) + 1):
                guess = h @ head.maps[k - 1]
                target = int(tokens[r, s - k])
                losses.append(1 - float(guess @ emb[target]) / float(guess.norm()))
                hits.append(float(int((emb @ guess).argmax()) == target))
            assert float(loss[r, s]) == pytest.approx(np.mean(losses), abs=1e-5)
            assert float(acc[r, s]) == pytest.approx(np.mean(hits))


def test_read_out_learns_the_previous_token_and_pools_the_layer_that_holds_it():
    """Hidden state 1 holds the previous token's embedding, hidden state 0 noise: the trained read-out must find
    the previous token almost always and put its pooling weight on state 1."""
    g = torch.Generator().manual_seed(5)
    emb = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    tokens = torch.randint(0, 20, (16, 24), generator=g)
    states = torch.stack([torch.randn(16, 24, 16, generator=g), emb[tokens.roll(1, dims=1)]])
    head = train_context_head(states, tokens, emb, MemoryConfig(window=1, steps=200, batch=64, lr=1e-2))
    fresh = torch.randint(0, 20, (4, 24), generator=g)
    fresh_states = torch.stack([torch.randn(4, 24, 16, generator=g), emb[fresh.roll(1, dims=1)]])
    loss, acc = context_scores(head, fresh_states, fresh, emb)
    assert float(acc[:, 1:].mean()) > 0.95 and float(loss[:, 1:].mean()) < 0.1
    assert head.pool.softmax(0)[1] > 0.8


def test_token_classes():
    assert [token_class(t) for t in [",", ".\n", " The", " an", " of", " cat", "ization", " 42", "  ", "x2"]] == [
        "punctuation", "punctuation", "article", "article", "stopword", "content", "content", "other", "other",
        "other"]
    assert is_prose("The cat sat on the mat, and slept.") and not is_prose("x = f(a[0]) + g(b)")


# -- removal test --------------------------------------------------------------------------------
def test_padded_nll_equals_one_row_at_a_time(tiny_llama):
    rows = [torch.tensor([5, 9, 30, 31, 7]), torch.tensor([40, 41, 42])]
    together = token_nll(tiny_llama, rows)
    for row, nll in zip(rows, together):
        alone = -tiny_llama(row[None]).log_softmax(-1)[0, :-1].gather(-1, row[1:, None])[:, 0]
        assert torch.allclose(nll[1:], alone.detach(), atol=1e-5) and math.isnan(nll[0])


def test_removal_matches_direct_model_calls(tiny_llama):
    row = torch.tensor([10, 44, 11, 12, 44, 13, 14])
    classes = ["content", "punctuation", "content", "content", "punctuation", "content", "article"]
    frame = removal_effects(tiny_llama, [row], [classes]).set_index("condition")
    keep = torch.tensor([c != "punctuation" for c in classes])

    def nll(ids: torch.Tensor) -> torch.Tensor:
        return -tiny_llama(ids[None]).log_softmax(-1)[0, :-1].gather(-1, ids[1:, None])[:, 0].detach().double()

    kept = keep.nonzero()[:, 0][1:]  # the first kept token has no context once the others are gone
    full = nll(row)[kept - 1].mean().exp()
    short = nll(row[keep]).mean().exp()
    got = frame.loc["punctuation"]
    assert got["removed"] == 2 and got["evaluated"] == len(kept)
    assert got["ppl_full"] == pytest.approx(float(full), rel=1e-5)
    assert got["rise"] == pytest.approx(float(short / full), rel=1e-5)
    assert frame.loc["punctuation control", "removed"] == 2  # as many random content tokens


# -- the analysis and its result -----------------------------------------------------------------
@pytest.fixture(scope="module")
def text_result(tiny_llama) -> MicroscopeResult:
    config = MicroscopeConfig(**SMALL, memory=MemoryConfig(window=3, steps=20, batch=32))
    return microscope(tiny_llama, "The cat sat, and the dog ran.", config=config)


def test_text_run_shapes_and_round_trip(text_result, tmp_path):
    r = text_result
    L, T = 3, len(r.tokens)
    assert r.nonlinearity.shape == (L, T) and r.linearity.shape == (L,) and r.intrinsic_dim.shape == (L + 1,)
    assert ((r.linearity > 0) & (r.linearity <= 1)).all()
    assert math.isnan(r.context_loss[0]) and torch.isfinite(r.context_loss[1:]).all()
    assert r.pool_weights.sum() == pytest.approx(1.0) and len(r.removal) == 0
    assert len(r.lens_top) == L + 1 and len(r.lens_top[0]) == len(r.lens_tokens)
    assert set(r.classes["class"]) <= {"punctuation", "article", "stopword", "content", "other"}
    json.dumps(jsonable(r.to_dict()), allow_nan=False)
    back = Result.read(r.save(tmp_path))
    assert isinstance(back, MicroscopeResult) and torch.equal(back.nonlinearity, r.nonlinearity)
    assert back.to_frame().equals(r.to_frame())
    r.figure()


def test_dashboard_page_shows_the_figure_and_every_table(text_result, tmp_path):
    import dashboards.microscope_view  # noqa: F401  (registers the page)
    from dashboards.context import Context
    from dashboards.views import result_page

    text_result.save(tmp_path, "run")
    page = json.dumps(result_page(Context(tmp_path, "tiny-llama"), "microscope", "run"),
                      default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))
    assert page.count('"type": "DataTable"') == 4 and '"type": "Graph"' in page  # no removal table for a text
    assert "Logit lens: top token per layer" in page and "Per token class" in page


def test_the_text_is_scored_with_the_reference_fit(tiny_llama, text_result):
    """The per-token nonlinearity of the text is the reference fit's error on the text's own hidden states."""
    from interp.microscope import corpus_rows, hidden_states, prepare_corpus

    rows = corpus_rows(tiny_llama, prepare_corpus(None), 4, 64)
    ref = hidden_states(tiny_llama, rows)[:, :, 1:].reshape(4, -1, 64)
    text = hidden_states(tiny_llama, tiny_llama.to_tokens("The cat sat, and the dog ran.", prepend_bos=False))
    fit = fit_linear(ref[1], ref[2])
    assert float(text_result.linearity[1]) == pytest.approx(fit.linearity)
    assert torch.allclose(text_result.nonlinearity[1], fit.errors(text[1, 0], text[2, 0]).float())


def test_a_reference_no_larger_than_the_model_width_is_refused(tiny_llama):
    with pytest.raises(InterpError, match="reference-tokens"):
        microscope(tiny_llama, "The cat sat.", config=MicroscopeConfig(reference_tokens=64, seq_len=64))


# -- CLI -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["   "], "empty"),
    ([], "nothing to analyse"),
    (["missing/notes.txt"], "not found"),
])
def test_cli_refuses_before_loading_the_model(capsys, forbid, argv, words):  # noqa: F811
    forbid("interp.models.load_model")
    assert words in run_bad(capsys, ["microscope", *argv, *M])


def test_cli_refuses_unreadable_files_before_loading_the_model(capsys, forbid, tmp_path, monkeypatch):  # noqa: F811
    forbid("interp.models.load_model")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "locked.txt").write_text("some text")
    assert "UTF-8" in run_bad(capsys, ["microscope", str(tmp_path / "bad.txt"), *M])
    assert "empty" in run_bad(capsys, ["microscope", str(tmp_path / "empty.txt"), *M])
    assert "folder" in run_bad(capsys, ["microscope", str(tmp_path), *M])
    real_read = Path.read_text

    def locked(self, *args, **kwargs):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", locked)
    assert "permissions" in run_bad(capsys, ["microscope", str(tmp_path / "locked.txt"), *M])


def test_cli_refuses_a_one_token_prompt(capsys):
    assert "one token" in run_bad(capsys, ["microscope", "a", *M])


def test_cli_reads_a_text_file_and_prints_json(capsys, tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("The cat sat on the mat.")
    argv = ["microscope", str(path), *M, "--json", "--reference-tokens", "256", "--seq-len", "64", "--steps", "5"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["kind"] == "microscope" and payload["source"] == str(path)
    assert "".join(payload["tokens"]) == "The cat sat on the mat."


# -- the real default model ----------------------------------------------------------------------
@pytest.mark.real
def test_smollm_the_block_that_writes_the_massive_activation_is_the_least_linear(smollm):
    """SmolLM2's block 11 writes the first token's massive activation (about 23,000 on dim 507): it is the least
    linear layer over the reference tokens, and the first token of the text (the sink, left out of the fit) is
    by far the least linear token there."""
    config = MicroscopeConfig(reference_tokens=4096, seq_len=128, id_points=256,  # 1,024 overfit 576 dims
                              memory=MemoryConfig(window=2, steps=10, batch=64))
    r = microscope(smollm, "The Eiffel Tower, in Paris, is tall.", config=config)
    assert ((r.linearity > 0) & (r.linearity < 1)).all()
    assert int(r.linearity.argmin()) == 11 == int(r.nonlinearity[:, 0].argmax())
    assert r.nonlinearity[11, 0] > 10 * r.nonlinearity[11, 1:].max()
    assert torch.isfinite(r.intrinsic_dim[1:]).all() and (r.intrinsic_dim[1:] > 1).all()
    assert r.token_classes[r.tokens.index(",")] == "punctuation"

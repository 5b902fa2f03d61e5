"""Dashboard without a browser: figure builders on saved results, pages, feature store, safety, CLI."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow.parquet as pq
import pytest
import torch

from dashboards import figures
from dashboards.app import Server, create_app, render
from dashboards.attention import (
    attention_patterns,
    encode_pattern,
    layer_pattern,
    live_source,
    saved_source,
    source_layer,
)
from dashboards.context import Context
from dashboards.feature_store import CONTEXTS_FILE, load_feature_set
from dashboards.features import features_on_text
from dashboards.result_views import edit_cases, trace_grid, trace_groups, trace_peaks
from dashboards.sample import MARKUP, write_sample_workspace
from dashboards.synthetic import HOSTILE_TOKEN, write_synthetic_features
from dashboards.views import VIEWS, generic_view, register_view
from interp.errors import InterpError
from interp.lens import logit_lens
from interp.results import Result, register_result

HOSTILE_PROMPT = "Hi <script>window.__pwned=1</script> there"
ROOT = Path(__file__).resolve().parents[1]


def declared_kinds() -> list[str]:
    """Every Result kind the code declares (`kind = "..."` in a class body), found by reading the source."""
    declares = re.compile(r'^    kind = "(\w+)"', re.M)
    return sorted({kind for package in ("interp", "circuits", "probes", "dashboards")
                   for path in (ROOT / package).rglob("*.py") for kind in declares.findall(path.read_text())})


KINDS = declared_kinds()


def texts(component) -> str:
    """Every string in a Dash component tree (children and props), for assertions."""
    return json.dumps(component, default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))


def components(tree, type_name: str) -> list:
    """Every component of `type_name` (e.g. "Pre") in a Dash component tree."""
    if isinstance(tree, (list, tuple)):
        return [c for child in tree for c in components(child, type_name)]
    if not hasattr(tree, "to_plotly_json"):
        return []
    found = [tree] if type(tree).__name__ == type_name else []
    return found + components(getattr(tree, "children", None), type_name)


@register_result
@dataclasses.dataclass
class ToyResult(Result):
    """A kind no view knows: it must get the generic page."""

    kind = "toy"
    prompt: str
    scores: torch.Tensor

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"i": range(len(self.scores)), "score": self.scores.tolist()})

    def figure(self):
        return go.Figure(go.Bar(y=self.scores.tolist()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama):
    ws = tmp_path_factory.mktemp("ws")
    write_sample_workspace(ws, tiny_llama)  # <kind>/sample for every kind
    logit_lens(tiny_llama, HOSTILE_PROMPT).save(ws, "lens")
    attention_patterns(tiny_llama, "The cat sat on the mat.").save(ws, "attn")
    ToyResult(prompt="toy prompt", scores=torch.tensor([1.0, 3.0, 2.0])).save(ws, "toy")
    write_synthetic_features(ws, "syn", n_features=512, quantiles=2, per_quantile=2, n_top=4, context_len=8)
    return ws


@pytest.fixture(scope="module")
def ctx(workspace):
    return Context(workspace, "tiny-llama")


# -- figure builders ------------------------------------------------------------------------------
def test_attention_heatmap_hides_first_token_and_escapes_labels():
    p = np.tril(np.ones((4, 4), np.float32))
    p /= p.sum(-1, keepdims=True)
    tokens = ["<b>", "a", "<script>x</script>", "c"]
    full = figures.attention_heatmap(p, tokens, "t", show_first=True)
    assert np.asarray(full.data[0].z).shape == (4, 4)
    assert full.data[0].x[0] == "0:&lt;b&gt;" and "<script>" not in "".join(full.data[0].x)
    cut = figures.attention_heatmap(p, tokens, "t", show_first=False)
    assert np.asarray(cut.data[0].z).shape == (3, 3)
    assert cut.data[0].x[0].startswith("1:") and cut.data[0].zmax == pytest.approx(p[1:, 1:].max())


def test_attention_multiples_are_uint8_scaled_per_head():
    rng = np.random.default_rng(0)
    p = rng.random((5, 6, 6)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    fig = figures.attention_multiples(p, "layer", show_first=False, cols=3)
    assert len(fig.data) == 5
    for h, trace in enumerate(fig.data):
        z = np.asarray(trace.z)
        assert z.dtype == np.uint8 and z.shape == (5, 5) and z.max() == 255
        assert f"max {p[h, 1:, 1:].max():.2f}" in fig.layout.annotations[h].text
    payload = fig.to_json()
    assert '"bdata"' in payload  # sent as a base64 typed array, not a list of numbers


def test_feature_figures():
    density = np.array([0.0, 1e-4, 1e-3, 1e-2, 1e-2])
    fig = figures.density_histogram(density, bins=4)
    assert sum(fig.data[0].y) == 4 and "1 dead of 5" in fig.layout.title.text
    hist = figures.activation_histogram(np.linspace(0, 2, 5), np.array([4, 3, 2, 1]), "h")
    assert list(hist.data[0].y) == [4, 3, 2, 1] and list(hist.data[0].x) == pytest.approx([0.25, 0.75, 1.25, 1.75])
    bars = figures.logit_bars(["a", "<i>"], [2.0, 1.0], ["z"], [-1.0])
    assert [len(t.x) for t in bars.data] == [1, 2] and bars.data[1].y[1] == "1:&lt;i&gt;"
    assert figures.tensor_figure("x", np.zeros((2, 2, 2))) is None
    assert figures.tensor_figure("x", np.zeros(3)).data[0].type == "scatter"


def test_standalone_html_is_offline(workspace):
    lens = Result.read(workspace / "lens" / "lens")
    page = figures.standalone_html(lens.figure().to_dict())
    assert page.lower().startswith("<!doctype html>") and "Plotly" in page
    assert len(page) > 3_000_000  # plotly.js inlined
    assert not any(f'src="{scheme}' in page for scheme in ("http://", "https://", "//"))
    # figures coming back from the browser hold base64 typed arrays; they must export too
    multiples = json.loads(figures.attention_multiples(np.ones((2, 3, 3), np.float32) / 3, "t").to_json())
    assert "bdata" in figures.standalone_html(multiples)


# -- attention ------------------------------------------------------------------------------------
def test_attention_patterns_saved_and_read_per_layer(tiny_llama, workspace, ctx):
    saved = Result.read(workspace / "attention" / "attn")
    L, H, T = tiny_llama.cfg.n_layers, tiny_llama.cfg.n_heads, len(saved.tokens)
    assert saved.pattern.shape == (L, H, T, T) and saved.pattern.dtype == torch.float16
    assert torch.allclose(saved.pattern.float().sum(-1), torch.ones(L, H, T), atol=1e-2)
    assert saved.to_frame().shape == (L * H, 4) and saved.sink().shape == (L, H)
    source = saved_source(ctx, "attn")
    assert (source["n_layers"], source["n_heads"], source["tokens"]) == (L, H, saved.tokens)
    tokens = tiny_llama.to_tokens(saved.prompt, prepend_bos=False)
    for layer in range(L):
        live = layer_pattern(tiny_llama, tokens, layer)
        assert np.allclose(source_layer(ctx, source, layer), saved.pattern[layer].float().numpy())
        assert np.allclose(live, saved.pattern[layer].float().numpy(), atol=2e-3)
    with pytest.raises(InterpError, match="out of range"):
        source_layer(ctx, source, L)


def test_live_prompts_are_capped(ctx, monkeypatch):
    from dashboards import attention

    assert live_source(ctx, "abc")["tokens"] == ["a", "b", "c"]
    monkeypatch.setattr(attention, "MAX_TOKENS", 8)
    with pytest.raises(InterpError, match="at most 8"):
        live_source(ctx, "a longer prompt")


def test_encode_pattern_round_trip():
    p = np.random.default_rng(1).dirichlet(np.ones(7), size=7).astype(np.float32)
    import base64

    back = np.frombuffer(base64.b64decode(encode_pattern(p)), dtype="<u2").reshape(7, 7) / 65535
    assert np.abs(back - p).max() < 1e-4


# -- result pages ---------------------------------------------------------------------------------
def test_every_saved_result_has_a_page(ctx):
    home = texts(render(ctx, "/", ""))
    for href in ("/result/lens/lens", "/result/attention/attn", "/result/toy/toy", "/features/syn"):
        assert href in home
    lens = texts(render(ctx, "/result/lens/lens", ""))
    assert "Direct logit attribution" in lens and '"type": "Graph"' in lens and "Download HTML" in lens
    assert "<script>window.__pwned=1</script>" in lens  # kept as text in a P, never as markup
    assert '"type": "DataTable"' in texts(render(ctx, "/result/attention/attn", ""))
    toy = texts(render(ctx, "/result/toy/toy", ""))  # no view registered: generic page
    assert "toy" not in VIEWS and '"type": "Graph"' in toy and "attention?prompt=toy+prompt" in toy


def test_the_sample_workspace_holds_every_kind(workspace):
    assert len(KINDS) >= 20 and "toy" not in KINDS
    assert sorted(p.parent.name for p in workspace.glob("*/sample") if (p / "result.json").is_file()) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_page_with_its_figure(ctx, workspace, kind):
    assert Result.read(workspace / kind / "sample").figure().data  # the figure builder, on the saved result
    page = texts(render(ctx, f"/result/{kind}/sample", ""))
    assert f"{kind}: sample" in page and '"type": "Graph"' in page and '"type": "DataTable"' in page
    assert "message error" not in page and "message info" not in page  # no section failed or is missing


def test_edit_page_compares_before_and_after(ctx, workspace):
    result = Result.read(workspace / "edit" / "sample")
    cases = edit_cases(result)
    pre, post = (result.cases[result.cases.phase == p].reset_index(drop=True) for p in ("pre", "post"))
    assert len(cases) == len(pre) == len(post) == 1
    row = cases.iloc[0]
    assert row["prompt"] == "The Eiffel Tower is located in the city of" and row["target_new"] == " Rome"
    assert row["target_true"] == result.requests[0]["requested_rewrite"]["target_true"]["str"]
    assert (row["efficacy before"], row["efficacy after"]) == (pre.efficacy[0], post.efficacy[0])
    assert (row["generation before"], row["generation after"]) == (pre.generation[0], post.generation[0])
    assert all(MARKUP in g for g in (pre.generation[0], post.generation[0]))

    tree = render(ctx, "/result/edit/sample", "")
    page = texts(tree)
    assert "Scores before (pre) and after (post)" in page and "Per case, before and after" in page
    shown = [p.children for p in components(tree, "Pre") if p.className == "generation"]
    assert shown == [pre.generation[0], post.generation[0]]  # plain text children, which React escapes
    assert "dangerously" not in page and '"type": "Markdown"' not in page


def test_trace_page_shows_the_kinds_side_by_side_and_their_peaks(ctx, workspace):
    result = Result.read(workspace / "trace" / "sample")
    kinds, (T, L) = list(result.scores), result.scores["hidden"].shape  # saved in the paper's order
    assert kinds == ["hidden", "mlp", "attn"] and trace_peaks(result).kind.tolist() == kinds
    assert [trace.xaxis for trace in result.figure().data] == ["x", "x2", "x3"]  # three heatmaps side by side
    peaks = trace_peaks(result).set_index("kind")
    for kind in kinds:
        grid = trace_grid(result, kind)
        assert grid.shape == (T, L + 3) and grid.token.tolist() == result.tokens
        assert grid[[f"L{l}" for l in range(L)]].to_numpy() == pytest.approx(result.scores[kind].numpy())
        assert grid.subject.sum() == result.subject_range[1] - result.subject_range[0]
        best = grid[[f"L{l}" for l in range(L)]].stack().idxmax()
        assert (peaks.loc[kind, "position"], f"L{peaks.loc[kind, 'layer']}") == best
    groups = trace_groups(result)
    assert len(groups) == 6 * len(kinds) and groups.iloc[-1]["group"] == "last token"
    page = texts(render(ctx, "/result/trace/sample", ""))
    assert "Where each kind peaks" in page and "attention?prompt=The+Eiffel+Tower+is+in+Paris" in page
    assert all(f"{kind}: restored probability per token and layer" in page for kind in kinds)


def test_registering_a_view_replaces_the_generic_page(ctx):
    @register_view("toy")
    def toy_view(result, entry, ctx):
        return [f"best score {float(result.scores.max()):.1f}"] + generic_view(result, entry, ctx)

    try:
        assert "best score 3.0" in texts(render(ctx, "/result/toy/toy", ""))
    finally:
        del VIEWS["toy"]


def test_unknown_kind_shows_stored_data(ctx, workspace):
    folder = workspace / "mystery" / "m1"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(
        {"kind": "mystery", "json": {"note": "<b>hi</b>"}, "tensors": [], "tensor_dicts": [], "frames": []}))
    page = texts(render(ctx, "/result/mystery/m1", ""))
    assert "No module registers results of kind 'mystery'" in page and "<b>hi</b>" in page


def test_bad_paths_and_broken_workspaces_give_messages(ctx, workspace, tmp_path):
    for path in ("/result/../etc", "/result/lens/..", "/features/..", "/features/syn/99999", "/result/lens/nope",
                 "/nowhere"):
        page = texts(render(ctx, path, ""))
        assert "message error" in page and "Traceback" not in page, path
    with pytest.raises(InterpError, match="outside the workspace"):
        ctx.inside("..", "etc", "passwd")
    missing = Context(tmp_path / "absent")
    assert "does not exist yet" in texts(render(missing, "/", ""))
    half = tmp_path / "half"
    (half / "lens" / "interrupted").mkdir(parents=True)
    (half / "sae_features" / "partial").mkdir(parents=True)  # no sae.json yet: not listed
    (half / "sae_features" / "broken").mkdir()
    (half / "sae_features" / "broken" / "sae.json").write_text("{}")
    (half / "sae_features" / "broken" / "features.parquet").write_bytes(b"not parquet")
    page = texts(render(Context(half), "/", ""))
    assert "Skipped 1 incomplete folder" in page and "partial" not in page.split("SAE features")[-1]
    assert "half-written" in texts(render(Context(half), "/features/broken", ""))


# -- feature store and pages ----------------------------------------------------------------------
def test_feature_search_sort_and_contexts(ctx, workspace):
    fs = load_feature_set(ctx, "syn")
    frame = pq.read_table(workspace / "sae_features" / "syn" / "features.parquet").to_pandas()
    by_density = fs.order("density")
    assert len(by_density) == 512 and np.all(np.diff(frame.density.to_numpy()[by_density]) <= 0)
    assert fs.search("7", "density").tolist() == [7]
    hits = fs.search(HOSTILE_TOKEN[:8], "feature")
    expected = [i for i, toks in enumerate(frame.top_tokens) if any("<script>" in t for t in toks)]
    assert 0 in hits and hits.tolist() == expected
    assert fs.search("no such token at all", "density").size == 0
    contexts = fs.contexts(3)
    assert set(contexts.feature) == {3} and contexts.group.iloc[0] == "top" and len(contexts) == 4 + 2 * 2
    assert list(contexts.group_rank) == sorted(contexts.group_rank)
    dead = int(frame.feature[frame.density == 0].iloc[0])
    assert fs.contexts(dead).empty
    with pytest.raises(InterpError, match="not in syn"):
        fs.row(512)


def test_contexts_read_only_the_needed_row_groups(ctx, workspace):
    fs = load_feature_set(ctx, "syn")
    meta = pq.read_metadata(workspace / "sae_features" / "syn" / CONTEXTS_FILE)
    assert meta.num_row_groups > 4
    spans = [(lo, hi) for _, lo, hi in fs._groups]
    assert sum(lo <= 300 <= hi for lo, hi in spans) == 1


def test_feature_list_pages_and_feature_page(ctx):
    first = texts(render(ctx, "/features/syn", ""))
    assert "page 1 of 11 (512 features)" in first and "/features/syn?page=1" in first
    last = texts(render(ctx, "/features/syn", "?page=10&sort=feature"))
    assert "page 11 of 11" in last and '"/features/syn/511"' in last
    found = texts(render(ctx, "/features/syn", "?q=" + HOSTILE_TOKEN[:8]))
    assert '"/features/syn/0"' in found and HOSTILE_TOKEN in found
    page = texts(render(ctx, "/features/syn/0", ""))
    assert "Feature 0 of syn" in page and "Activation density" in page and "top (4)" in page
    assert '"href": "/features/syn/1"' in page and HOSTILE_TOKEN in page


def test_features_on_text_runs_the_saved_sae(tmp_path, tiny_llama):
    from sae_lens import StandardSAE, StandardSAEConfig

    ws = tmp_path / "ws"
    folder = write_synthetic_features(ws, "live", n_features=32, n_top=2, quantiles=1, per_quantile=1,
                                      meta={"hook": "blocks.1.hook_resid_post", "d_in": tiny_llama.cfg.d_model})
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=tiny_llama.cfg.d_model, d_sae=32))
    sae.save_model(folder / "sae")
    context = Context(ws, "tiny-llama")
    tokens, ids, values = features_on_text(context, load_feature_set(context, "live"), "hello world", k=3)
    assert len(tokens) == ids.shape[0] == values.shape[0] and ids.shape[1] == 3
    _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens("hello world", prepend_bos=False),
                                         names_filter="blocks.1.hook_resid_post")
    expected = sae.encode(cache["blocks.1.hook_resid_post"][0]).topk(3, dim=-1)
    assert torch.equal(ids, expected.indices) and torch.allclose(values, expected.values)
    bad = write_synthetic_features(ws, "bad", n_features=8, meta={"hook": "blocks.9.hook_nothing"})
    sae.save_model(bad / "sae")
    with pytest.raises(InterpError, match="is not a hook"):
        features_on_text(context, load_feature_set(context, "bad"), "hi")


# -- serving and CLI ------------------------------------------------------------------------------
def test_server_takes_a_free_port_and_serves_only_its_files(workspace):
    import urllib.error
    import urllib.request

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with Server(create_app(workspace), port=port) as server:
            assert server.port != port and server.url.startswith("http://127.0.0.1:")
            page = urllib.request.urlopen(server.url, timeout=10).read().decode()
            for probe in ("assets/..%2Fapp.py", "assets/../app.py", "_dash-component-suites/dash/..%2F..%2Fapp.py",
                          "static/..%2Fapp.py"):
                with pytest.raises(urllib.error.HTTPError):
                    urllib.request.urlopen(server.url + probe, timeout=10)
    assert "_dash-renderer" in page
    assert not [s for s in page.split("<script")[1:] if 'src="http' in s or "src='http" in s or 'src="//' in s]


def test_cli_dashboard_needs_a_workspace(capsys):
    from interp.cli import main

    assert main(["dashboard"]) == 2
    assert "--workspace" in capsys.readouterr().err
    assert main(["dashboard", "--workspace", "ws", "--port", "70000"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_dashboard_stops_on_ctrl_c_even_when_its_parent_ignores_it(tmp_path):
    """A background job inherits SIGINT ignored; the server must still stop on Ctrl-C (exit 130)."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "interp", "dashboard", "--workspace", str(tmp_path), "--port", "0",
                             "--json", "--model", "tiny-llama"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert json.loads(proc.stdout.readline())["url"].startswith("http://127.0.0.1:")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.communicate()

"""Attribution graphs: the transposed pass against exact identities and a plain autograd Jacobian of the
frozen TransformerLens model, the head split, circuit-tracer pruning invariants, the graph-file schema,
interventions, the CLI's errors, and the real model."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from circuits.graph import AttributionGraph, GraphConfig, check_graph, graph
from circuits.graph.attribute import attribute
from circuits.graph.build import attribution, load_set
from circuits.graph.check import run_checks, spliced_logit
from circuits.graph.frozen import Frozen, capture
from circuits.graph.heads import endpoints, split_links
from circuits.graph.naive import NaiveAttribution
from circuits.graph.nodes import find_nodes
from circuits.graph.prune import Layout, graph_scores, influence, normalize, prune
from circuits.graph.result import EMBEDDING, ERROR, FEATURE, LOGIT, NODE_TYPES
from interp.cli import main
from interp.errors import InterpError
from interp.sae.sets import load_transcoder_set, transcoder_folders, write_random_set
from interp.tokens import encode
from transcoder_sets import train_tiny_set

PROMPT = "The Eiffel Tower is in Paris"


@pytest.fixture(scope="module")
def llama_set(tiny_llama, tmp_path_factory):
    """Transcoders trained briefly on every layer of tiny-llama."""
    return train_tiny_set(tiny_llama, tmp_path_factory.mktemp("llama-set"), [0, 1, 2])


@pytest.fixture(scope="module")
def gpt2():
    """tiny-gpt2 (LayerNorm with bias, learned positions) with random non-zero biases everywhere, so every
    constant term of the graph is exercised (a fresh copy: the session model stays untouched)."""
    from interp.models import load_model

    model = load_model("tiny-gpt2")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def gpt2_set(gpt2, tmp_path_factory):
    """A partial set: random transcoders on layers 0 and 2 only (layer 1's MLP is all error nodes)."""
    return write_random_set(gpt2, tmp_path_factory.mktemp("gpt2-set"), [0, 2], k=8, expansion=4)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def case(request, tiny_llama, llama_set, gpt2, gpt2_set):
    """(model, {layer: transcoder}, Attribution of PROMPT with every active feature)."""
    model, folder = (tiny_llama, llama_set) if request.param == "llama" else (gpt2, gpt2_set)
    tcs = load_transcoder_set(folder, model)
    return model, tcs, attribution(model, PROMPT, tcs, GraphConfig(batch_size=37))


def identity_error(att) -> torch.Tensor:
    """Per target row: |incoming edges + constants + dropped - value| relative to the size of its terms."""
    rows = ~torch.isnan(att.values)
    total = att.adjacency.sum(1) + att.constants + att.dropped
    size = att.adjacency.abs().sum(1) + att.constants.abs() + att.dropped.abs() + att.values.abs()
    return ((total - att.values).abs() / size)[rows]


def test_identity_edges_plus_constants_equal_values(case):
    model, tcs, att = case
    assert att.n_selected > 50 and att.nodes.n_logits >= 1
    assert identity_error(att).max() < 1e-5
    # the values are what the real forward pass computes
    tokens = encode(model, PROMPT)
    logits = model(tokens)[0, -1]
    k = att.nodes.logit_ids
    torch.testing.assert_close(att.values[-len(k):], logits[k] - logits.mean(), rtol=1e-5, atol=1e-5)


def test_identity_holds_with_max_feature_nodes(case):
    model, tcs, full = case
    att = attribute(full.frozen, full.nodes, max_feature_nodes=20, batch_size=8)
    assert att.n_selected == 20 and att.dropped.abs().max() > 0
    assert identity_error(att).max() < 1e-5
    # they are (nearly) the 20 most influential features of the full graph, as circuit-tracer picks them
    top = torch.argsort(influence(normalize(full.adjacency), full.logit_weights())[:full.n_selected], descending=True)
    assert len(set(top[:20].tolist()) & set(att.selected.tolist())) >= 16
    # the kept rows are the full graph's rows restricted to the kept features
    S, F = att.n_selected, full.n_selected
    rows = att.selected
    torch.testing.assert_close(att.adjacency[:S, :S], full.adjacency[rows][:, rows])
    torch.testing.assert_close(att.adjacency[:S, S:], full.adjacency[rows][:, F:])


def test_edges_equal_autograd_jacobian_of_frozen_model(case):
    model, tcs, att = case
    naive = NaiveAttribution(model, att.frozen, att.nodes)
    N, K = att.n_nodes, att.nodes.n_logits
    checked = 0
    for j in range(0, att.n_selected, 11):
        value = naive.feature_value(tcs, int(att.selected[j]))
        assert abs(float(value) - float(att.values[j])) < 1e-5
        row = naive.row(value)
        torch.testing.assert_close(att.adjacency[j], row, rtol=1e-4, atol=1e-5 * float(row.abs().max()))
        checked += 1
    for k in range(K):
        row = naive.row(naive.logit_value(k))
        torch.testing.assert_close(att.adjacency[N - K + k], row, rtol=1e-4, atol=1e-5 * float(row.abs().max()))
    assert checked > 5


def test_head_split_sums_and_single_hops(case):
    model, tcs, att = case
    S = att.n_selected
    nonzero = att.adjacency.nonzero()
    edges = nonzero[torch.randperm(len(nonzero), generator=torch.Generator().manual_seed(0))[:400]]
    residual, heads = split_links(att, edges)
    weight = att.adjacency[edges[:, 0], edges[:, 1]]
    multi_hop = weight - residual - heads.sum((1, 2))
    # a link crossing exactly one attention layer has no multi-hop part
    nd = att.nodes
    _, t_layer, _ = endpoints(att, edges[:, 0], as_target=True)
    _, s_layer, _ = endpoints(att, edges[:, 1], as_target=False)
    one_layer = t_layer - s_layer == 1
    assert one_layer.sum() > 5
    scale = weight.abs().max()
    assert (multi_hop[one_layer].abs() < 1e-5 * scale).all()
    assert (multi_hop[~one_layer].abs() > 1e-6 * scale).any()  # it is not zero by construction
    # a single-hop term equals the Jacobian of the frozen model with every pattern but that head's zeroed
    e = int(torch.nonzero(~one_layer & (heads.abs().sum((1, 2)) > 0))[0])
    t, s = edges[e].tolist()
    layer, head = divmod(int(heads[e].abs().argmax()), heads.shape[2])
    layers = []
    for l, f in enumerate(att.frozen.layers):
        kept = torch.zeros_like(f.pattern)
        if l == layer:
            kept[head] = f.pattern[head]
        layers.append(dataclasses.replace(f, pattern=kept))
    only = NaiveAttribution(model, dataclasses.replace(att.frozen, layers=layers), nd)
    value = (only.feature_value(tcs, int(att.selected[t])) if t < S
             else only.logit_value(t - (att.n_nodes - nd.n_logits)))
    all_col = int(att.selected[s]) if s < S else s - S + nd.n_features
    expected = float(only.row(value)[all_col])
    assert abs(expected - float(residual[e] + heads[e, layer, head])) < 1e-5 * max(1.0, abs(expected))


def test_pruning_invariants(case):
    model, tcs, att = case
    nd = att.nodes
    layout = Layout(att.n_selected, nd.n_layers * nd.n_pos, nd.n_pos, nd.n_logits)
    weights = att.logit_weights()
    loose = prune(att.adjacency, weights, layout, 0.8, 0.98)
    tight = prune(att.adjacency, weights, layout, 0.5, 0.9)
    full = prune(att.adjacency, weights, layout, 1.0, 1.0)
    assert (tight.node_mask <= loose.node_mask).all() and (loose.node_mask <= full.node_mask).all()
    assert tight.node_mask.sum() < full.node_mask.sum()
    assert set(map(tuple, tight.edges.tolist())) <= set(map(tuple, loose.edges.tolist()))
    influential = loose.node_influence[:att.n_selected] > 0
    assert full.node_mask[:att.n_selected][influential].all()  # threshold 1.0 keeps every influential feature
    assert full.node_mask[layout.tokens.start:].all()
    kept = set(loose.node_mask.nonzero()[:, 0].tolist())
    assert all(t in kept and s in kept for t, s in loose.edges.tolist())
    # scores: pruning can only lose explanation; pruning nothing loses none
    unpruned = graph_scores(att.adjacency, weights, layout)
    for score, whole in zip(graph_scores(att.adjacency, weights, layout, tight.node_mask), unpruned):
        assert 0 <= score <= whole + 1e-6 <= 1 + 1e-6
    keep_all = torch.ones_like(full.node_mask)
    assert graph_scores(att.adjacency, weights, layout, keep_all) == pytest.approx(unpruned)
    # cumulative influence: the most influential node has the smallest share, and shares rise to 1
    order = torch.argsort(loose.node_influence, descending=True)
    shares = loose.cumulative[order]
    assert (shares[1:] >= shares[:-1] - 1e-6).all() and abs(float(shares[-1]) - 1) < 1e-5


ID_PATTERNS = {FEATURE: r"\d+_\d+_\d+", ERROR: r"0_\d+_\d+(_error)?", EMBEDDING: r"E_\d+_\d+", LOGIT: r"\d+_\d+_\d+"}


def check_schema(g: AttributionGraph, n_layers: int) -> dict:
    """The circuit-tracer graph-file schema plus our extras; returns the parsed JSON."""
    text = json.dumps(g.to_graph_json(), allow_nan=False)
    data = json.loads(text)
    assert {"metadata", "qParams", "nodes", "links", "scores", "qk"} <= set(data)
    meta = data["metadata"]
    for key in ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "model",
                "transcoders", "n_layers", "position0_note"):
        assert key in meta
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    T = len(meta["prompt_tokens"])
    for n in data["nodes"]:
        assert n["feature_type"] in NODE_TYPES
        assert re.fullmatch(ID_PATTERNS[n["feature_type"]], n["node_id"]), n["node_id"]
        assert 0 <= n["ctx_idx"] < T and n["jsNodeId"]
        if n["feature_type"] == FEATURE:
            layer, index, pos = map(int, n["node_id"].split("_"))
            assert (str(layer), index, pos) == (n["layer"], n["feature"], n["ctx_idx"]) and pos >= 1
            assert n["activation"] > 0 and 0 < n["influence"] <= 1 + 1e-6
            assert len(n["de_embedding"]) == 10 and len(n["top_logits"]) == 10 and n["sae_path"]
        if n["feature_type"] == LOGIT:
            assert n["node_id"].startswith(f"{n_layers + 1}_") and n["ctx_idx"] == T - 1 and n["layer"] == str(n_layers + 1)
        if n["feature_type"] == EMBEDDING:
            assert n["layer"] == "E"
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    assert sum(n["feature_type"] == EMBEDDING for n in data["nodes"]) == T
    infl = [n["influence"] for n in data["nodes"] if n["feature_type"] != LOGIT]
    assert infl == sorted(infl)
    known = set(ids)
    for link in data["links"]:
        assert link["source"] in known and link["target"] in known and link["weight"] != 0
        parts = link["residual"] + sum(h[2] for h in link["heads"]) + link["other_heads"] + link["multi_hop"]
        assert abs(parts - link["weight"]) < 1e-5 * max(1.0, abs(link["weight"]))
        if "invariant" in link:
            assert abs(link["invariant"] * link["dependent"] - link["weight"]) < 1e-6 * max(1.0, abs(link["weight"]))
    for value in data["scores"].values():
        assert 0 <= value <= 1
    assert data["qk"] and all(q["top"] for q in data["qk"][:3])
    return data


def test_graph_json_schema_and_partial_set(gpt2, gpt2_set):
    g = graph(gpt2, PROMPT, gpt2_set, GraphConfig(node_threshold=0.9))
    data = check_schema(g, gpt2.cfg.n_layers)
    assert set(data["metadata"]["transcoders"]) == {"0", "2"}
    assert "layers without a transcoder (1)" in data["metadata"]["position0_note"]
    features = [n for n in data["nodes"] if n["feature_type"] == FEATURE]
    assert features and {n["layer"] for n in features} <= {"0", "2"}
    assert "position embedding" in data["metadata"]["embedding_note"]
    frame = g.to_frame()
    assert len(frame) == len(g.nodes) and frame["influence"].dropna().is_monotonic_increasing
    g.figure()
    assert "replacement" in g.summary()


def test_graph_saves_and_loads(tiny_llama, llama_set, tmp_path):
    g = graph(tiny_llama, PROMPT, llama_set)
    back = AttributionGraph.read(g.save(tmp_path))  # by class: another test module may register a stand-in kind
    assert isinstance(back, AttributionGraph) and back.to_graph_json() == g.to_graph_json()
    check_schema(back, tiny_llama.cfg.n_layers)


def test_spliced_model_without_changes_is_the_clean_model(case):
    model, tcs, att = case
    clean = float(att.values[-att.nodes.n_logits])
    for frozen in (False, True):
        assert abs(float(spliced_logit(model, att, tcs, [], frozen=frozen)[0]) - clean) < 1e-4


def test_frozen_checks_match_predictions_where_the_graph_is_exact(case):
    """With patterns and norms frozen, a feature with no later features moves the logit exactly as predicted."""
    model, tcs, att = case
    checks, rho = run_checks(model, att, tcs, n=40, frozen=True)
    assert rho > 0.95  # earlier features differ only where a later feature switches on or off
    last = str(max(tcs))
    exact = [c for c in checks if c["node_id"].split("_")[0] == last]
    assert len(exact) >= 3
    for c in exact:  # observed is a difference of two float32 logits: a few ulps of slack
        assert abs(c["predicted"] - c["observed"]) <= 1e-4 * abs(c["predicted"]) + 2e-6


def test_live_checks_follow_the_graph(tiny_llama, llama_set):
    g = check_graph(tiny_llama, (PROMPT, llama_set), n=10)
    assert len(g.checks) == 30
    assert g.metadata["check_spearman"] > 0.5
    again = check_graph(tiny_llama, g, n=10)  # from a graph: rebuilt from its metadata
    assert [c["predicted"] for c in again.checks] == pytest.approx([c["predicted"] for c in g.checks])


def test_target_logit_is_the_one_asked_for(tiny_llama, llama_set):
    g = graph(tiny_llama, PROMPT, llama_set, GraphConfig(target="s"))
    logits = [n for n in g.nodes if n["feature_type"] == LOGIT]
    assert len(logits) == 1 and logits[0]["is_target_logit"]
    assert logits[0]["feature"] == tiny_llama.to_single_token("s") and logits[0]["clerp"].startswith('Output "s"')


def test_transcoder_set_errors(tiny_llama, llama_set, gpt2_set, tmp_path):
    assert list(transcoder_folders(llama_set)) == [0, 1, 2]
    assert list(transcoder_folders(llama_set / "layer-01")) == [1]  # one transcoder folder is a set too
    with pytest.raises(InterpError, match="no transcoders"):
        transcoder_folders(tmp_path)
    import shutil

    twice = tmp_path / "twice"
    shutil.copytree(llama_set / "layer-01", twice / "a")
    shutil.copytree(llama_set / "layer-01", twice / "b")
    with pytest.raises(InterpError, match="both transcoders of layer 1"):
        transcoder_folders(twice)
    with pytest.raises(InterpError, match="trained on tiny-gpt2"):
        load_transcoder_set(gpt2_set, tiny_llama)
    with pytest.raises(InterpError, match="in memory"):
        check_graph(tiny_llama, graph(tiny_llama, "ab", load_set(tiny_llama, llama_set)[0]), n=1)


@pytest.mark.parametrize("args, message", [
    (["", "--transcoders", "{set}"], "prompt is empty"),
    (["hi", "--transcoders", "{missing}"], "does not exist"),
    (["hi", "--transcoders", "{empty}"], "no transcoders"),
    (["hi", "--transcoders", "{other}"], "trained on tiny-gpt2"),
    (["hi", "--transcoders", "{set}", "--target", "xyz"], "is 3 tokens"),
    (["hi", "--transcoders", "{set}", "--node-threshold", "0"], "--node-threshold"),
    (["hi", "--transcoders", "{set}", "--edge-threshold", "1.5"], "--edge-threshold"),
    (["hi", "--transcoders", "{set}", "--max-feature-nodes", "0"], "--max-feature-nodes"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message, llama_set, gpt2_set, tmp_path, capsys):
    paths = {"set": llama_set, "missing": tmp_path / "nope", "empty": tmp_path, "other": gpt2_set}
    argv = ["graph", *[a.format(**paths) for a in args], "--model", "tiny-llama"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_json(llama_set, capsys):
    assert main(["graph", PROMPT, "--transcoders", str(llama_set), "--model", "tiny-llama", "--json",
                 "--check", "2", "--max-feature-nodes", "50"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "attribution_graph" and len(data["checks"]) == 6
    assert data["metadata"]["n_graph_features"] == 50
    json.dumps(data, allow_nan=False)


@pytest.mark.real
def test_real_model_fact_graph(smollm, tmp_path):
    """The default model with random transcoders on three layers: " Paris" is the target logit and every
    target's edges + constants add up to its value."""
    folder = write_random_set(smollm, tmp_path / "set", [2, 12, 24], k=16)
    tcs = load_transcoder_set(folder, smollm)
    config = GraphConfig(target=" Paris")
    att = attribution(smollm, "The Eiffel Tower is located in the city of", tcs, config)
    assert identity_error(att).max() < 1e-4
    naive = NaiveAttribution(smollm, att.frozen, att.nodes)
    row = naive.row(naive.logit_value(0))
    torch.testing.assert_close(att.adjacency[-1], row, rtol=1e-3, atol=1e-4 * float(row.abs().max()))
    g = graph(smollm, "The Eiffel Tower is located in the city of", folder, config)
    (logit,) = [n for n in g.nodes if n["feature_type"] == LOGIT]
    assert logit["is_target_logit"] and "Paris" in logit["clerp"] and logit["token_prob"] > 0.1
    check_schema(g, smollm.cfg.n_layers)


def test_frozen_capture_matches_model(tiny_llama):
    """The frozen quantities are the forward pass's: reading resid_post back from them reproduces it."""
    tokens = encode(tiny_llama, PROMPT)
    fr: Frozen = capture(tiny_llama, tokens)
    _, cache = tiny_llama.run_with_cache(tokens)
    torch.testing.assert_close(fr.layers[1].pattern, cache["blocks.1.attn.hook_pattern"][0])
    torch.testing.assert_close(fr.embed, cache["blocks.0.hook_resid_pre"][0])
    nodes = find_nodes(fr, {})
    assert nodes.n_features == 0 and torch.equal(nodes.error_write[2], cache["blocks.2.hook_mlp_out"][0])

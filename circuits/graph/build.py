"""`interp graph`: a prompt's attribution graph over a transcoder set, pruned, annotated and saved in
circuit-tracer's graph-file schema (see `circuits.graph.result`).

    from circuits.graph import graph, GraphConfig
    g = graph(model, "The Eiffel Tower is located in the city of", "runs/tc", GraphConfig(target=" Paris", check=10))
    print(g.summary()); json.dumps(g.to_graph_json())
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from circuits.graph import heads as attention
from circuits.graph.attribute import Attribution, attribute
from circuits.graph.check import run_checks
from circuits.graph.frozen import Frozen, capture
from circuits.graph.nodes import Nodes, find_nodes
from circuits.graph.prune import Layout, graph_scores, influence, normalize, prune
from circuits.graph.result import (EMBEDDING, ERROR, FEATURE, LOGIT, AttributionGraph, embedding_id, error_id,
                                   feature_id, logit_id)
from interp.errors import InterpError
from interp.tokens import encode

TOP_TOKENS = 10  # de-embedding and top-logit tokens listed per feature
MAX_FEATURE_NODES = 12_000


@dataclasses.dataclass(kw_only=True)
class GraphConfig:
    """How to build, prune and check a graph (circuit-tracer's defaults)."""

    target: str | None = None  # attribute this token's logit alone (default: the logits covering 0.95)
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    # features attributed, most influential first (None: every active one). The default keeps the dense
    # adjacency of a long prompt near 1 GB; a 10-token prompt on the default model has about 8,600.
    max_feature_nodes: int | None = MAX_FEATURE_NODES
    batch_size: int = 512  # targets per transposed pass
    check: int = 0  # interventions on this many of the most influential features
    frozen_check: bool = False  # interventions with attention patterns and norm scales frozen

    def __post_init__(self):
        for name in ("node_threshold", "edge_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise InterpError(f"--{name.replace('_', '-')} must be in (0, 1] (got {value!r})")
        for name, low in (("max_feature_nodes", 1), ("batch_size", 1), ("check", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InterpError(f"--{name.replace('_', '-')} must be a whole number >= {low} (got {value!r})")
        if self.target is not None and not self.target:
            raise InterpError("--target is empty; pass one token, e.g. ' Paris'")


def target_token(model, target: str) -> int:
    """The vocabulary id of `target`, which must be exactly one token."""
    ids = model.to_tokens(target, prepend_bos=False)[0].tolist()
    pieces = [model.tokenizer.decode([i]) for i in ids]
    if len(ids) != 1:
        raise InterpError(f"--target {target!r} is {len(ids)} tokens {pieces}; pass a single token, e.g. {pieces[0]!r}")
    if pieces[0] != target:
        raise InterpError(f"--target {target!r} is not in the vocabulary (it reads back as {pieces[0]!r}); "
                          "pass a single vocabulary token")
    return ids[0]


def _display(token: str) -> str:
    """Token text as circuit-tracer shows it (newlines, tabs and carriage returns made visible)."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def load_set(model, transcoders: str | Path | dict[int, object]) -> tuple[dict[int, object], dict[int, str]]:
    """({layer: transcoder}, {layer: folder}) from a set folder, or a given {layer: transcoder} dict (folders "")."""
    from interp.sae.sets import load_transcoder_set, transcoder_folders

    if isinstance(transcoders, dict):
        return dict(sorted(transcoders.items())), {layer: "" for layer in transcoders}
    folders = transcoder_folders(transcoders)
    return load_transcoder_set(transcoders, model), {layer: str(f) for layer, f in folders.items()}


def attribution(model, prompt: str, transcoders: dict[int, object], config: GraphConfig,
                progress: Callable[[str], None] | None = None) -> Attribution:
    """The unpruned graph of `prompt` (frozen model, nodes, edges)."""
    tokens = encode(model, prompt)
    target = target_token(model, config.target) if config.target is not None else None
    frozen = capture(model, tokens)
    nodes = find_nodes(frozen, transcoders, target)
    return attribute(frozen, nodes, config.max_feature_nodes, config.batch_size, progress)


def graph(model, prompt: str, transcoders: str | Path | dict[int, object], config: GraphConfig | None = None,
          progress: Callable[[str], None] | None = None) -> AttributionGraph:
    """The pruned, annotated attribution graph of `prompt` over a transcoder set (a folder or {layer: tc})."""
    config = config or GraphConfig()
    began = time.perf_counter()
    tcs, folders = load_set(model, transcoders)
    att = attribution(model, prompt, tcs, config, progress)
    set_path = None if isinstance(transcoders, dict) else str(transcoders)
    return describe(model, att, tcs, folders, set_path, prompt, config, began)


def check_graph(model, graph_or_inputs: AttributionGraph | tuple[str, str | Path], n: int = 10,
                frozen: bool = False, config: GraphConfig | None = None) -> AttributionGraph:
    """Interventions on the `n` most influential features of a graph (or of the graph of (prompt, set folder)),
    in the spliced model: the graph returned carries them in `checks` (predicted beside observed) and their
    Spearman correlation in metadata["check_spearman"]."""
    if isinstance(graph_or_inputs, AttributionGraph):
        meta = graph_or_inputs.metadata
        prompt, set_path = meta["prompt"], meta.get("transcoder_set")
        if not set_path:
            raise InterpError("the graph was built from transcoders in memory; pass (prompt, set folder) instead")
        config = config or GraphConfig(target=meta.get("target"), node_threshold=meta["node_threshold"],
                                       edge_threshold=meta["edge_threshold"],
                                       max_feature_nodes=meta.get("max_feature_nodes"))
    else:
        prompt, set_path = graph_or_inputs
        config = config or GraphConfig()
    return graph(model, prompt, set_path, dataclasses.replace(config, check=n, frozen_check=frozen))


@torch.no_grad()
def _top_tokens(model, scores: torch.Tensor) -> list[list[str]]:
    """The TOP_TOKENS highest-scoring vocabulary tokens of each row of `scores` [n, V], as text."""
    ids = scores.topk(min(TOP_TOKENS, scores.shape[1]), dim=1).indices.tolist()
    return [[model.tokenizer.decode([i]) for i in row] for row in ids]


@torch.no_grad()
def feature_tokens(model, frozen: Frozen, nodes: Nodes, transcoders: dict[int, object], features: list[int],
                   chunk: int = 256) -> tuple[list[list[str]], list[list[str]]]:
    """(de-embedding tokens, top-logit tokens) of candidate features `features`.

    De-embedding: tokens whose embedding, alone in the residual stream and normalised as the transcoder's
    input would be (centred for LayerNorm, unit RMS), most raises the feature's pre-activation. Top logits:
    tokens whose logits the feature's decoder row raises most, through the final norm's weight.
    """
    W_E = model.W_E.detach().float()
    W_E = frozen.center(W_E)
    W_E = W_E / W_E.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    de_embedding, top_logits = [], []
    for start in range(0, len(features), chunk):
        part = torch.tensor(features[start:start + chunk], device=nodes.feat_layer.device)
        enc = torch.stack([transcoders[int(l)].W_enc[:, int(i)].detach().float()
                           for l, i in zip(nodes.feat_layer[part], nodes.feat_index[part])])
        dec = torch.stack([transcoders[int(l)].W_dec[int(i)].detach().float()
                           for l, i in zip(nodes.feat_layer[part], nodes.feat_index[part])])
        de_embedding += _top_tokens(model, enc @ W_E.T)
        top_logits += _top_tokens(model, (frozen.center(dec) * frozen.w_final) @ frozen.W_U)
    return de_embedding, top_logits


def describe(model, att: Attribution, transcoders: dict[int, object], folders: dict[int, str],
             set_path: str | None, prompt: str, config: GraphConfig, began: float) -> AttributionGraph:
    """Prune `att`, score it, and write it out as an AttributionGraph (with checks when config.check)."""
    fr, nd = att.frozen, att.nodes
    L, T, K, S = nd.n_layers, nd.n_pos, nd.n_logits, att.n_selected
    timings = {"edges": att.seconds}
    clock = time.perf_counter()
    layout = Layout(S, L * T, T, K)
    weights = att.logit_weights()
    normalized = normalize(att.adjacency)
    node_influence = influence(normalized, weights)
    pruned = prune(att.adjacency, weights, layout, config.node_threshold, config.edge_threshold, node_influence)
    unpruned = graph_scores(att.adjacency, weights, layout, None, normalized, node_influence)
    replacement, completeness = graph_scores(att.adjacency, weights, layout, pruned.node_mask, normalized,
                                             node_influence)
    del normalized
    timings["prune"] = time.perf_counter() - clock

    clock = time.perf_counter()
    token_ids = fr.tokens.tolist()
    str_tokens = [model.tokenizer.decode([t]) for t in token_ids]
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    kept_features = [j for j in kept if j < S]
    de_emb, top_logit = feature_tokens(model, fr, nd, transcoders, [int(att.selected[j]) for j in kept_features])
    extras = {j: (d, t) for j, d, t in zip(kept_features, de_emb, top_logit)}
    cumulative = pruned.cumulative.tolist()
    ids, nodes = {}, []
    for j in kept:
        node = _node(att, j, cumulative[j], str_tokens, lambda t: model.tokenizer.decode([t]))
        if node["feature_type"] == FEATURE:
            layer = int(node["layer"])
            node.update(de_embedding=extras[j][0], top_logits=extras[j][1], sae_path=folders.get(layer, ""))
        ids[j] = node["node_id"]
        nodes.append(node)
    features_ids = {n["node_id"] for n in nodes if n["feature_type"] == FEATURE}
    for node, j in zip(nodes, kept):  # an error id can spell a layer-0 feature's id; keep ids unique
        if node["feature_type"] == ERROR and node["node_id"] in features_ids:
            node["node_id"] = ids[j] = node["node_id"] + "_error"
    nodes.sort(key=lambda n: (n["feature_type"] != LOGIT, n["influence"] if n["influence"] is not None else 2.0))
    timings["nodes"] = time.perf_counter() - clock

    clock = time.perf_counter()
    edges = pruned.edges
    weights_kept = att.adjacency[edges[:, 0], edges[:, 1]]
    residual, head_paths = attention.split_links(att, edges)
    splits = attention.link_attention(weights_kept, residual, head_paths)
    del head_paths
    activation = torch.ones(att.n_nodes, device=weights_kept.device)
    activation[:S] = nd.activation[att.selected]
    links = []
    for (t, s), weight, split, a in zip(edges.tolist(), weights_kept.tolist(), splits, activation[edges[:, 1]].tolist()):
        link = {"source": ids[s], "target": ids[t], "weight": weight}
        if s < S and t < S:
            link.update(invariant=weight / a, dependent=a)
        link.update(split)
        links.append(link)
    target_logit = int(nd.logit_ids[0])
    qk = attention.qk_importance(model, fr.tokens[None], target_logit)
    timings["attention"] = time.perf_counter() - clock

    checks, spearman = [], None
    if config.check:
        clock = time.perf_counter()
        checks, spearman = run_checks(model, att, transcoders, config.check, config.frozen_check, node_influence)
        timings["checks"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - began
    metadata = _metadata(model, att, prompt, str_tokens, folders, config, timings, spearman)
    metadata["transcoder_set"] = set_path
    scores = {"replacement": replacement, "completeness": completeness,
              "replacement_unpruned": unpruned[0], "completeness_unpruned": unpruned[1]}
    return AttributionGraph(metadata=metadata, nodes=nodes, links=links, scores=scores, qk=qk, checks=checks)


def _node(att: Attribution, j: int, cumulative: float, str_tokens: list[str], decode: Callable[[int], str]) -> dict:
    """The circuit-tracer node of graph node j."""
    nd = att.nodes
    S, L, T = att.n_selected, nd.n_layers, nd.n_pos
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
            "influence": cumulative, "activation": None}
    if j < S:
        f = int(att.selected[j])
        layer, index, pos = int(nd.feat_layer[f]), int(nd.feat_index[f]), int(nd.feat_pos[f])
        return {**base, "node_id": feature_id(layer, index, pos), "feature": index, "layer": str(layer),
                "ctx_idx": pos, "feature_type": FEATURE, "jsNodeId": f"{layer}_{index}-0",
                "activation": float(nd.activation[f])}
    rest = j - S
    if rest < L * T:
        layer, pos = divmod(rest, T)
        return {**base, "node_id": error_id(layer, pos), "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "feature_type": ERROR, "jsNodeId": f"{layer}_{pos}-0"}
    rest -= L * T
    if rest < T:
        token = int(att.frozen.tokens[rest])
        return {**base, "node_id": embedding_id(token, rest), "feature": rest, "layer": "E", "ctx_idx": rest,
                "feature_type": EMBEDDING, "jsNodeId": f"E_{token}-{rest}", "clerp": _display(str_tokens[rest])}
    k = rest - T
    token, prob = int(nd.logit_ids[k]), float(nd.logit_probs[k])
    return {**base, "node_id": logit_id(L, token, T - 1), "feature": token, "layer": str(L + 1), "ctx_idx": T - 1,
            "feature_type": LOGIT, "jsNodeId": f"L_{token}-{T - 1}", "token_prob": prob, "is_target_logit": k == 0,
            "influence": None, "clerp": f'Output "{_display(decode(token))}" (p={prob:.3f})'}


def _metadata(model, att: Attribution, prompt: str, str_tokens: list[str], folders: dict[int, str],
              config: GraphConfig, timings: dict, spearman: float | None) -> dict:
    from interp.workspace import slug

    nd = att.nodes
    L = nd.n_layers
    missing = [layer for layer in range(L) if layer not in folders]
    position0 = (f"position 0 ({str_tokens[0]!r}) carries the model's massive activation and transcoders are not "
                 "trained there: its MLP outputs are error nodes at every layer")
    if missing:
        position0 += f"; layers without a transcoder ({', '.join(map(str, missing))}) are one error node per position"
    set_root = {str(Path(f).parent) for f in folders.values() if f}
    return {
        "slug": slug(prompt), "scan": Path(next(iter(set_root))).name if len(set_root) == 1 else "custom",
        "transcoder_list": [folders[layer] for layer in sorted(folders)],
        "prompt_tokens": [_display(t) for t in str_tokens], "prompt": prompt,
        "node_threshold": config.node_threshold, "edge_threshold": config.edge_threshold,
        "max_feature_nodes": config.max_feature_nodes, "target": config.target,
        "model": getattr(model.cfg, "spec", model.cfg.model_name), "n_layers": L,
        "transcoders": {str(layer): folders[layer] for layer in sorted(folders)},
        "position0_note": position0,
        "embedding_note": ("embedding nodes write the token embedding plus the learned position embedding"
                           if model.cfg.positional_embedding_type == "standard" else
                           "embedding nodes write the token embedding (positions enter through rotary attention)"),
        "logit_note": "logit nodes and link weights into them are the logit minus the mean logit over the vocabulary",
        "n_active_features": nd.n_features, "n_graph_features": att.n_selected,
        "seconds": timings, "check_spearman": spearman, "check_frozen": config.frozen_check,
    }

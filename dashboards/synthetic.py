"""A reference writer of FEATURES_SCHEMA.md with random content, for tests and the benchmark.

It shows the layout the SAE statistics writer must produce (column types, contexts sorted by feature,
moderate row groups, sae.json written last into a folder renamed into place).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dashboards.feature_store import CONTEXTS_FILE, FEATURES_DIR, FEATURES_FILE, META_FILE

HOSTILE_TOKEN = "<script>window.__pwned=1</script>"
HOSTILE_IMG = '<img src=x onerror="window.__pwned=1">'
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ho", "ju"]


def _vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    words = {" " + "".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(size * 2)}
    return np.array(sorted(words)[:size] + [".", ",", "\n", " the", " of"], dtype=object)


def _lists(flat: np.ndarray, length: int) -> pa.ListArray:
    offsets = np.arange(0, len(flat) + 1, length, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def write_synthetic_features(workspace: str | Path, name: str = "synthetic", n_features: int = 16384,
                             n_top: int = 10, quantiles: int = 4, per_quantile: int = 3, context_len: int = 24,
                             n_bins: int = 30, n_logits: int = 10, seed: int = 0, hostile: bool = True,
                             meta: dict | None = None) -> Path:
    """Write `<workspace>/sae_features/<name>/` with random statistics; return the folder.

    With `hostile`, feature 0 fires on markup tokens, so tests can check they render as text.
    """
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng, 600)
    if hostile:
        vocab = np.concatenate([vocab, np.array([HOSTILE_TOKEN, HOSTILE_IMG], dtype=object)])
    n = n_features
    dead = rng.random(n) < 0.02
    dead[0] &= not hostile
    density = np.where(dead, 0.0, 10 ** rng.uniform(-5, -1, n))
    max_act = np.where(dead, 0.0, rng.gamma(3.0, 2.0, n)).astype(np.float32)
    ids = rng.integers(0, len(vocab), (n, 5))
    if hostile:
        ids[0, :2] = [len(vocab) - 2, len(vocab) - 1]
    logit_ids = rng.integers(0, len(vocab), (n, 2 * n_logits))
    logit_vals = np.sort(rng.normal(0, 1, (n, 2 * n_logits)).astype(np.float32), axis=1)[:, ::-1]
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32)[None, :] * max_act[:, None]
    decay = np.exp(-np.arange(n_bins) / 6) * 1000
    counts = (rng.exponential(1.0, (n, n_bins)) * decay * ~dead[:, None]).astype(np.int64)
    features = pa.table({
        "feature": np.arange(n, dtype=np.int64),
        "density": density,
        "max_act": max_act,
        "mean_act": (max_act * 0.3).astype(np.float32),
        "top_tokens": _lists(vocab[ids].ravel(), 5),
        "top_logits": _lists(vocab[logit_ids[:, :n_logits]].ravel(), n_logits),
        "top_logit_values": _lists(logit_vals[:, :n_logits].ravel(), n_logits),
        "bottom_logits": _lists(vocab[logit_ids[:, n_logits:]].ravel(), n_logits),
        "bottom_logit_values": _lists(logit_vals[:, n_logits:][:, ::-1].ravel(), n_logits),
        "hist_edges": _lists(edges.ravel(), n_bins + 1),
        "hist_counts": _lists(counts.ravel(), n_bins),
        "label": np.array([""] * n, dtype=object),
    })

    groups = [("top", 0, n_top)] + [(f"quantile {q}/{quantiles}", quantiles - q + 1, per_quantile)
                                     for q in range(quantiles, 0, -1)]
    per_feature = sum(count for _, _, count in groups)
    live = np.flatnonzero(~dead)
    rows = len(live) * per_feature
    feature_col = np.repeat(live, per_feature)
    group_col = np.tile(np.concatenate([[g] * c for g, _, c in groups]), len(live)).astype(object)
    group_rank = np.tile(np.concatenate([[r] * c for _, r, c in groups]), len(live)).astype(np.int32)
    rank = np.tile(np.concatenate([np.arange(c) for _, _, c in groups]), len(live)).astype(np.int32)
    token_ids = rng.integers(0, len(vocab), (rows, context_len))
    if hostile:
        token_ids[:per_feature, 3] = len(vocab) - 2
        token_ids[:per_feature, 5] = len(vocab) - 1
    peak_pos = rng.integers(0, context_len, rows)
    scale = np.tile(np.concatenate([np.linspace(1, 0.7, c) if r == 0 else np.full(c, r / (quantiles + 1))
                                    for _, r, c in groups]), len(live)) * max_act[feature_col]
    acts = np.maximum(0, scale[:, None] * np.exp(-np.abs(np.arange(context_len)[None, :] - peak_pos[:, None]) / 1.5)
                      - 0.05 * max_act[feature_col][:, None]).astype(np.float32)
    contexts = pa.table({
        "feature": feature_col.astype(np.int64),
        "group": group_col,
        "group_rank": group_rank,
        "rank": rank,
        "tokens": _lists(vocab[token_ids].ravel(), context_len),
        "acts": _lists(acts.ravel(), context_len),
    })

    base = Path(workspace) / FEATURES_DIR
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    final = base / name
    try:
        pq.write_table(features, tmp / FEATURES_FILE)
        pq.write_table(contexts, tmp / CONTEXTS_FILE, row_group_size=64 * per_feature)
        info = {"schema": 1, "name": name, "model": "synthetic", "hook": "blocks.0.hook_resid_post",
                "arch": "topk", "d_in": 64, "d_sae": n, "n_tokens": 1_000_000, "corpus": "synthetic"}
        (tmp / META_FILE).write_text(json.dumps(info | (meta or {}), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


GRAPH_TOKENS = ["<bos>", "The", " capital", " of", HOSTILE_TOKEN, " is"]


def synthetic_graph(n_layers: int = 3, tokens: list[str] | None = None, features_per_cell: int = 2,
                    n_logits: int = 3, transcoders: dict[int, str] | None = None, n_features: int = 512,
                    seed: int = 0) -> dict:
    """A random attribution graph in GRAPH_CONTRACT.md's `to_graph_json()` layout, for tests and benchmarks.

    Nodes: an embedding per position, `features_per_cell` transcoder features and one error node per
    (layer, position >= 1) (position 0 holds only an error node, as the real graph leaves it out of the
    transcoders), and `n_logits` logits at the last position. Links run from every lower node to a few
    higher ones; feature->feature links carry `invariant * dependent == weight` (dependent = the source
    activation). `influence` is the cumulative share, most influential first, as circuit-tracer writes it.
    The default prompt holds a markup token, so pages can check it stays text.
    """
    rng = np.random.default_rng(seed)
    tokens = list(GRAPH_TOKENS if tokens is None else tokens)
    transcoders = transcoders or {layer: f"/synthetic/transcoders/layer-{layer:02d}" for layer in range(n_layers)}
    vocab = _vocab(rng, 40)
    last = len(tokens) - 1
    nodes: list[dict] = []

    def add(node_id: str, layer: str, pos: int, feature_type: str, feature: int, clerp: str, activation: float | None,
            **extra) -> None:
        nodes.append({"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
                      "feature_type": feature_type, "jsNodeId": f"{node_id}-{len(nodes)}", "clerp": clerp,
                      "influence": None, "activation": activation, "token_prob": 0.0, "is_target_logit": False,
                      **extra})

    for pos, token in enumerate(tokens):
        add(f"E_{pos + 100}_{pos}", "E", pos, "embedding", pos + 100, f'Emb: "{token}"', None)
    for layer in range(n_layers):
        for pos in range(len(tokens)):
            count = features_per_cell if pos > 0 and layer in transcoders else 0
            for feature in sorted(rng.choice(n_features, count, replace=False).tolist()):
                add(f"{layer}_{feature}_{pos}", str(layer), pos, "cross layer transcoder", feature, "",
                    float(rng.gamma(2.0, 1.5)), de_embedding=rng.choice(vocab, 5).tolist(),
                    top_logits=rng.choice(vocab, 5).tolist(), sae_path=transcoders[layer])
            add(f"0_{layer}_{pos}", str(layer), pos, "mlp reconstruction error", 0, f"Error: layer {layer} pos {pos}",
                None)
    probs = np.sort(rng.dirichlet(np.ones(n_logits + 1)))[::-1][:n_logits]
    for i, (token, prob) in enumerate(zip(rng.choice(vocab, n_logits, replace=False).tolist(), probs)):
        node = f"{n_layers + 1}_{200 + i}_{last}"
        add(node, str(n_layers + 1), last, "logit", 200 + i, f'output "{token}" (p={prob:.3f})', None)
        nodes[-1].update(token_prob=float(prob), is_target_logit=i == 0)

    share = rng.exponential(1.0, len(nodes))
    order = np.argsort(-share)
    cumulative = np.cumsum(share[order]) / share.sum()
    for rank, index in enumerate(order):
        nodes[index]["influence"] = float(cumulative[rank])

    def height(node: dict) -> float:
        """Where a node sits in the forward pass (errors after their layer's features)."""
        kind = node["feature_type"]
        if kind in ("embedding", "logit"):
            return -1.0 if kind == "embedding" else n_layers + 1.0
        return int(node["layer"]) + (0.5 if kind == "mlp reconstruction error" else 0.0)

    links: list[dict] = []
    for target in nodes:
        if target["feature_type"] in ("embedding", "mlp reconstruction error"):
            continue
        below = [n for n in nodes if height(n) < height(target) and n["ctx_idx"] <= target["ctx_idx"]]
        for i in rng.choice(len(below), min(len(below), 4), replace=False):
            source, weight = below[i], float(rng.normal(0, 1))
            link = {"source": source["node_id"], "target": target["node_id"], "weight": weight,
                    "heads": [], "multi_hop": float(rng.normal(0, 0.05))}
            if source["feature_type"] == target["feature_type"] == "cross layer transcoder":
                link.update(dependent=source["activation"], invariant=weight / source["activation"])
            if source["ctx_idx"] != target["ctx_idx"]:
                split = rng.dirichlet(np.ones(2)) * weight
                link["heads"] = [[int(rng.integers(0, n_layers)), h, float(w)] for h, w in enumerate(split)]
            links.append(link)

    metadata = {"slug": "synthetic", "scan": "synthetic", "prompt_tokens": tokens, "prompt": "".join(tokens[1:]),
                "node_threshold": 0.8, "edge_threshold": 0.98, "model": "synthetic", "n_layers": n_layers,
                "transcoders": {str(k): v for k, v in transcoders.items()},
                "position0_note": "position 0 is left out of the transcoders: its MLP outputs are error nodes"}
    qk = [{"layer": layer, "head": head, "importance": float(rng.random()),
           "top": [[last, int(k), float(rng.random())] for k in range(min(3, len(tokens)))]}
          for layer in range(n_layers) for head in range(2)]
    return {"metadata": metadata, "nodes": nodes, "links": links,
            "scores": {"replacement": 0.8, "completeness": 0.9, "replacement_unpruned": 0.85,
                       "completeness_unpruned": 0.95}, "qk": qk}

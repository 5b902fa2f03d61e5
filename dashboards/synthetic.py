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

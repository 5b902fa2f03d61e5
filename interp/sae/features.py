"""Per-latent statistics for the dashboard, written in the layout of `dashboards/FEATURES_SCHEMA.md`.

One pass over held-out text stores every non-zero latent activation (sparse: tokens x L0 entries).
Everything else is computed from that table: density, max/mean activation, activation histograms,
top activating contexts and samples from quantile groups of the per-context maximum (both with
per-token activations, in windows around the maximum), and top/bottom logits through the
unembedding (W_dec @ W_U, the output side for transcoders, through W_O for `hook_z` SAEs), in
batches over latents so that a 16k-latent SAE takes minutes, not hours. For `hook_z` SAEs also each
head's share of a feature's weights and, for the top contexts, which source tokens (and heads) its
activation reads from (`interp.sae.attention`; one more model pass, up to the SAE's layer, over their rows).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from interp.corpus import Corpus, load_corpus
from interp.errors import InterpError
from interp.results import Result, register_result
from interp.sae import io
from interp.sae.activations import check_activations_finite, flat_tokens, sae_limits, within_limits
from interp.sae.attention import add_head_columns, z_layer
from interp.sae.evaluate import held_out
from interp.streaming import stream_activations

FEATURES_DIR, FEATURES_FILE, CONTEXTS_FILE, META_FILE = "sae_features", "features.parquet", "contexts.parquet", "sae.json"
SCHEMA = 1


@register_result
@dataclasses.dataclass
class FeatureStatsResult(Result):
    kind = "sae_feature_stats"
    folder: str
    name: str
    sae: str
    n_features: int
    n_live: int
    tokens: int
    seconds: float
    seconds_per_1k_features: float  # analysis after the activation pass, per 1,000 latents
    densest: pd.DataFrame  # the 20 densest latents (feature, density, max_act, top_tokens)

    def to_frame(self) -> pd.DataFrame:
        return self.densest

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        return go.Figure(go.Bar(x=self.densest["feature"].astype(str), y=self.densest["density"]),
                         layout={"title": escape_label(f"densest latents of {self.name}"), "yaxis_title": "density"})

    def summary(self) -> str:
        return (f"feature statistics for {self.n_features:,} latents ({self.n_live:,} fired) over {self.tokens:,} tokens "
                f"in {self.seconds:.1f} s ({self.seconds_per_1k_features:.2f} s per 1k latents after the model pass)\n"
                f"written to {self.folder}\n" + self.densest.head(10).to_string(index=False))


@dataclasses.dataclass
class SparseActs:
    """Non-zero activations sorted by latent: latent `f` owns entries offsets[f]:offsets[f+1]."""

    tokens: np.ndarray  # [rows, seq] token ids
    token_index: np.ndarray  # flat position row * seq + pos of each entry
    values: np.ndarray  # activation of each entry
    offsets: np.ndarray  # [d_sae + 1]
    n_tokens: int  # tokens the latents were evaluated on

    def entries(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[f], self.offsets[f + 1]
        return self.token_index[lo:hi], self.values[lo:hi]


@torch.no_grad()
def collect(model, sae, hook: str, corpus: Corpus, tokens: int, batch_size: int, seq_len: int, skip: int,
            progress: bool = True) -> SparseActs:
    """Run held-out text through the model and the SAE; keep every non-zero latent activation.

    Tokens above the SAE's input norm limit (massive activations, left out in training) get no latents.
    """
    device = next(sae.parameters()).device
    limit = (sae_limits(sae) or ())[:1]
    rows, index, feature, value = [], [], [], []
    offset = left_out = 0
    for batch, acts in stream_activations(model, [hook], corpus, batch_size, seq_len, max_tokens=tokens,
                                          progress=progress):
        b, s = batch.shape
        x = flat_tokens(acts[hook], skip)
        check_activations_finite(x, hook, "feature statistics")
        keep = within_limits(x, x.shape[1], limit)
        left_out += int((~keep).sum())
        latents = (sae.encode(x.to(device)) * keep[:, None].to(device)).reshape(b, s - skip, -1)
        r, p, f = torch.nonzero(latents > 0, as_tuple=True)
        value.append(latents[r, p, f].float().cpu())
        index.append(((r + offset) * s + p + skip).cpu())
        feature.append(f.cpu())
        rows.append(batch.cpu())
        offset += b
    all_tokens = torch.cat(rows).numpy()
    feature_ids = torch.cat(feature).numpy()
    order = np.argsort(feature_ids, kind="stable")
    counts = np.bincount(feature_ids, minlength=sae.cfg.d_sae)
    return SparseActs(tokens=all_tokens, token_index=torch.cat(index).numpy()[order], values=torch.cat(value).numpy()[order],
                      offsets=np.concatenate([[0], np.cumsum(counts)]), n_tokens=all_tokens.shape[0] * (all_tokens.shape[1] - skip) - left_out)


def _decoder_in_residual(model, sae, hook: str, hook_out: str | None) -> torch.Tensor | None:
    """W_dec as directions in the residual stream, or None when the hook is not residual-sized."""
    w = sae.W_dec.detach()
    target = hook_out or hook
    if target.endswith("hook_z"):
        layer = int(target.split(".")[1])
        w_o = model.blocks[layer].attn.W_O.detach().to(w.dtype)  # [heads, d_head, d_model], in the SAE's float32
        return torch.einsum("fhd,hdm->fm", w.reshape(w.shape[0], *w_o.shape[:2]), w_o)
    return w if w.shape[1] == model.cfg.d_model else None


@torch.no_grad()
def logit_table(model, sae, hook: str, hook_out: str | None, vocab: np.ndarray, n: int = 10,
                feature_batch: int = 1024) -> dict[str, list] | None:
    """Top and bottom `n` tokens of W_dec @ W_U per latent, computed `feature_batch` latents at a time."""
    directions = _decoder_in_residual(model, sae, hook, hook_out)
    if directions is None:
        return None
    w_u = model.W_U.detach().to(directions.device, directions.dtype)  # the SAE's float32 in any model dtype
    out: dict[str, list] = {"top_logits": [], "top_logit_values": [], "bottom_logits": [], "bottom_logit_values": []}
    for start in range(0, directions.shape[0], feature_batch):
        logits = directions[start:start + feature_batch] @ w_u
        top, bottom = logits.topk(n, dim=-1), logits.topk(n, dim=-1, largest=False)
        out["top_logits"] += [list(vocab[i]) for i in top.indices.cpu().numpy()]
        out["top_logit_values"] += [list(v) for v in top.values.float().cpu().numpy()]
        out["bottom_logits"] += [list(vocab[i]) for i in bottom.indices.cpu().numpy()]
        out["bottom_logit_values"] += [list(v) for v in bottom.values.float().cpu().numpy()]
    return out


def _window(peak: int, seq: int, left: int, right: int) -> slice:
    start = max(0, min(peak - left, seq - (left + right + 1)))
    return slice(start, min(seq, start + left + right + 1))


def feature_tables(acts: SparseActs, vocab: np.ndarray, n_top: int = 16, quantiles: int = 4, per_quantile: int = 4,
                   left: int = 24, right: int = 8, n_bins: int = 30, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, contexts) frames in the schema's columns, from the sparse activations.

    Contexts also carry `row`, `peak` and `start` (the row of `acts.tokens`, the position of the maximum and
    of the window's first token), so that an analysis can revisit them; they are not written.
    """
    rng = np.random.default_rng(seed)
    n_rows, seq = acts.tokens.shape
    d_sae = len(acts.offsets) - 1
    features = {k: [] for k in ("feature", "density", "max_act", "mean_act", "top_tokens", "hist_edges", "hist_counts")}
    contexts = {k: [] for k in ("feature", "group", "group_rank", "rank", "tokens", "acts", "row", "peak", "start")}
    for f in range(d_sae):
        index, values = acts.entries(f)
        features["feature"].append(f)
        features["density"].append(len(values) / acts.n_tokens)
        if not len(values):
            features["max_act"].append(0.0)
            features["mean_act"].append(float("nan"))
            features["top_tokens"].append([])
            features["hist_edges"].append([])
            features["hist_counts"].append([])
            continue
        counts, edges = np.histogram(values, bins=n_bins, range=(0.0, float(values.max())))
        features["max_act"].append(float(values.max()))
        features["mean_act"].append(float(values.mean()))
        features["hist_edges"].append(edges.astype(np.float32).tolist())
        features["hist_counts"].append(counts.tolist())

        row = index // seq
        row_ids, first = np.unique(row, return_index=True)  # entries are grouped by row (ascending index)
        row_max = np.maximum.reduceat(values, first)
        by_max = np.argsort(-row_max, kind="stable")
        groups = [("top", 0, row_ids[by_max[:n_top]])]
        ranked = by_max[::-1]  # ascending
        for q in range(quantiles, 0, -1):
            part = ranked[(q - 1) * len(ranked) // quantiles: q * len(ranked) // quantiles]
            pick = rng.choice(part, size=min(per_quantile, len(part)), replace=False) if len(part) else part
            groups.append((f"quantile {q}/{quantiles}", quantiles - q + 1, row_ids[pick[np.argsort(-row_max[pick])]]))
        chosen = np.unique(np.concatenate([g[2] for g in groups]))
        slot = np.full(n_rows, -1)
        slot[chosen] = np.arange(len(chosen))
        dense = np.zeros((len(chosen), seq), dtype=np.float32)
        keep = slot[row] >= 0
        dense[slot[row[keep]], index[keep] % seq] = values[keep]
        peak_tokens = []
        for group, group_rank, rows in groups:
            for rank, r in enumerate(rows):
                line = dense[slot[r]]
                peak = int(line.argmax())
                window = _window(peak, seq, left, right)
                contexts["feature"].append(f)
                contexts["group"].append(group)
                contexts["group_rank"].append(group_rank)
                contexts["rank"].append(rank)
                contexts["tokens"].append(list(vocab[acts.tokens[r, window]]))
                contexts["acts"].append(line[window].tolist())
                contexts["row"].append(int(r))
                contexts["peak"].append(peak)
                contexts["start"].append(window.start)
                if group_rank == 0:
                    peak_tokens.append(vocab[acts.tokens[r, peak]])
        features["top_tokens"].append(list(dict.fromkeys(peak_tokens))[:8])
    return pd.DataFrame(features), pd.DataFrame(contexts)


def _write(folder: Path, features: pd.DataFrame, contexts: pd.DataFrame, info: dict, sae_dir: Path | None,
           per_feature: int) -> None:
    columns = {"feature": pa.int64(), "group": pa.string(), "group_rank": pa.int32(), "rank": pa.int32(),
               "tokens": pa.list_(pa.string()), "acts": pa.list_(pa.float32()),
               "source_attr": pa.list_(pa.float32()), "head_attr": pa.list_(pa.float32()), "attr_before": pa.float32()}
    schema = pa.schema([(name, kind) for name, kind in columns.items() if name in contexts.columns])
    pq.write_table(pa.Table.from_pandas(contexts, schema=schema, preserve_index=False), folder / CONTEXTS_FILE,
                   row_group_size=64 * per_feature)
    columns = {"feature": pa.int64(), "density": pa.float64(), "max_act": pa.float32(), "mean_act": pa.float32(),
               "top_tokens": pa.list_(pa.string()), "hist_edges": pa.list_(pa.float32()), "hist_counts": pa.list_(pa.int64()),
               "top_logits": pa.list_(pa.string()), "top_logit_values": pa.list_(pa.float32()),
               "bottom_logits": pa.list_(pa.string()), "bottom_logit_values": pa.list_(pa.float32()), "label": pa.string(),
               "enc_head_shares": pa.list_(pa.float32()), "dec_head_shares": pa.list_(pa.float32())}
    schema = pa.schema([(name, kind) for name, kind in columns.items() if name in features.columns])
    pq.write_table(pa.Table.from_pandas(features, schema=schema, preserve_index=False), folder / FEATURES_FILE)
    if sae_dir is not None:
        (folder / "sae").mkdir()
        for file in (io.CFG_FILE, io.WEIGHTS_FILE):
            shutil.copy2(sae_dir / file, folder / "sae" / file)
    (folder / META_FILE).write_text(json.dumps(info, indent=1))  # last: the dashboard lists folders that have it


def feature_folder(workspace: str | Path, path: str | Path | None = None, name: str | None = None) -> Path:
    """`<workspace>/sae_features/<name>/`, the name defaulting to the SAE folder's; raises for unsafe names."""
    name = name or (Path(path).resolve().name if path else "sae")
    if not name or name.startswith(".") or not all(c.isalnum() or c in "._-" for c in name):
        raise InterpError(f"feature set name {name!r} must be letters, digits, '.', '_' or '-'; pass --name")
    return Path(workspace) / FEATURES_DIR / name


@torch.no_grad()
def feature_statistics(model, sae, workspace: str | Path, path: str | Path | None = None, name: str | None = None,
                       tokens: int = 131_072, corpus: str | Corpus | None = None, n_top: int = 16, quantiles: int = 4,
                       per_quantile: int = 4, batch_size: int = 16, progress: bool = True,
                       force: bool = False) -> FeatureStatsResult:
    """Compute and write `<workspace>/sae_features/<name>/` for `sae` (from `load_sae(path)`); an existing
    feature set of that name is replaced only with `force`."""
    started = time.perf_counter()
    final = feature_folder(workspace, path, name)
    if final.exists() and not force:
        raise InterpError(f"feature set {final.name!r} already exists in {workspace}; pass --force to replace it "
                          "or choose another --name")
    name = final.name
    info = io.training_info(path) if path else {}
    hook, hook_out = io.sae_hooks(sae)
    io.check_fits(model, sae, hook, hook_out)
    meta = sae.cfg.metadata
    skip = meta.skip_positions if meta.skip_positions is not None else 1
    seq_len = meta.context_size or 128
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus if corpus is not None else info.get("config", {}).get("corpus"))
    acts = collect(model, sae, hook, held_out(corpus), tokens, batch_size, seq_len, skip, progress)
    analysis_started = time.perf_counter()
    vocab = np.array(model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)]), dtype=object)
    features, contexts = feature_tables(acts, vocab, n_top, quantiles, per_quantile)
    logits = logit_table(model, sae, hook, hook_out, vocab)
    if logits is not None:
        for column, values in logits.items():
            features[column] = values
    features["label"] = ""
    analysis = time.perf_counter() - analysis_started

    info_json = {"schema": SCHEMA, "name": name, "model": meta.model_name or getattr(model.cfg, "spec", ""), "hook": hook,
                 "arch": info.get("config", {}).get("arch", sae.cfg.architecture()), "d_in": sae.cfg.d_in,
                 "d_sae": sae.cfg.d_sae, "n_tokens": acts.n_tokens, "corpus": corpus.name, "sae_path": str(path or "")}
    if hook_out:
        info_json["hook_out"] = hook_out
    elif z_layer(hook) is not None:  # an attention-output SAE: head shares and source attribution for its pages
        info_json.update(add_head_columns(model, sae, acts.tokens, features, contexts, batch_size))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        _write(tmp, features, contexts, info_json, Path(path) if path else None, n_top + quantiles * per_quantile)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    densest = features.nlargest(20, "density")[["feature", "density", "max_act", "top_tokens"]].reset_index(drop=True)
    densest["top_tokens"] = densest["top_tokens"].map(lambda t: " | ".join(t))
    return FeatureStatsResult(folder=str(final), name=name, sae=str(path or ""), n_features=sae.cfg.d_sae,
                              n_live=int((features["density"] > 0).sum()), tokens=acts.n_tokens,
                              seconds=time.perf_counter() - started,
                              seconds_per_1k_features=analysis / sae.cfg.d_sae * 1000, densest=densest)

"""The whole-model neuron table: every MLP neuron's value vector read in the vocabulary, built once per
set of weights and searched by token ("which neurons promote ' Paris'?").

The table has one row per (layer, neuron): `value_norm` ||v_i||, and the value vector's `TABLE_TOKENS`
highest- and lowest-scoring tokens (`top_ids`, `top_tokens`, `top_scores`, `bottom_...`; scores as in
`interp.ffn.vocab`). It depends only on W_out of every layer, the final norm and the unembedding, so it
is cached as Parquet under `cache_dir("ffn")`, keyed on the fingerprint of exactly those weights: an
edit of any of them builds a new table, an edit elsewhere (attention, W_in) keeps it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp.cache import cache_dir
from interp.errors import InterpError
from interp.ffn.vocab import vocab_extremes, vocabulary
from interp.fingerprint import cache_name, weights_fingerprint
from interp.results import Result, register_result
from interp.tokens import answer_token
from interp.workspace import Entry, Workspace

TABLE_TOKENS = 30  # top and bottom tokens kept per neuron (Geva et al. read the top 30)
TABLE_VERSION = 1  # bump when the table's columns or scoring change


def _reads_table(name: str) -> bool:
    """Whether the parameter `name` enters the table (W_out of a block, the final norm, the unembedding)."""
    return name.endswith("mlp.W_out") or name.startswith(("ln_final.", "unembed.W_U"))


def table_fingerprint(model) -> str:
    """The fingerprint of the weights the neuron table is computed from."""
    return weights_fingerprint(model, include=_reads_table)


@register_result
@dataclasses.dataclass
class NeuronTable(Result):
    """Every neuron's top and bottom tokens; `weights` is `table_fingerprint` of the model it was built from,
    `seconds` the time the build took (0 when it came from the cache)."""

    kind = "neurons"
    model: str
    weights: str
    n_layers: int
    d_mlp: int
    seconds: float
    table: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def to_dict(self) -> dict:
        """The table's description, with its rows left out (46,080 for the default model; `to_frame()` has them)."""
        out = {"kind": self.kind}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "table"})
        out["rows"] = len(self.table)
        return out

    def figure(self):
        import plotly.graph_objects as go

        norms = self.table.pivot(index="layer", columns="neuron", values="value_norm")
        fig = go.Figure(go.Heatmap(z=norms.to_numpy().tolist(), x=norms.columns.tolist(), y=norms.index.tolist(),
                                   colorscale="Viridis", colorbar=dict(title="||v_i||"),
                                   hovertemplate="layer %{y} neuron %{x}<br>||v|| %{z:.3g}<extra></extra>"))
        fig.update_layout(title=f"Value-vector norms, {self.n_layers} layers x {self.d_mlp} neurons "
                                "(search the table for the tokens each promotes)",
                          xaxis_title="neuron", yaxis_title="layer", height=500)
        return fig

    def summary(self) -> str:
        return (f"neuron table of {self.model}: {self.n_layers} layers x {self.d_mlp} neurons, "
                f"{TABLE_TOKENS} top and bottom tokens each (weights {self.weights[:12]}, built in {self.seconds:.1f} s)")

    def promoting(self, token: str | int, top: int = 20, loose: bool = False) -> pd.DataFrame:
        """The neurons whose value vector has `token` among its top or bottom tokens; see `search_table`."""
        return search_table(self.table, token, top=top, loose=loose)


def build_table(model, k: int = TABLE_TOKENS) -> pd.DataFrame:
    """Compute the table (no cache): one row per (layer, neuron), layers in order."""
    vocab = np.array(vocabulary(model), dtype=object)
    frames = []
    for layer, block in enumerate(model.blocks):
        W_out = block.mlp.W_out.detach()
        extremes = vocab_extremes(model, W_out, k)
        columns = {"layer": np.full(W_out.shape[0], layer, dtype=np.int32),
                   "neuron": np.arange(W_out.shape[0], dtype=np.int32),
                   "value_norm": W_out.norm(dim=-1).float().cpu().numpy()}
        for side in ("top", "bottom"):
            ids = extremes[f"{side}_ids"].numpy().astype(np.int32)
            columns[f"{side}_ids"] = list(ids)
            columns[f"{side}_tokens"] = list(vocab[ids])
            columns[f"{side}_scores"] = list(extremes[f"{side}_scores"].numpy().astype(np.float32))
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, ignore_index=True)


def table_path(weights: str, k: int = TABLE_TOKENS) -> Path:
    """Where the table built from the weights with `table_fingerprint` `weights` is cached."""
    return cache_dir("ffn") / cache_name("neurons", ".parquet", weights=weights, k=k, version=TABLE_VERSION)


@torch.no_grad()
def neuron_table(model, progress: bool = True) -> NeuronTable:
    """The neuron table of `model` as it is now: read from the cache, or built (and cached) on first use."""
    weights = table_fingerprint(model)
    path = table_path(weights)
    spec = str(getattr(model.cfg, "spec", model.cfg.model_name))
    sizes = dict(n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)
    if path.is_file():
        try:
            return NeuronTable(model=spec, weights=weights, seconds=0.0, table=pd.read_parquet(path), **sizes)
        except (OSError, ValueError) as e:  # a damaged cache file is built again
            print(f"rebuilding the damaged neuron table {path.name} ({type(e).__name__})", file=sys.stderr)
    if progress:
        print(f"building the neuron table ({model.cfg.n_layers} x {model.cfg.d_mlp} neurons) once...", file=sys.stderr)
    start = time.perf_counter()
    table = build_table(model)
    seconds = time.perf_counter() - start
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    table.to_parquet(tmp)
    tmp.replace(path)  # atomic: a reader never sees half a table
    return NeuronTable(model=spec, weights=weights, seconds=seconds, table=table, **sizes)


def saved_table(workspace: str | Path, weights: str) -> Entry | None:
    """The neuron table in `workspace` built from the weights with `table_fingerprint` `weights`, if any
    (read from each saved table's result.json, whatever its name)."""
    for entry in Workspace(workspace).entries(NeuronTable.kind):
        try:
            stored = json.loads((entry.path / "result.json").read_text())["json"].get("weights")
        except (OSError, ValueError, KeyError, AttributeError):
            continue  # a damaged entry is not the table
        if stored == weights:
            return entry
    return None


def search_table(table: pd.DataFrame, token: str | int, top: int = 20, loose: bool = False) -> pd.DataFrame:
    """Rows of the neuron table whose top or bottom tokens hold `token` (an id, or a token's text).

    `side` is +1 when the token is among the value vector's top tokens (the neuron promotes it when its
    coefficient is positive) and -1 among its bottom tokens (promoted when the coefficient is negative, as
    SwiGLU allows); `token_rank` is its place in that list (0 first) and `score` its score. Sorted by |score|,
    the `top` strongest. `loose` matches token texts ignoring case and surrounding spaces (for a search box).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InterpError(f"top must be a whole number of 1 or more (got {top!r})")
    found = []
    for side, sign in (("top", 1), ("bottom", -1)):
        ids = np.stack(table[f"{side}_ids"].to_numpy()) if len(table) else np.zeros((0, 1), np.int32)
        wanted = _matching_ids(table, side, ids, token, loose)
        rows, ranks = np.nonzero(np.isin(ids, wanted))
        scores = np.stack(table[f"{side}_scores"].to_numpy())[rows, ranks] if len(rows) else np.zeros(0)
        found.append(pd.DataFrame({
            "layer": table["layer"].to_numpy()[rows], "neuron": table["neuron"].to_numpy()[rows], "side": sign,
            "token": [table[f"{side}_tokens"].iat[r][c] for r, c in zip(rows, ranks)], "token_rank": ranks,
            "score": scores, "value_norm": table["value_norm"].to_numpy()[rows],
            "top_tokens": table["top_tokens"].to_numpy()[rows], "bottom_tokens": table["bottom_tokens"].to_numpy()[rows]}))
    out = pd.concat(found, ignore_index=True)
    return out.iloc[np.argsort(-out["score"].abs().to_numpy(), kind="stable")[:top]].reset_index(drop=True)


def _matching_ids(table: pd.DataFrame, side: str, ids: np.ndarray, token: str | int, loose: bool) -> np.ndarray:
    """The token ids in `ids` (a [rows, k] side of the table) that `token` names: itself when it is an id,
    else those whose text equals it (ignoring case and surrounding spaces when `loose`)."""
    if not isinstance(token, str):
        return np.array([int(token)])
    texts = np.stack(table[f"{side}_tokens"].to_numpy()) if len(table) else np.zeros((0, 1), object)
    unique, first = np.unique(ids, return_index=True)
    unique_texts = texts.reshape(-1)[first]
    key = token.strip().lower() if loose else token
    keep = [(text.strip().lower() if loose else text) == key for text in unique_texts]
    return unique[np.array(keep, dtype=bool)] if len(unique) else unique


def neurons_promoting(model, token: str, top: int = 20) -> pd.DataFrame:
    """The neurons of `model` whose value vectors have the first token of `token` (e.g. ' Paris') among their
    top or bottom tokens, strongest first (`search_table`); builds the neuron table on first use."""
    token_id, _ = answer_token(model, token, option="the token")
    return search_table(neuron_table(model).table, token_id, top=top)

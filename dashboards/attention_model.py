"""Model view (Vig 2019, bertviz's multiscale "model view"): every layer x head of one prompt at once.

bertviz draws each head as lines between tokens; at 30 layers x 9 heads and 256 tokens that is 17 million
lines, and 270 plotly heatmaps of 256 x 256 would be as slow. Here each head's [T, T] pattern is
max-pooled to at most `size` x `size` pixels (max, not mean, so a one-cell-wide diagonal or a sink column
stays visible), shaded by sqrt(weight / the head's peak) (the peak over every query but the first, which
can only attend to itself; the square root lifts faint spread-out heads), and all heads are tiled into ONE small PNG
(layers as rows, heads as columns) that the browser draws as a single image. A transparent
[layers, heads] heatmap over it carries the hover text and the click that opens a head in the head view.

    view = model_view(model, "The cat sat on the mat")     # or ModelView.of(result.pattern)
    view.figure().show()
"""

from __future__ import annotations

import base64
import dataclasses
import struct
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import torch

from interp.hooks import pattern
from interp.plotting import escape_label
from interp.tokens import encode

THUMBNAIL = 32  # pixels per side of one head's thumbnail (256 tokens -> 8 x 8 blocks)
PAD = 1  # white pixels around each thumbnail
# Blues as a 256-entry RGB lookup table, index = uint8 level
_BLUES = np.array([[int(c) for c in rgb[4:-1].split(",")]
                   for rgb in plotly.colors.sample_colorscale("Blues", np.linspace(0, 1, 256))], dtype=np.uint8)


@torch.no_grad()
def all_layer_patterns(model, tokens: torch.Tensor) -> list[np.ndarray]:
    """Every layer's [heads, T, T] float32 attention of `tokens` [1, T], from one forward pass."""
    names = [pattern(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[name][0].float().cpu().numpy() for name in names]


def pool(patterns: np.ndarray | torch.Tensor, size: int = THUMBNAIL, show_first: bool = True) -> np.ndarray:
    """[heads, T, T] -> [heads, S, S] block maxima (S = min(size, T')), without the first token's row and
    column when `show_first` is off; T' = 0 gives [heads, 1, 1] zeros."""
    p = torch.as_tensor(np.asarray(patterns, dtype=np.float32))
    if not show_first:
        p = p[:, 1:, 1:]
    if p.shape[-1] == 0:
        return np.zeros((p.shape[0], 1, 1), np.float32)
    side = min(size, p.shape[-1])
    return torch.nn.functional.adaptive_max_pool2d(p, side).numpy()


@dataclasses.dataclass(kw_only=True)
class ModelView:
    """Thumbnails of every head, ready to tile; `peak` and `first` are what the hover shows."""

    thumbnails: np.ndarray  # [layers, heads, S, S] uint8: 255 * sqrt(block max / peak), clipped
    peak: np.ndarray  # [layers, heads] float32: the largest weight of any query but the first (shown ones)
    first: np.ndarray  # [layers, heads] float32: mean attention to the first token (queries after it)
    n_tokens: int
    show_first: bool = True

    @classmethod
    def of(cls, layers: Iterable[np.ndarray | torch.Tensor], size: int = THUMBNAIL,
           show_first: bool = True) -> ModelView:
        """From per-layer [heads, T, T] patterns (a list, an iterator that reads them one by one, or an
        AttentionResult's [layers, heads, T, T] `pattern`)."""
        thumbs, peaks, firsts, n_tokens = [], [], [], 0
        for layer in layers:
            p = np.asarray(layer, dtype=np.float32)
            n_tokens = p.shape[-1]
            body = p[:, 1:, 0 if show_first else 1:]  # the first query attends only to itself (weight 1)
            peak = body.reshape(p.shape[0], -1).max(axis=1) if body.size else np.zeros(p.shape[0], np.float32)
            level = np.sqrt(np.clip(pool(p, size, show_first) / np.maximum(peak, 1e-12)[:, None, None], 0, 1))
            thumbs.append(np.round(255 * level).astype(np.uint8))
            peaks.append(peak)
            firsts.append(p[:, 1:, 0].mean(-1) if n_tokens > 1 else np.zeros(p.shape[0], np.float32))
        return cls(thumbnails=np.stack(thumbs), peak=np.stack(peaks).astype(np.float32),
                   first=np.stack(firsts).astype(np.float32), n_tokens=n_tokens, show_first=show_first)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads)."""
        return self.thumbnails.shape[0], self.thumbnails.shape[1]

    def mosaic(self) -> np.ndarray:
        """[layers * P, heads * P, 3] uint8 RGB, P = S + 2 * PAD: the thumbnails in Blues on white."""
        n_layers, n_heads, side, _ = self.thumbnails.shape
        pitch = side + 2 * PAD
        grid = np.full((n_layers, pitch, n_heads, pitch, 3), 255, np.uint8)
        grid[:, PAD:PAD + side, :, PAD:PAD + side] = _BLUES[self.thumbnails].transpose(0, 2, 1, 3, 4)
        return grid.reshape(n_layers * pitch, n_heads * pitch, 3)

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, peak, attention_to_first."""
        layers, heads = np.meshgrid(np.arange(self.shape[0]), np.arange(self.shape[1]), indexing="ij")
        return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "peak": self.peak.ravel(),
                             "attention_to_first": self.first.ravel()})

    def figure(self, title: str = "", cell_px: int | None = None) -> go.Figure:
        """The mosaic as one image (x = head, y = layer), with a transparent heatmap on top whose
        clickData points carry `x` = head and `y` = layer."""
        n_layers, n_heads = self.shape
        pitch = self.thumbnails.shape[-1] + 2 * PAD
        cell = cell_px or int(np.clip(960 // n_layers, 28, 72))
        step = 1 / pitch  # image pixels in axis units: cell h spans [h - 0.5, h + 0.5]
        fig = go.Figure(go.Image(source=png_data_uri(self.mosaic()), x0=-0.5 + step / 2, dx=step,
                                 y0=-0.5 + step / 2, dy=step, hoverinfo="skip"))
        fig.add_trace(go.Heatmap(
            z=self.peak, customdata=self.first, showscale=False, xgap=0, ygap=0,
            colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]],
            hovertemplate="layer %{y} head %{x}<br>largest weight %{z:.3f}<br>mean weight on the first token "
                          "%{customdata:.3f}<extra>click: open in the head view</extra>"))
        fig.update_xaxes(range=[-0.5, n_heads - 0.5], dtick=1, side="top", title=None, showgrid=False,
                         zeroline=False)
        fig.update_yaxes(range=[n_layers - 0.5, -0.5], dtick=1, title="layer", showgrid=False, zeroline=False,
                         scaleanchor="x", constrain="domain")
        first = "" if self.show_first else ", no first token"
        fig.update_layout(
            title=dict(text=escape_label(title or f"{n_layers} layers x {n_heads} heads (columns), "
                                                  f"{self.n_tokens} tokens{first}"), font_size=14),
            width=max(n_heads * cell + 100, 420), height=n_layers * cell + 110, dragmode=False,
            margin=dict(l=60, r=20, t=80, b=20), plot_bgcolor="#fff")
        return fig


def model_view(model, prompt: str, size: int = THUMBNAIL, show_first: bool = True) -> ModelView:
    """The model view of `prompt` on `model`: one forward pass, every head pooled to `size` pixels."""
    return ModelView.of(all_layer_patterns(model, encode(model, prompt)), size, show_first)


def png_data_uri(rgb: np.ndarray) -> str:
    """An [H, W, 3] uint8 image as a `data:image/png;base64,...` URI (8-bit RGB, no filter, zlib)."""
    height, width, _ = rgb.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), np.ascontiguousarray(rgb).reshape(height, -1)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

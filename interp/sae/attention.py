"""Attention-output SAEs (Kissane et al. 2024, "Interpreting Attention Layer Outputs with Sparse
Autoencoders"): SAEs on `blocks.L.attn.hook_z`, the heads' outputs before W_O, concatenated
(n_heads x d_head inputs; head h owns columns h*d_head:(h+1)*d_head).

Head attribution from the weights: a feature's encoder column (and decoder row) split into per-head
blocks; a head's share is its block's norm over the sum of the blocks' norms (the shares sum to 1).

Direct feature attribution of one activation: head h's z at destination d is
sum_s pattern[h, d, s] v[s, kv(h)] (grouped-query attention: kv(h) = h // (n_heads / n_kv_heads), the
shared KV head; the value bias is part of v), and the SAE's pre-activation (what its nonlinearity
receives) is affine in z, so exactly

    pre_f(d) = c_f (W_enc[:, f] . (z[d] - b_dec) + b_enc[f])
             = sum_{h, s} c_f pattern[h, d, s] (v[s, kv(h)] . W_enc[h, f])   one term per (head, source)
               - c_f sum_h b_dec[h] . W_enc[h, f]                            decoder bias, per head
               + c_f b_enc[f]                                                encoder bias

with c_f = ||W_dec[f]|| for sae-lens TopK SAEs that rescale by the decoder norm, else 1. The pattern
is the model's own on that input, so the terms say which earlier token the feature reads from, and
through which head.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from interp.errors import InterpError
from interp.hooks import attn_v, attn_z, pattern
from interp.results import Result, register_result
from interp.sae import io
from interp.tokens import encode, str_tokens

AFFINE_ARCHS = ("standard", "topk", "batchtopk", "jumprelu")  # pre-activation = c * (W_enc^T (x - b_dec) + b_enc)
HOOK_Z = re.compile(r"blocks\.(\d+)\.attn\.hook_z")


def z_layer(hook: str | None) -> int | None:
    """The layer of a `blocks.L.attn.hook_z` hook name; None for any other hook."""
    match = HOOK_Z.fullmatch(hook or "")
    return int(match.group(1)) if match else None


def attn_layer(sae) -> int:
    """The layer of an SAE on `blocks.L.attn.hook_z` whose pre-activation is affine in its input;
    a one-line InterpError for any other SAE."""
    hook = sae.cfg.metadata.hook_name
    layer = z_layer(hook)
    if layer is None or io.is_transcoder(sae):
        raise InterpError(f"head attribution needs an SAE on blocks.L.attn.hook_z; this one reads {hook or 'no named hook'}"
                          " (train one with --hook blocks.L.attn.hook_z)")
    arch = sae.cfg.architecture()
    if arch not in AFFINE_ARCHS:
        raise InterpError(f"head attribution supports {', '.join(AFFINE_ARCHS)} SAEs, not {arch!r}")
    norm = getattr(sae.cfg, "normalize_activations", "none") or "none"
    if norm != "none":
        raise InterpError(f"the SAE normalizes its input at run time ({norm}), so its pre-activation is not a sum "
                          "over heads and sources; fold the normalization into its weights")
    return layer


def check_feature(sae, feature: int) -> int:
    """Return `feature`, or raise when it is not one of the SAE's latents."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise InterpError(f"feature {feature} is out of range; the SAE has features 0..{sae.cfg.d_sae - 1}")
    return feature


def encoder_scale(sae) -> torch.Tensor:
    """[d_sae] c_f: the factor the SAE multiplies its pre-activations by before the nonlinearity."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        return sae.W_dec.detach().norm(dim=-1)
    return torch.ones(sae.cfg.d_sae, dtype=sae.W_enc.dtype, device=sae.W_enc.device)


@torch.no_grad()
def pre_activations(sae, x: torch.Tensor) -> torch.Tensor:
    """[n, d_sae] what the SAE's nonlinearity receives for rows `x` [n, d_in] (as its `encode` computes it)."""
    sae_in = sae.process_sae_in(x.to(sae.W_enc.device))
    return (sae_in @ sae.W_enc + sae.b_enc) * encoder_scale(sae)


def _per_head(weights: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[d_sae, n_heads * d_head] -> [d_sae, n_heads, d_head]; raises when the width does not split."""
    if weights.shape[-1] % n_heads:
        raise InterpError(f"the SAE reads {weights.shape[-1]}-wide inputs, which do not split into {n_heads} heads; "
                          "use the model it was trained on")
    return weights.reshape(weights.shape[0], n_heads, -1)


def _shares(blocks: torch.Tensor) -> torch.Tensor:
    """[d_sae, n_heads] each head block's norm over the sum of the feature's block norms (0 for a zero feature)."""
    norms = blocks.norm(dim=-1)
    total = norms.sum(-1, keepdim=True)
    return torch.where(total > 0, norms / total.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))


@torch.no_grad()
def head_shares(sae, n_heads: int) -> dict[str, torch.Tensor]:
    """{"encoder", "decoder"}: [d_sae, n_heads] share of each feature's encoder column / decoder row norm
    in each head (Kissane et al.'s head attribution from the weights); rows sum to 1."""
    return {"encoder": _shares(_per_head(sae.W_enc.detach().T.float(), n_heads)),
            "decoder": _shares(_per_head(sae.W_dec.detach().float(), n_heads))}


def encoder_heads(sae, features: Sequence[int] | torch.Tensor, n_heads: int) -> torch.Tensor:
    """[F, n_heads, d_head] the encoder columns of `features`, split per head, times c_f."""
    features = torch.as_tensor(features, dtype=torch.long, device=sae.W_enc.device)
    w = sae.W_enc.detach()[:, features].T * encoder_scale(sae)[features, None]
    return _per_head(w, n_heads)


def source_terms(pattern_: torch.Tensor, v: torch.Tensor, w: torch.Tensor, dests: torch.Tensor,
                 which: torch.Tensor) -> torch.Tensor:
    """[n, n_heads, S] the (head, source) terms of n pre-activations in one sequence.

    `pattern_` [n_heads, S, S] (destination, source), `v` [S, n_heads, d_head] (KV heads already shared out),
    `w` [F, n_heads, d_head] from `encoder_heads`; item i is feature `which[i]` (an index into w) at
    destination `dests[i]`: pattern[h, d, s] * (v[s, h] . w[f, h]).
    """
    read = torch.einsum("shd,fhd->fhs", v, w.to(v.dtype))  # what each source offers each feature, per head
    return pattern_[:, dests, :].transpose(0, 1) * read[which]


@torch.no_grad()
def attention_inputs(model, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pattern [B, heads, S, S], v [B, S, heads, d_head] with the KV heads shared out, z [B, S, heads, d_head])
    of `layer` on `tokens`, in float32; raises when z is not pattern x value there (an attention this split does
    not cover)."""
    names = {attn_z(layer), attn_v(layer), pattern(layer)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=layer + 1)
    eps = max(torch.finfo(cache[attn_z(layer)].dtype).eps, 1e-6)  # half-precision models round more
    p, v, z = (cache[name].float() for name in (pattern(layer), attn_v(layer), attn_z(layer)))
    v = v.repeat_interleave(z.shape[2] // v.shape[2], dim=2)  # head h reads KV head h // group, as the model does
    rebuilt = torch.einsum("bhds,bshe->bdhe", p, v)
    if not torch.allclose(rebuilt, z, rtol=1e-3, atol=100 * eps * float(z.abs().max()) + 1e-6):
        raise InterpError(f"layer {layer}'s attention output is not pattern x value at {attn_v(layer)}; "
                          "head attribution does not cover this model's attention")
    return p, v, z


@register_result
@dataclasses.dataclass
class AttnFeatureAttribution(Result):
    """One activation of an attention-output SAE feature, split over heads and source positions (sums exactly
    to the pre-activation with the two bias terms)."""

    kind = "attn_sae_attribution"
    prompt: str
    tokens: list[str]
    sae: str
    hook: str
    layer: int
    feature: int
    position: int  # the destination token
    activation: float
    pre_activation: float
    encoder_bias: float  # c_f b_enc[f]
    decoder_bias: float  # -c_f b_dec . W_enc[:, f], all heads
    heads: pd.DataFrame  # head, kv_head, attribution (all sources), decoder_bias, encoder_share, decoder_share
    terms: pd.DataFrame  # head, kv_head, source, token, pattern, attribution (sources 0..position)

    def to_frame(self) -> pd.DataFrame:
        return self.terms

    def by_source(self) -> pd.DataFrame:
        """source, token, offset (tokens back from the destination: 1 is the previous token), attribution
        summed over heads, in source order."""
        frame = self.terms.groupby(["source", "token"], as_index=False, sort=True)["attribution"].sum()
        frame.insert(2, "offset", self.position - frame["source"])
        return frame

    def top_source(self) -> tuple[int, str]:
        """(position, token) of the source with the largest attribution."""
        row = self.by_source().nlargest(1, "attribution").iloc[0]
        return int(row.source), str(row.token)

    def figure(self):
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        sources = self.by_source()
        labels = [f"{s}: {t}" for s, t in zip(sources["source"], token_labels(list(sources["token"])))]
        grid = self.terms.pivot(index="head", columns="source", values="attribution").to_numpy()
        fig = make_subplots(rows=2, cols=2, column_widths=[0.8, 0.2], row_heights=[0.35, 0.65], shared_xaxes="columns",
                            subplot_titles=("by source token (all heads)", "", "head x source", "encoder share"),
                            vertical_spacing=0.08, horizontal_spacing=0.06)
        fig.add_bar(x=labels, y=sources["attribution"], row=1, col=1, name="by source")
        fig.add_heatmap(z=grid, x=labels, y=[f"H{h}" for h in self.heads["head"]], colorscale="RdBu", zmid=0,
                        row=2, col=1, colorbar={"len": 0.6, "y": 0.3}, name="head x source")
        fig.add_bar(x=self.heads["encoder_share"], y=[f"H{h}" for h in self.heads["head"]], orientation="h",
                    row=2, col=2, name="encoder share")
        fig.update_yaxes(autorange="reversed", row=2)
        fig.update_layout(showlegend=False, title=escape_label(
            f"L{self.layer} attention-SAE feature {self.feature} at {self.position}: {self.tokens[self.position]!r} "
            f"(activation {self.activation:.3f}, pre-activation {self.pre_activation:.3f})"))
        return fig

    def summary(self) -> str:
        sources = self.by_source().sort_values("attribution", ascending=False, key=abs).head(8)
        heads = self.heads.sort_values("attribution", ascending=False, key=abs)
        source, token = self.top_source()
        return (f"{self.hook} feature {self.feature} at position {self.position} ({self.tokens[self.position]!r}): "
                f"activation {self.activation:.4g}, pre-activation {self.pre_activation:.4g} = "
                f"{self.terms['attribution'].sum():.4g} (heads x sources) + {self.decoder_bias:.4g} (decoder bias) + "
                f"{self.encoder_bias:.4g} (encoder bias)\nreads most from position {source} ({token!r})\n"
                f"top sources:\n{sources.to_string(index=False)}\nheads:\n{heads.to_string(index=False)}")


def _default_position(sae, z: torch.Tensor, feature: int) -> int:
    """The token where `feature` is largest on this prompt (its pre-activation where it never fires), after
    the leading positions the SAE was trained without (the attention sink), when the prompt is longer."""
    skip = sae.cfg.metadata.skip_positions if sae.cfg.metadata.skip_positions is not None else 1
    skip = min(skip, z.shape[0] - 1)
    x = z[skip:].reshape(z.shape[0] - skip, -1)
    acts = sae.encode(x.to(sae.W_enc.device))[:, feature]
    best = acts.argmax() if bool((acts > 0).any()) else pre_activations(sae, x)[:, feature].argmax()
    return skip + int(best)


@torch.no_grad()
def attribute_feature(model, sae, prompt: str, feature: int, position: int | None = None,
                      path: str = "") -> AttnFeatureAttribution:
    """Split the pre-activation of hook_z SAE `feature` (from `load_sae(path)`) at `position` of `prompt`
    (default: where the feature is largest) into one term per (head, source position) plus bias terms."""
    layer = attn_layer(sae)
    check_feature(sae, feature)
    tokens = encode(model, prompt)
    n = tokens.shape[1]
    if position is not None and not -n <= position < n:
        raise InterpError(f"position {position} is out of range; the prompt has {n} tokens (0..{n - 1}, or -1 for the last)")
    hook = attn_z(layer)
    io.check_fits(model, sae, hook, None)
    p, v, z = attention_inputs(model, tokens, layer)
    d = _default_position(sae, z[0], feature) if position is None else position % n
    n_heads = z.shape[2]
    w = encoder_heads(sae, [feature], n_heads)
    terms = source_terms(p[0], v[0], w, torch.tensor([d]), torch.tensor([0]))[0, :, : d + 1].float().cpu()
    scale = float(encoder_scale(sae)[feature])
    b_dec = sae.b_dec.detach() * sae.cfg.apply_b_dec_to_input  # what `encode` subtracts from its input
    dec_bias = -(_per_head(b_dec[None], n_heads)[0].to(w.dtype) * w[0]).sum(-1).float().cpu()
    x = z[0, d].reshape(1, -1)
    shares = head_shares(sae, n_heads)
    group = n_heads // model.cfg.n_key_value_heads if getattr(model.cfg, "n_key_value_heads", None) else 1
    words = str_tokens(model, tokens)
    heads = pd.DataFrame({"head": range(n_heads), "kv_head": [h // group for h in range(n_heads)],
                          "attribution": terms.sum(-1).numpy(), "decoder_bias": dec_bias.numpy(),
                          "encoder_share": shares["encoder"][feature].cpu().numpy(),
                          "decoder_share": shares["decoder"][feature].cpu().numpy()})
    grid_h, grid_s = np.meshgrid(np.arange(n_heads), np.arange(d + 1), indexing="ij")
    frame = pd.DataFrame({"head": grid_h.ravel(), "kv_head": grid_h.ravel() // group, "source": grid_s.ravel(),
                          "token": [words[s] for s in grid_s.ravel()],
                          "pattern": p[0, :, d, : d + 1].float().cpu().numpy().ravel(),
                          "attribution": terms.numpy().ravel()})
    return AttnFeatureAttribution(
        prompt=prompt, tokens=words, sae=str(path), hook=hook, layer=layer, feature=feature, position=d,
        activation=float(sae.encode(x.to(sae.W_enc.device))[0, feature]),
        pre_activation=float(pre_activations(sae, x)[0, feature]), encoder_bias=scale * float(sae.b_enc[feature]),
        decoder_bias=float(dec_bias.sum()), heads=heads, terms=frame)


@torch.no_grad()
def context_attributions(model, sae, tokens: np.ndarray, contexts: pd.DataFrame,
                         batch_size: int = 16) -> dict[str, list]:
    """Source and head attribution for stored activating contexts (what the feature pages show).

    `tokens` [rows, seq] are the token ids the contexts were read from; `contexts` has `feature`, `row`,
    `peak` (the destination position in the row), `start` and `tokens` (the shown window). Returns, aligned
    with `contexts`: `source_attr` (per window token: its attribution summed over heads, 0 after the peak),
    `head_attr` (per head, all sources) and `attr_before` (sources left of the window), bias terms left out.
    """
    layer = attn_layer(sae)
    out: dict[str, list] = {"source_attr": [None] * len(contexts), "head_attr": [None] * len(contexts),
                            "attr_before": [None] * len(contexts)}
    if contexts.empty:
        return out
    rows = contexts["row"].to_numpy()
    order = np.argsort(rows, kind="stable")
    wanted = np.unique(rows)
    device = next(model.parameters()).device
    for lo in range(0, len(wanted), batch_size):
        batch_rows = wanted[lo:lo + batch_size]
        p, v, z = attention_inputs(model, torch.as_tensor(tokens[batch_rows], device=device), layer)
        for b, r in enumerate(batch_rows):
            items = order[np.searchsorted(rows[order], r, "left"):np.searchsorted(rows[order], r, "right")]
            features, which = np.unique(contexts["feature"].to_numpy()[items], return_inverse=True)
            w = encoder_heads(sae, features, z.shape[2]).to(device)
            dests = torch.as_tensor(contexts["peak"].to_numpy()[items], device=device)
            terms = source_terms(p[b], v[b], w, dests, torch.as_tensor(which, device=device)).float().cpu()
            per_source, per_head = terms.sum(1).numpy(), terms.sum(2).numpy()
            for i, item in enumerate(items):
                start, length = int(contexts["start"].iat[item]), len(contexts["tokens"].iat[item])
                out["source_attr"][item] = per_source[i, start:start + length].tolist()
                out["head_attr"][item] = per_head[i].tolist()
                out["attr_before"][item] = float(per_source[i, :start].sum())
    return out


def head_share_figure(encoder: Sequence[float], decoder: Sequence[float], title: str = "share of weight norm per head"):
    """Grouped bars: each head's share of a feature's encoder and decoder weight norm."""
    import plotly.graph_objects as go

    heads = [f"H{h}" for h in range(len(encoder))]
    fig = go.Figure([go.Bar(x=heads, y=list(encoder), name="encoder"), go.Bar(x=heads, y=list(decoder), name="decoder")])
    fig.update_layout(title=title, barmode="group", yaxis_title="share", height=260, margin=dict(t=40, b=30))
    return fig


def add_head_columns(model, sae, tokens: np.ndarray, features: pd.DataFrame, contexts: pd.DataFrame,
                     batch_size: int = 16) -> dict[str, int]:
    """Add what the feature pages of a hook_z SAE show: `enc_head_shares` and `dec_head_shares` to `features`
    (one row per feature, in feature order), and `source_attr`, `head_attr`, `attr_before` to the top contexts
    (`group_rank` 0; null elsewhere) of `contexts` (from `features.feature_tables`, read from `tokens`).
    Returns the sae.json keys a page needs: layer, n_heads, n_kv_heads, d_head."""
    layer = attn_layer(sae)
    n_heads = model.cfg.n_heads
    shares = head_shares(sae, n_heads)
    ids = features["feature"].to_numpy()
    features["enc_head_shares"] = list(shares["encoder"].cpu().numpy()[ids])
    features["dec_head_shares"] = list(shares["decoder"].cpu().numpy()[ids])
    top = np.flatnonzero(contexts["group_rank"].to_numpy() == 0)
    found = context_attributions(model, sae, tokens, contexts.iloc[top], batch_size)
    for column, values in found.items():
        full: list = [None] * len(contexts)
        for i, value in zip(top, values):
            full[i] = value
        contexts[column] = full
    return {"layer": layer, "n_heads": n_heads, "n_kv_heads": getattr(model.cfg, "n_key_value_heads", None) or n_heads,
            "d_head": sae.cfg.d_in // n_heads}

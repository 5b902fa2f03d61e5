"""Transcoder circuits (Dunefsky et al. 2024): what drives a transcoder feature at one token.

A layer-L transcoder feature f reads `blocks.L.ln2.hook_normalized` = resid_mid / scale, so its
pre-activation is a sum over everything written into the residual stream at that position:

    h_f = sum_c (c . W_enc[:, f]) / scale + b_enc[f]

where c runs over the token embedding, each attention output (layers <= L) and each earlier MLP
output. Where an earlier layer l has a transcoder, its MLP output is split into its features'
contributions a_i(x) W_dec_l[i], its output bias and its reconstruction error. A feature's
attribution is then (W_dec_l[i] . W_enc_L[:, f]) x a_i(x) / scale: the first factor is
input-invariant (fixed by the weights), the second input-dependent (the earlier feature's
activation on this input, with the layer norm scale of this token frozen). The rows sum exactly to
h_f. Attention is kept as one direct-path term per layer (not traced through its OV circuit).

Under LayerNorm (GPT-2) the norm also subtracts each vector's mean, so W_enc[:, f] is read centred. Under
Gemma's norms after attention and MLP the hooks hold what is added to the residual, so the split holds as is.
Post-norm blocks (OLMo-2) have no norm before the MLP (`ln2` normalises its output), so they are refused.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from interp.errors import InterpError
from interp.hooks import check_layer
from interp.models.arch import centered_norms, post_norm
from interp.results import Result, register_result
from interp.sae.io import is_transcoder
from interp.tokens import encode, str_tokens


@register_result
@dataclasses.dataclass
class TranscoderAttribution(Result):
    kind = "transcoder_attribution"
    prompt: str
    tokens: list[str]
    layer: int
    feature: int
    position: int
    activation: float
    pre_activation: float
    encoder_bias: float
    scale: float  # ln2 scale of the token (RMS of resid_mid), frozen
    contributions: pd.DataFrame  # source, layer, feature, position, input_invariant, input_dependent, attribution

    def to_frame(self) -> pd.DataFrame:
        return self.contributions

    def figure(self):
        import plotly.graph_objects as go

        from interp.plotting import escape_label

        top = self.top(20)[::-1]
        labels = [f"{r.source} L{r.layer}" + (f" #{r.feature}" if r.feature >= 0 else "") for r in top.itertuples()]
        fig = go.Figure(go.Bar(x=top["attribution"], y=labels, orientation="h"))
        fig.update_layout(title=escape_label(f"L{self.layer} feature {self.feature} at {self.tokens[self.position]!r}: "
                                             f"pre-activation {self.pre_activation:.3f}"), xaxis_title="contribution")
        return fig

    def top(self, n: int = 10) -> pd.DataFrame:
        order = self.contributions["attribution"].abs().sort_values(ascending=False).index
        return self.contributions.loc[order].head(n)

    def summary(self) -> str:
        return (f"transcoder L{self.layer} feature {self.feature} at position {self.position} "
                f"({self.tokens[self.position]!r}): activation {self.activation:.3f}, pre-activation "
                f"{self.pre_activation:.3f} = contributions + bias {self.encoder_bias:.3f}\n"
                + self.top(15).to_string(index=False))


def _row(source: str, layer: int, vector: torch.Tensor, enc: torch.Tensor, scale: float, feature: int = -1,
         activation: float = 1.0) -> dict:
    invariant = float(vector @ enc)
    return {"source": source, "layer": layer, "feature": feature, "input_invariant": invariant,
            "input_dependent": activation, "attribution": invariant * activation / scale}


@torch.no_grad()
def attribute(model, transcoders: dict[int, object], prompt: str, layer: int, feature: int,
              position: int = -1) -> TranscoderAttribution:
    """Split the pre-activation of transcoder `feature` at `layer` and `position` of `prompt` into
    contributions of earlier transcoder features, tokens, attention, biases and errors."""
    if post_norm(model):
        raise InterpError(f"transcoder attributions split the residual read by ln2 before the MLP; "
                          f"{model.cfg.original_architecture} has no norm there (its ln2 follows the MLP)")
    layer = check_layer(model, layer)
    if layer not in transcoders:
        raise InterpError(f"no transcoder given for layer {layer}; pass one for every layer you attribute at")
    for l, tc in transcoders.items():
        if not is_transcoder(tc):
            raise InterpError(f"the model given for layer {l} is not a transcoder; load one trained with --hook-out")
    target = transcoders[layer]
    if not 0 <= feature < target.cfg.d_sae:
        raise InterpError(f"feature {feature} is out of range; the transcoder has {target.cfg.d_sae} features")
    tokens = encode(model, prompt)
    t = position % tokens.shape[1]
    names = {"hook_embed", "hook_pos_embed", f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.ln2.hook_scale"}
    names |= {f"blocks.{l}.hook_attn_out" for l in range(layer + 1)} | {f"blocks.{l}.hook_mlp_out" for l in range(layer)}
    names |= {f"blocks.{l}.ln2.hook_normalized" for l in transcoders if l <= layer}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=layer + 1)

    enc = target.W_enc[:, feature].detach()
    if centered_norms(model):  # (c - mean c) . enc == c . (enc - mean enc)
        enc = enc - enc.mean()
    scale = float(cache[f"blocks.{layer}.ln2.hook_scale"][0, t])
    rows = [_row("token", 0, cache["hook_embed"][0, t], enc, scale)]
    if "hook_pos_embed" in cache.cache_dict:
        rows.append(_row("position", 0, cache["hook_pos_embed"][0, t], enc, scale))
    for l in range(layer + 1):
        rows.append(_row("attention", l, cache[f"blocks.{l}.hook_attn_out"][0, t], enc, scale))
        if l == layer:
            break
        mlp_out = cache[f"blocks.{l}.hook_mlp_out"][0, t]
        if l not in transcoders:
            rows.append(_row("mlp", l, mlp_out, enc, scale))
            continue
        tc = transcoders[l]
        acts = tc.encode(cache[f"blocks.{l}.ln2.hook_normalized"][0, t][None])[0]
        invariant = tc.W_dec @ enc  # every feature's input-invariant connection
        for i in torch.nonzero(acts).flatten().tolist():
            rows.append({"source": "transcoder", "layer": l, "feature": i, "input_invariant": float(invariant[i]),
                         "input_dependent": float(acts[i]), "attribution": float(invariant[i] * acts[i]) / scale})
        rows.append(_row("output bias", l, tc.b_dec, enc, scale))
        rows.append(_row("error", l, mlp_out - tc.decode(acts[None])[0], enc, scale))
    frame = pd.DataFrame(rows)
    frame.insert(3, "position", t)
    x = cache[f"blocks.{layer}.ln2.hook_normalized"][0, t]
    pre = float(x @ enc + target.b_enc[feature])
    return TranscoderAttribution(
        prompt=prompt, tokens=str_tokens(model, tokens), layer=layer, feature=feature, position=t,
        activation=float(target.encode(x[None])[0, feature]), pre_activation=pre,
        encoder_bias=float(target.b_enc[feature]), scale=scale, contributions=frame)


@torch.no_grad()
def invariant_connections(earlier, later, feature: int, n: int = 20) -> pd.DataFrame:
    """The input-invariant part alone: W_dec_earlier @ W_enc_later[:, feature] for every earlier
    feature, largest in magnitude first (what could drive `feature` on any input)."""
    weights = earlier.W_dec @ later.W_enc[:, feature]
    top = weights.abs().topk(min(n, len(weights)))
    return pd.DataFrame({"feature": top.indices.tolist(), "input_invariant": weights[top.indices].tolist()})

"""Logit lens (final norm applied to every layer's residual, then the unembedding) and direct logit
attribution of each attention and MLP output to the answer token."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from interp.models.arch import norm_weight
from interp.models.readout import capped, final_bias_logits, residual_logits, soft_cap
from interp.results import Result, register_result
from interp.tokens import answer_token, encode, str_tokens


@register_result
@dataclasses.dataclass
class LensResult(Result):
    kind = "lens"
    model: str
    prompt: str
    tokens: list[str]
    answer: str
    answer_id: int
    layers: list[str]  # "embed", then one label per block output
    answer_prob: torch.Tensor  # [L+1] at the last position
    answer_rank: torch.Tensor  # [L+1], 0 = top
    top_tokens: list[list[str]]  # [L+1][k] at the last position
    top_probs: torch.Tensor  # [L+1, k]
    grid_tokens: list[list[str]]  # [L+1][T] top-1 token at every position
    grid_probs: torch.Tensor  # [L+1, T]
    dla_labels: list[str]
    dla: torch.Tensor  # [components] contribution to the answer logit (they sum to it, see `logit_lens`)
    answer_logit: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "layer": self.layers,
            "answer_prob": self.answer_prob.tolist(),
            "answer_rank": self.answer_rank.tolist(),
            "top_token": [t[0] for t in self.top_tokens],
            "top_prob": self.top_probs[:, 0].tolist(),
        })

    def dla_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"component": self.dla_labels, "logit": self.dla.tolist()})

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label, token_labels

        layers = [escape_label(layer) for layer in self.layers]
        fig = make_subplots(rows=1, cols=3, column_widths=[0.45, 0.25, 0.3], subplot_titles=(
            "top-1 token per layer and position", escape_label(f"P({self.answer!r}) per layer"),
            "direct logit attribution"))
        fig.add_trace(go.Heatmap(
            z=self.grid_probs.tolist(), x=token_labels(self.tokens), y=layers,
            text=[[escape_label(t) for t in row] for row in self.grid_tokens], texttemplate="%{text}",
            colorscale="Blues", showscale=False,
            hovertemplate="layer %{y}<br>position %{x}<br>top %{text} p=%{z:.3f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=self.answer_prob.tolist(), y=layers, mode="lines+markers",
                                 name="probability"), 1, 2)
        fig.add_trace(go.Bar(x=[escape_label(label) for label in self.dla_labels], y=self.dla.tolist(),
                             name="logit"), 1, 3)
        fig.update_layout(title=escape_label(f"Logit lens: {self.prompt!r} -> {self.answer!r}"), height=700,
                          showlegend=False)
        return fig

    def summary(self) -> str:
        frame = self.to_frame()
        top = self.dla_frame().sort_values("logit", key=abs, ascending=False).head(5)
        return "\n".join([
            f"logit lens for {self.prompt!r}; answer {self.answer!r}",
            frame.to_string(index=False),
            "largest direct logit attributions:",
            top.to_string(index=False),
        ])


@torch.no_grad()
def logit_lens(model, prompt: str, target: str | None = None, k: int = 5) -> LensResult:
    """Read every layer's residual through the final norm and unembedding; attribute the answer logit.

    The answer is the model's own top-1 next token, or the first token of `target`. The attributions sum to the
    answer logit: a "bias" row holds what no component writes (the final LayerNorm's bias and the unembedding
    bias, GPT-2), and under a final soft-cap (Gemma-2/3) each component gets its share of the pre-cap logit
    times capped / pre-cap logit (the cap is monotone, so signs and ranks stay).
    """
    tokens = encode(model, prompt)
    L = model.cfg.n_layers
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale"]
    names += [f"blocks.{l}.{h}" for l in range(L) for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")]
    names.append(f"blocks.{L - 1}.hook_resid_post")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    answer_id = int(logits[0, -1].argmax()) if target is None else answer_token(model, target)[0]

    resid = torch.stack([cache[f"blocks.{l}.hook_resid_pre"][0] for l in range(L)]
                        + [cache[f"blocks.{L - 1}.hook_resid_post"][0]])  # [L+1, T, d]
    probs = residual_logits(model, resid).float().softmax(-1)  # each layer normalised by its own scale
    last = probs[:, -1]
    answer_prob = last[:, answer_id]
    answer_rank = (last > answer_prob[:, None]).sum(-1)
    top_probs, top_ids = last.topk(k, dim=-1)
    grid_probs, grid_ids = probs.max(-1)

    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)  # [components, 1, d], centred and / scale
    weight = norm_weight(model, model.ln_final)  # which apply_ln_to_stack leaves out (it expects folded norms)
    if weight is not None:
        stack = stack * weight
    direction = model.tokens_to_residual_directions(torch.tensor(answer_id))
    dla = stack[:, 0].float() @ direction.float()  # float32 whatever the model's dtype
    bias = float(final_bias_logits(model)[answer_id])
    if bias != 0.0:
        dla, labels = torch.cat([dla, dla.new_tensor([bias])]), [*labels, "bias"]
    answer_logit = float(logits[0, -1, answer_id])
    if soft_cap(model) is not None:  # each share of the pre-cap logit z, times capped(z) / z
        z = dla.sum()
        dla = dla * (capped(model, z) / z if z != 0 else 1.0)
    return LensResult(
        model=getattr(model.cfg, "spec", model.cfg.model_name),
        prompt=prompt,
        tokens=str_tokens(model, tokens),
        answer=model.tokenizer.decode([answer_id]),
        answer_id=answer_id,
        layers=["embed"] + [str(l) for l in range(L)],
        answer_prob=answer_prob,
        answer_rank=answer_rank,
        top_tokens=[[model.tokenizer.decode([i]) for i in row] for row in top_ids.tolist()],
        top_probs=top_probs,
        grid_tokens=[[model.tokenizer.decode([i]) for i in row] for row in grid_ids.tolist()],
        grid_probs=grid_probs,
        dla_labels=[str(x) for x in labels],
        dla=dla,
        answer_logit=answer_logit,
    )

"""FFN sub-updates in vocabulary space (Geva et al. 2022, "Transformer Feed-Forward Layers Build Predictions
by Promoting Concepts in the Vocabulary Space").

An MLP's output at one position is a sum of sub-updates, one per neuron i:

    mlp_out = sum_i m_i * v_i + b_out,

where the coefficient m_i is the neuron's activation (`blocks.L.mlp.hook_post`: act(x W_in) for GPT-2,
act(x W_gate) * (x W_up) for SwiGLU models such as Llama and SmolLM2) and the value vector v_i is row i
of W_out [d_mlp, d_model]. Each v_i is read in the vocabulary through the unembedding (see
`interp.ffn.vocab` for why the final norm's gain is applied). Per layer, this finds the sub-updates with
the largest |m_i| * ||v_i||, their tokens, and how the layer's update moves the final answer.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from interp.errors import InterpError
from interp.ffn.table import table_fingerprint
from interp.ffn.vocab import readout, vocab_extremes
from interp.hooks import check_layer, mlp_out, mlp_post, resid_mid, resid_post
from interp.results import Result, register_result
from interp.tokens import answer_token, encode, str_tokens

PROMOTE_K = 10  # sub-updates added to the residual for the "top sub-updates only" reading


def check_position(position: int, n_tokens: int) -> int:
    """`position` as an index in [0, n_tokens), or a one-line error (negative counts from the end)."""
    if not -n_tokens <= position < n_tokens:
        raise InterpError(f"--position {position} is out of range: the prompt has {n_tokens} token(s), so pass "
                          f"0..{n_tokens - 1} or -{n_tokens}..-1, or a longer prompt")
    return position % n_tokens


def check_counts(**counts: int) -> None:
    """Refuse any count (sub-updates or tokens per list) below one, naming it."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InterpError(f"{name} must be a whole number of 1 or more (got {value!r})")


@register_result
@dataclasses.dataclass
class FFNResult(Result):
    """Per layer, the largest MLP sub-updates at one position and what the update does to the answer.

    `updates` has one row per (layer, sub-update), `rank` 1 the largest |contribution|:
    `neuron`, `coefficient` m_i (signed), `value_norm` ||v_i||, `contribution` m_i * ||v_i|| (signed:
    the ranking uses its size), `answer_score` the sub-update's direct effect on the answer's logit
    (m_i * readout(v_i) . W_U[:, answer], before the final norm's 1/rms), `top_tokens` / `bottom_tokens`
    the value vector's highest and lowest scoring tokens, and `promotes`: the tokens the signed sub-update
    m_i v_i pushes up (top_tokens when m_i > 0, bottom_tokens when m_i < 0, which SwiGLU allows).

    `per_layer` has one row per layer: the answer's rank (0 = top) and probability read from the
    residual before the MLP (`hook_resid_mid`), after it (`hook_resid_post`), and before it plus only the
    `promote_k` largest sub-updates, each through the final norm and unembedding; and `identity_error`,
    the largest |sum_i m_i v_i + b_out - hook_mlp_out| (float rounding only). `weights` is the
    fingerprint of the weights the vocabulary readings come from (`interp.ffn.table.table_fingerprint`),
    which names the matching neuron table in a workspace.
    """

    kind = "ffn"
    model: str
    prompt: str
    tokens: list[str]
    position: int
    answer: str
    answer_id: int
    promote_k: int
    weights: str
    updates: pd.DataFrame
    per_layer: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.updates

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp.plotting import escape_label

        layers = self.per_layer["layer"].tolist()
        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=(
            escape_label(f"P({self.answer!r}) read from the residual"),
            "largest sub-updates (hover: tokens they promote)"))
        for column, label in (("prob_before", "before the MLP"), ("prob_top", f"before + top {self.promote_k}"),
                              ("prob_after", "after the MLP")):
            fig.add_trace(go.Scatter(x=layers, y=self.per_layer[column].tolist(), mode="lines+markers",
                                     name=label), 1, 1)
        rows = self.updates
        hover = [escape_label(f"L{r.layer} n{r.neuron}: m={r.coefficient:.3g} promotes {' '.join(r.promotes[:6])!r}")
                 for r in rows.itertuples()]
        fig.add_trace(go.Scatter(
            x=rows["layer"].tolist(), y=rows["contribution"].tolist(), mode="markers", text=hover,
            hovertemplate="%{text}<br>m|v| = %{y:.3g}<extra></extra>", name="sub-update",
            marker=dict(color=rows["answer_score"].tolist(), colorscale="RdBu", cmid=0, showscale=True,
                        colorbar=dict(title="answer score", x=1.02))), 1, 2)
        fig.update_yaxes(type="log", title_text="probability", row=1, col=1)
        fig.update_yaxes(title_text="m_i ||v_i||", row=1, col=2)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=escape_label(f"FFN sub-updates at {self.tokens[self.position]!r} "
                                             f"(position {self.position}) -> {self.answer!r}"), height=550)
        return fig

    def summary(self) -> str:
        lines = [f"FFN sub-updates for {self.prompt!r} at position {self.position} "
                 f"({self.tokens[self.position]!r}); answer {self.answer!r}",
                 self.per_layer.drop(columns="identity_error").to_string(index=False, float_format="%.4g")]
        for layer, rows in self.updates.groupby("layer", sort=False):
            lines.append(f"layer {layer}:")
            lines += [f"  n{r.neuron:<6} m={r.coefficient:+.3g}  m|v|={r.contribution:+.3g}  "
                      f"promotes {' '.join(map(repr, r.promotes[:6]))}" for r in rows.head(5).itertuples()]
        return "\n".join(lines)


def answer_readings(model, residuals: torch.Tensor, answer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank, probability) of `answer_id` for each residual [n, d_model] read through the final norm and the
    unembedding (rank 0 = the top token)."""
    probs = model.unembed(model.ln_final(residuals[None]))[0].float().softmax(-1)  # [n, d_vocab]
    answer = probs[:, answer_id]
    return (probs > answer[:, None]).sum(-1), answer


def _layer(model, layer: int, acts: dict[str, torch.Tensor], answer_id: int, top: int, n_tokens: int,
           promote_k: int) -> tuple[dict, list[dict]]:
    """One layer's row of `per_layer` and its `top` rows of `updates`, from its activations at the position."""
    W_out = model.blocks[layer].mlp.W_out  # [d_mlp, d_model]: row i is value vector v_i
    m = acts[mlp_post(layer)]  # [d_mlp]
    norms = W_out.norm(dim=-1)
    contribution = m * norms
    order = contribution.abs().argsort(descending=True)
    updates = m[:, None] * W_out  # [d_mlp, d_model]: sub-update i is m_i v_i
    identity_error = (updates.sum(0) + model.blocks[layer].mlp.b_out - acts[mlp_out(layer)]).abs().max()

    before = acts[resid_mid(layer)]
    rank, prob = answer_readings(model, torch.stack([
        before, acts[resid_post(layer)], before + updates[order[:promote_k]].sum(0)]), answer_id)
    reading = {"layer": layer, "rank_before": int(rank[0]), "prob_before": float(prob[0]),
               "rank_after": int(rank[1]), "prob_after": float(prob[1]), "rank_top": int(rank[2]),
               "prob_top": float(prob[2]), "identity_error": float(identity_error)}

    shown = order[:top]
    extremes = vocab_extremes(model, W_out[shown], n_tokens)
    scores = (readout(model, updates[shown]) @ model.W_U[:, answer_id]).tolist()
    rows = []
    for i, neuron in enumerate(shown.tolist()):
        top_tokens, bottom_tokens = ([model.tokenizer.decode([t]) for t in extremes[side][i].tolist()]
                                     for side in ("top_ids", "bottom_ids"))
        coefficient = float(m[neuron])
        rows.append({"layer": layer, "rank": i + 1, "neuron": neuron, "coefficient": coefficient,
                     "value_norm": float(norms[neuron]), "contribution": float(contribution[neuron]),
                     "answer_score": scores[i], "top_tokens": top_tokens, "bottom_tokens": bottom_tokens,
                     "promotes": top_tokens if coefficient >= 0 else bottom_tokens})
    return reading, rows


@torch.no_grad()
def ffn_updates(model, prompt: str, layers: list[int] | None = None, top: int = 10, position: int = -1,
                target: str | None = None, n_tokens: int = 8, promote_k: int = PROMOTE_K) -> FFNResult:
    """The MLP sub-updates of `layers` (default: all) at `position` of `prompt` (default: the last token).

    Ranked by the size of the contribution |m_i| * ||v_i|| (Geva et al. rank by m_i ||v_i||; with SwiGLU a
    coefficient can be large and negative, so the sign is kept in `contribution` but not used to rank).
    The answer is `target`'s first token, or the model's own top-1 prediction at `position`. `top`
    sub-updates per layer are listed with `n_tokens` top and bottom tokens each; `promote_k` (10, as in
    the paper) of them are added alone to the residual for the per-layer reading. See `FFNResult`.
    """
    check_counts(top=top, n_tokens=n_tokens, promote_k=promote_k)
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, layer) for layer in layers]
    tokens = encode(model, prompt)
    position = check_position(position, tokens.shape[1])
    answer_id = answer_token(model, target)[0] if target is not None else None

    names = [name for layer in layers for name in (mlp_post(layer), mlp_out(layer), resid_mid(layer), resid_post(layer))]
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    if answer_id is None:
        answer_id = int(logits[0, position].argmax())
    rows, per_layer = [], []
    for layer in layers:
        acts = {name: cache[name][0, position] for name in (mlp_post(layer), mlp_out(layer), resid_mid(layer),
                                                            resid_post(layer))}
        reading, layer_rows = _layer(model, layer, acts, answer_id, top, n_tokens, promote_k)
        per_layer.append(reading)
        rows += layer_rows
    return FFNResult(
        model=getattr(model.cfg, "spec", model.cfg.model_name), prompt=prompt, tokens=str_tokens(model, tokens),
        position=position, answer=model.tokenizer.decode([answer_id]), answer_id=answer_id, promote_k=promote_k,
        weights=table_fingerprint(model),
        updates=pd.DataFrame(rows), per_layer=pd.DataFrame(per_layer))

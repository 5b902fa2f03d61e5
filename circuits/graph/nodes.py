"""The nodes of a prompt's graph and the vectors that connect them to the residual stream.

Sources write a vector into the residual stream: a feature writes activation x decoder row at its MLP's
output, an error node writes the part of the MLP output its transcoder misses, an embedding node writes
the token (+ learned position) embedding. Targets read a vector: a feature reads its encoder column through
the frozen ln2 scale (its pre-activation), a logit reads its unembedding column minus the vocabulary mean
through the frozen final norm (the logit minus the mean logit). Everything else a target's value depends
on is a constant (biases), kept apart so that incoming edges + constants = the value, exactly.

Column order of all nodes (as circuit-tracer orders its adjacency): active features sorted by (layer,
position, index), then errors (layer-major, one per layer and position), embeddings (one per position),
logits. Position 0 has no features: its MLP outputs are error nodes at every layer (it carries the model's
massive activation and transcoders are not trained on it).
"""

from __future__ import annotations

import dataclasses

import torch

from circuits.graph.frozen import Frozen
from interp.errors import InterpError

MAX_LOGITS = 10
LOGIT_PROB = 0.95


@dataclasses.dataclass
class Nodes:
    """All candidate nodes of one prompt. F active features, K logits, L layers, T positions."""

    feat_layer: torch.Tensor  # [F] long
    feat_pos: torch.Tensor  # [F] long
    feat_index: torch.Tensor  # [F] long, latent index in its layer's transcoder
    activation: torch.Tensor  # [F]
    pre_activation: torch.Tensor  # [F] as the transcoder computes it on the real forward pass
    feat_write: torch.Tensor  # [F, d] activation x decoder row
    feat_read: torch.Tensor  # [F, d] P(encoder column) / ln2 scale
    feat_bias: torch.Tensor  # [F] encoder bias
    error_write: torch.Tensor  # [L, T, d]
    b_dec: list[torch.Tensor | None]  # per layer: the transcoder's output bias (written at positions >= 1)
    logit_ids: torch.Tensor  # [K] long
    logit_probs: torch.Tensor  # [K]
    logit_read: torch.Tensor  # [K, d]
    logit_bias: torch.Tensor  # [K] final norm bias and unembedding bias, demeaned
    logit_value: torch.Tensor  # [K] logit minus mean logit
    _starts: list[int] | None = dataclasses.field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        return len(self.feat_layer)

    @property
    def n_layers(self) -> int:
        return self.error_write.shape[0]

    @property
    def n_pos(self) -> int:
        return self.error_write.shape[1]

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def n_all(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + self.n_logits

    def error_col(self, layer: int, pos: int = 0) -> int:
        return self.n_features + layer * self.n_pos + pos

    def embed_col(self, pos: int = 0) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_col(self, k: int = 0) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + k

    def feature_span(self, layer: int, pos: int) -> tuple[int, int]:
        """[start, end) of the features of (layer, pos) among the feature columns."""
        if self._starts is None:
            key = self.feat_layer * self.n_pos + self.feat_pos
            bounds = torch.arange(self.n_layers * self.n_pos + 1, device=key.device)
            self._starts = torch.searchsorted(key, bounds).tolist()
        at = layer * self.n_pos + pos
        return self._starts[at], self._starts[at + 1]


def salient_logits(logits: torch.Tensor, target: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, probabilities): `target` alone, or the most likely tokens until they cover 0.95 (at most 10)."""
    probs = logits.softmax(-1)
    if target is not None:
        ids = torch.tensor([target], device=logits.device)
        return ids, probs[ids]
    top_p, top_ids = probs.topk(MAX_LOGITS)
    keep = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(LOGIT_PROB, device=top_p.device))) + 1
    return top_ids[:keep], top_p[:keep]


@torch.no_grad()
def find_nodes(frozen: Frozen, transcoders: dict[int, object], target: int | None = None) -> Nodes:
    """Encode every position >= 1 with each layer's transcoder and lay out all candidate nodes."""
    L, T = frozen.n_layers, frozen.n_pos
    d = frozen.embed.shape[1]
    layers, positions, indices, acts, pres, writes, reads, biases = [], [], [], [], [], [], [], []
    errors = torch.stack([f.mlp_out for f in frozen.layers])  # [L, T, d]; becomes the error below
    b_dec: list[torch.Tensor | None] = [None] * L
    for l, tc in sorted(transcoders.items()):
        x = frozen.layers[l].normalized2[1:]
        W_enc, W_dec = tc.W_enc.detach().float(), tc.W_dec.detach().float()
        b_enc, bias_out = tc.b_enc.detach().float(), tc.b_dec.detach().float()
        pre = x @ W_enc + b_enc
        act = tc.encode(x.to(tc.W_enc.dtype)).float()
        active = act != 0
        if not torch.allclose(act[active], pre[active], rtol=1e-4, atol=1e-5):
            raise InterpError(f"the layer-{l} transcoder's active latents are not its pre-activations "
                              "(an activation that rescales); graphs need ReLU, TopK or JumpReLU transcoders")
        pos, idx = active.nonzero(as_tuple=True)  # row-major: sorted by position, then latent
        a = act[pos, idx]
        layers.append(torch.full_like(pos, l))
        positions.append(pos + 1)
        indices.append(idx)
        acts.append(a)
        pres.append(pre[pos, idx])
        writes.append(a[:, None] * W_dec[idx])
        reads.append(frozen.center(W_enc[:, idx].T) / frozen.layers[l].scale2[pos + 1, None])
        biases.append(b_enc[idx])
        errors[l, 1:] -= act @ W_dec + bias_out
        b_dec[l] = bias_out
    like = frozen.embed

    def cat(parts: list[torch.Tensor], *shape: int, dtype=None) -> torch.Tensor:
        return torch.cat(parts) if parts else like.new_zeros(0, *shape, dtype=dtype)

    ids, probs = salient_logits(frozen.logits, target)
    unembed = frozen.W_U[:, ids] - frozen.W_U.mean(1, keepdim=True)  # [d, K], demeaned over the vocabulary
    last = T - 1
    logit_read = frozen.center((unembed * frozen.w_final[:, None]).T) / frozen.scale_final[last]
    logit_bias = frozen.b_final @ unembed + frozen.b_U[ids] - frozen.b_U.mean()
    return Nodes(
        feat_layer=cat(layers, dtype=torch.long), feat_pos=cat(positions, dtype=torch.long),
        feat_index=cat(indices, dtype=torch.long), activation=cat(acts), pre_activation=cat(pres),
        feat_write=cat(writes, d), feat_read=cat(reads, d), feat_bias=cat(biases),
        error_write=errors, b_dec=b_dec, logit_ids=ids, logit_probs=probs, logit_read=logit_read,
        logit_bias=logit_bias, logit_value=frozen.logits[ids] - frozen.logits.mean())

"""Context memory: how much of the preceding text a token's hidden states still hold.

The paper (LLM-Microscope, Razzhigaev et al. 2025) pools a token's hidden states from every layer with a
trainable linear pooling, passes the result through a small MLP into a copy of the model as an input embedding,
fine-tunes that copy to regenerate the token's prefix, and calls the prefix's reconstruction loss the token's
context memory (low loss: much context). Back-propagating through a decoder for every step is far beyond a
quick CPU run, so this module keeps the paper's pooling and replaces the decoder by linear read-outs:

- pooling: softmax(w) [L+1] weights the token's RMS-normalised hidden states of every layer (embedding
  included) into one vector p [d], as the paper's linear pooling does;
- read-out: for each offset k = 1..window, a linear map M_k [d, d] turns p into a guess of the k-th preceding
  token's input embedding; the loss is 1 - cos(p M_k, e(t_{i-k})) (the unit input embedding of that token);
- training: the maps start at the ridge-regression solution for even pooling (closed form), then Adam tunes
  pooling and maps together for `steps` steps on random batches of reference tokens (generator seeded with
  `seed`);
- a token's score is the mean loss over its available offsets (`context_loss`, lower = more context kept) and
  the share of those offsets whose nearest input embedding (cosine, whole vocabulary) is the true token
  (`context_acc`).
"""

from __future__ import annotations

import dataclasses

import torch

from interp.errors import InterpError


@dataclasses.dataclass(kw_only=True)
class MemoryConfig:
    """Settings of the context-memory read-out (see the module docstring)."""

    window: int = 8
    steps: int = 100
    batch: int = 256
    lr: float = 1e-3
    ridge: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("window", "steps", "batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InterpError(f"memory {name} must be a whole number of at least 1 (got {getattr(self, name)!r})")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise InterpError(f"memory lr must be in (0, 1) (got {self.lr!r})")
        if not (isinstance(self.ridge, (int, float)) and 0 <= self.ridge < float("inf")):
            raise InterpError(f"memory ridge must be a finite number of at least 0 (got {self.ridge!r})")


def rms_normalize(states: torch.Tensor) -> torch.Tensor:
    """Each vector divided by its root mean square (so layers of very different norms pool evenly)."""
    return states / states.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-6)


class ContextHead(torch.nn.Module):
    """Pooling over layers and one linear read-out per offset: states [L+1, N, d] -> guesses [N, window, d]."""

    def __init__(self, n_states: int, d_model: int, window: int, generator: torch.Generator):
        super().__init__()
        self.pool = torch.nn.Parameter(torch.zeros(n_states))
        self.maps = torch.nn.Parameter(torch.randn(window, d_model, d_model, generator=generator) / d_model ** 0.5)

    def pooled(self, states: torch.Tensor) -> torch.Tensor:
        """The softmax-weighted sum over layers of RMS-normalised states: [L+1, N, d] -> [N, d]."""
        return torch.einsum("l,lnd->nd", self.pool.softmax(0), rms_normalize(states))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,kde->nke", self.pooled(states), self.maps)

    @torch.no_grad()
    def fit_maps(self, states: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, embeddings: torch.Tensor,
                 ridge: float) -> None:
        """Set each map M_k to the ridge-regression solution from the current pooling to the target embeddings:
        states [L+1, N, d], ids and mask [N, window]; `ridge` is relative to the mean eigenvalue of P^T P."""
        pooled = self.pooled(states).double()
        for k in range(self.maps.shape[0]):
            p = pooled[mask[:, k]]
            gram = p.T @ p
            gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
            self.maps[k] = torch.linalg.solve(gram, p.T @ embeddings[ids[mask[:, k], k]].double()).float()


def prefix_targets(tokens: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For token rows [R, S]: ids [R, S, window] of the k-th preceding token (k = 1..window) and a mask of
    those that exist (position >= k)."""
    R, S = tokens.shape
    offsets = torch.arange(1, window + 1)
    source = torch.arange(S)[:, None] - offsets[None, :]  # [S, window]
    mask = (source >= 0).expand(R, S, window)
    ids = tokens[:, source.clamp_min(0)]  # [R, S, window]
    return ids, mask


def cosine_loss(guesses: torch.Tensor, target_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """1 - cos(guess, unit embedding of the target): guesses [..., d], ids [...] -> [...]."""
    return 1 - torch.nn.functional.cosine_similarity(guesses, embeddings[target_ids], dim=-1)


def train_context_head(states: torch.Tensor, tokens: torch.Tensor, embeddings: torch.Tensor,
                       config: MemoryConfig) -> ContextHead:
    """Fit a ContextHead on reference rows: states [L+1, R, S, d], tokens [R, S], unit embeddings [V, d].

    Position 0 of each row (no prefix, and the attention sink with outsized norms) is not trained on.
    """
    n_states, R, S, d = states.shape
    generator = torch.Generator().manual_seed(config.seed)
    head = ContextHead(n_states, d, config.window, generator)
    ids, mask = prefix_targets(tokens, config.window)
    flat_states = states[:, :, 1:].reshape(n_states, -1, d)
    flat_ids, flat_mask = ids[:, 1:].reshape(-1, config.window), mask[:, 1:].reshape(-1, config.window)
    if flat_states.shape[1] == 0:
        raise InterpError("the reference rows have no token with a prefix; use a longer --seq-len")
    head.fit_maps(flat_states, flat_ids, flat_mask, embeddings, config.ridge)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    with torch.enable_grad():
        for _ in range(config.steps):
            pick = torch.randint(flat_states.shape[1], (config.batch,), generator=generator)
            loss = cosine_loss(head(flat_states[:, pick]), flat_ids[pick], embeddings)
            m = flat_mask[pick]
            loss = (loss * m).sum() / m.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


@torch.no_grad()
def context_scores(head: ContextHead, states: torch.Tensor, tokens: torch.Tensor, embeddings: torch.Tensor,
                   chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(context_loss [R, S], context_acc [R, S]) of token rows: states [L+1, R, S, d], tokens [R, S].

    Each is the mean over the token's existing offsets; NaN at position 0, which has no prefix.
    """
    n_states, R, S, d = states.shape
    window = head.maps.shape[0]
    ids, mask = prefix_targets(tokens, window)
    flat_states = states.reshape(n_states, R * S, d)
    flat_ids, flat_mask = ids.reshape(R * S, window), mask.reshape(R * S, window).double()
    losses, hits = [], []
    for start in range(0, R * S, chunk):
        guesses = head(flat_states[:, start:start + chunk])  # [n, window, d]
        target = flat_ids[start:start + chunk]
        losses.append(cosine_loss(guesses, target, embeddings).double())
        nearest = (torch.nn.functional.normalize(guesses, dim=-1) @ embeddings.T).argmax(-1)
        hits.append((nearest == target).double())
    count = flat_mask.sum(-1)
    loss = (torch.cat(losses) * flat_mask).sum(-1) / count
    acc = (torch.cat(hits) * flat_mask).sum(-1) / count
    return loss.reshape(R, S).float(), acc.reshape(R, S).float()

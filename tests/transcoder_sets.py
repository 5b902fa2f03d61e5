"""Transcoder sets for tests: small ones trained for a few thousand tokens with `interp.sae.train`, so
their features are real (sparse, input-dependent) and making them takes about a second on a tiny model."""

from __future__ import annotations

from pathlib import Path

from interp.sae import TrainConfig, train


def train_tiny_set(model, out: Path, layers: list[int], tokens: int = 16_384, k: int = 8, expansion: float = 4.0,
                   arch: str = "topk") -> Path:
    """Train one transcoder per layer (ln2.hook_normalized -> hook_mlp_out) into out/layer-XX; return out."""
    for layer in layers:
        cfg = TrainConfig(hook=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out",
                          arch=arch, k=k, expansion=expansion, tokens=tokens, batch_tokens=256, buffer_tokens=4096,
                          norm_tokens=1024, checkpoint_every=0, lm_batch_size=8, seq_len=64, progress=False, lr=1e-2)
        train(model, cfg, out / f"layer-{layer:02d}")
    return out

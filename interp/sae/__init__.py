"""Sparse autoencoders and transcoders: train (sae-lens architectures, 1..N processes), evaluate,
analyse features, and attribute transcoder features to earlier ones.

    from interp.sae import TrainConfig, train, load_sae, evaluate
    train(model, TrainConfig(hook="blocks.15.hook_resid_post", arch="topk", k=32, tokens=500_000), "out/sae")
    print(evaluate(model, load_sae("out/sae")).summary())
"""

from interp.sae.config import ARCHS, TrainConfig
from interp.sae.io import load_sae
from interp.sae.train import SAETrainResult, train

__all__ = ["ARCHS", "TrainConfig", "SAETrainResult", "train", "load_sae"]

"""Sparse autoencoders and transcoders: train (sae-lens architectures, 1..N processes), evaluate,
analyse features, and attribute transcoder features to earlier ones.

    from interp.sae import TrainConfig, train, load_sae, evaluate
    train(model, TrainConfig(hook="blocks.15.hook_resid_post", arch="topk", k=32, tokens=500_000), "out/sae")
    print(evaluate(model, load_sae("out/sae")).summary())

    # one transcoder per layer, all from the same model passes
    members = layer_configs(range(30), hook="blocks.{l}.ln2.hook_normalized", hook_out="blocks.{l}.hook_mlp_out",
                            k=32, expansion=4, tokens=1_000_000)
    train_set(model, members, "out/tc")
"""

from interp.sae.config import ARCHS, TrainConfig, layer_configs, sweep_configs
from interp.sae.io import load_sae
from interp.sae.train import SAESetTrainResult, SAETrainResult, train, train_set

__all__ = ["ARCHS", "TrainConfig", "SAETrainResult", "SAESetTrainResult", "train", "train_set", "layer_configs",
           "sweep_configs", "load_sae"]

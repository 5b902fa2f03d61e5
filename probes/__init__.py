"""Linear probes: datasets, activation collection, scikit-learn-shaped probes, layer sweeps, steering."""

from probes.collect import collect_activations
from probes.datasets import ProbeDataset, load_dataset
from probes.estimators import LogisticProbe, MassMeanProbe, RidgeProbe, make_probe
from probes.steering import SteeringResult, steer
from probes.sweep import ProbeSweepResult, probe_layers

__all__ = [
    "LogisticProbe", "MassMeanProbe", "ProbeDataset", "ProbeSweepResult", "RidgeProbe", "SteeringResult",
    "collect_activations", "load_dataset", "make_probe", "probe_layers", "steer",
]

"""Linear probes (Marks & Tegmark, Geometry of Truth): datasets, activations, estimators, layer sweeps
and causal tests of probe directions. Importing the package registers the `probe` and `steering`
result kinds, so saved workspaces load back."""

from probes.collect import cached_activations, collect_activations
from probes.datasets import BUILTIN, ProbeDataset, concat, load_dataset
from probes.estimators import LogisticProbe, MassMeanProbe, RidgeProbe, make_probe
from probes.steering import SteeringResult, steer
from probes.sweep import ProbeSweepResult, probe_layers, sweep

__all__ = [
    "BUILTIN", "LogisticProbe", "MassMeanProbe", "ProbeDataset", "ProbeSweepResult", "RidgeProbe",
    "SteeringResult", "cached_activations", "collect_activations", "concat", "load_dataset", "make_probe",
    "probe_layers", "steer", "sweep",
]

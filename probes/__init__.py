"""Linear probes (Marks & Tegmark, Geometry of Truth): datasets, activations, estimators, layer sweeps,
causal tests of probe directions, layer-wise trajectories with a single-pass detector, and probes across
training checkpoints. Importing the package registers the `probe`, `steering`, `probe_trajectory` and
`probe_checkpoints` result kinds, so saved workspaces load back."""

from probes.checkpoints import ProbeCheckpointResult, probe_checkpoints
from probes.collect import cached_activations, collect_activations
from probes.datasets import BUILTIN, ProbeDataset, concat, load_dataset
from probes.estimators import LogisticProbe, MassMeanProbe, RidgeProbe, make_probe
from probes.steering import SteeringResult, steer
from probes.sweep import ProbeSweepResult, probe_layers, sweep
from probes.trajectory import TrajectoryConfig, TrajectoryResult, probe_trajectory, trajectory

__all__ = [
    "BUILTIN", "LogisticProbe", "MassMeanProbe", "ProbeCheckpointResult", "ProbeDataset", "ProbeSweepResult",
    "RidgeProbe", "SteeringResult", "TrajectoryConfig", "TrajectoryResult", "cached_activations",
    "collect_activations", "concat", "load_dataset", "make_probe", "probe_checkpoints", "probe_layers",
    "probe_trajectory", "steer", "sweep", "trajectory",
]

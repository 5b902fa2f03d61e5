"""FFN layers in vocabulary space (Geva et al. 2022): per-prompt MLP sub-updates and the whole-model
neuron table of value-vector tokens."""

from interp.ffn.table import NeuronTable, neuron_table, neurons_promoting, search_table
from interp.ffn.updates import FFNResult, ffn_updates

__all__ = ["FFNResult", "NeuronTable", "ffn_updates", "neuron_table", "neurons_promoting", "search_table"]

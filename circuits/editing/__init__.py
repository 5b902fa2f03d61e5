"""Fact editing: ROME, MEMIT and PMET on the MLP output weights, with exact undo and
CounterFact-style evaluation.

    from circuits.editing import rome, make_request
    handle = rome(model, make_request("{} is located in the city of", "The Eiffel Tower", "Rome"))
    ...
    handle.undo()   # every weight back, bit for bit
"""

from circuits.editing.evaluate import aggregate, ngram_entropy, score_cases
from circuits.editing.handle import EditHandle, edit_stack
from circuits.editing.layers import memit_layers, rome_layer
from circuits.editing.memit import MEMITSettings, memit
from circuits.editing.pmet import PMETSettings, pmet
from circuits.editing.requests import EditRequest, load_records, make_request
from circuits.editing.result import EditResult
from circuits.editing.rome import ROMESettings, rome
from circuits.editing.run import METHODS, edit_and_evaluate, evaluate_each
from circuits.editing.save import save_model
from circuits.editing.stats import second_moments

__all__ = [
    "METHODS", "EditHandle", "EditRequest", "EditResult", "MEMITSettings", "PMETSettings", "ROMESettings",
    "aggregate", "edit_and_evaluate", "edit_stack", "evaluate_each", "load_records", "make_request", "memit",
    "memit_layers", "ngram_entropy", "pmet", "rome", "rome_layer", "save_model", "score_cases", "second_moments",
]

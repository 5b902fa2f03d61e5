"""Locating and editing factual recall: the built-in fact set, causal tracing, activation patching,
attention knockout."""

from circuits.facts import FACTS_PATH, fact_prompt, load_facts, read_facts, verify_facts
from circuits.knockout import KnockoutResult, knockout
from circuits.patching import PatchResult, patch
from circuits.trace_study import TraceStudyResult, trace_facts
from circuits.tracing import TraceResult, embedding_noise_std, trace

__all__ = [
    "FACTS_PATH", "KnockoutResult", "PatchResult", "TraceResult", "TraceStudyResult", "embedding_noise_std",
    "fact_prompt", "knockout", "load_facts", "patch", "read_facts", "trace", "trace_facts", "verify_facts",
]

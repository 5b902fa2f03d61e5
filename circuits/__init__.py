"""Locating and editing factual recall: the built-in fact set, causal tracing, activation patching,
attention knockout."""

from circuits.facts import FACTS_PATH, fact_prompt, load_facts, read_facts, verify_facts

__all__ = ["FACTS_PATH", "fact_prompt", "load_facts", "read_facts", "verify_facts"]

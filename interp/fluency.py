"""Fluency of generated text: the weighted n-gram entropy that ROME's evaluation uses.

Shared by the editing scores (`circuits.editing.evaluate`) and the steering dose-response
(`interp.steering`): a degenerate, repetitive generation ("the the the ...") has low entropy.
"""

from __future__ import annotations

import math
import re
from collections import Counter


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """The reference `compute_n_gram_entropy`: mean over n of weight_n x entropy (bits) of n-grams.

    Words are split like a simple word tokenizer (runs of word characters, single punctuation marks).
    """
    words = re.findall(r"\w+|[^\w\s]", text)
    out = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        out.append(w * -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(out) / len(out)

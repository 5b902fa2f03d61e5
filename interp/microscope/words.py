"""Token classes for the LLM-Microscope comparison: punctuation, articles and stopwords against content words.

A token is classed by its text with surrounding whitespace removed: `punctuation` when every character is ASCII
punctuation ("," ".\\n" "):"), `article` for a / an / the, `stopword` for other English function words (the
list below), `content` for any other alphabetic token (word pieces included), `other` for the rest (numbers,
whitespace, mixed text).
"""

from __future__ import annotations

import string

CLASSES = ("punctuation", "article", "stopword", "content", "other")
REMOVABLE = ("punctuation", "article", "stopword")  # the classes the paper deletes from its inputs
ARTICLES = frozenset({"a", "an", "the"})
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom whose this that these those am is are was
were be been being have has had having do does did doing would should could can will shall may might must and
but if or nor because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where why how all
any both each few more most other some such no not only own same so than too very just also s t d ll m o re ve
y don isn aren wasn weren hasn haven hadn doesn didn won wouldn shouldn couldn mustn needn
""".split())
_PUNCTUATION = frozenset(string.punctuation)


def token_class(token: str) -> str:
    """The class (one of `CLASSES`) of one token's text."""
    text = token.strip()
    if not text:
        return "other"
    if all(ch in _PUNCTUATION for ch in text):
        return "punctuation"
    word = text.lower()
    if word in ARTICLES:
        return "article"
    if word in STOPWORDS:
        return "stopword"
    return "content" if text.isalpha() else "other"


def is_prose(text: str, threshold: float = 0.75) -> bool:
    """Whether `text` reads as prose: at least `threshold` of its whitespace-separated words are letters,
    optionally with a trailing , . ; : ? or ! (code and tables fall below it)."""
    words = text.split()
    plain = sum(w.rstrip(",.;:?!").isalpha() for w in words)
    return bool(words) and plain >= threshold * len(words)

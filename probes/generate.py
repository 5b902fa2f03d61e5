"""Generate the built-in probe datasets (probes/data/*.csv) from the word lists in `probes.sources`.

Deterministic (fixed seeds), so `python -m probes.generate` rewrites identical files. Each dataset has
a negated variant built from the same rows with "not" inserted and the label flipped, as in Marks &
Tegmark's cities / neg_cities. Columns: text, label (1 = true / larger / positive; the number itself in `numbers`), group (rows that
share a group stay in one cross-validation fold), mark (a substring whose last token `position="mark"`
reads).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

from probes import sources

DATA_DIR = Path(__file__).parent / "data"
Row = dict[str, object]


def _row(text: str, label: int, group: str, mark: str) -> Row:
    return {"text": text, "label": label, "group": group, "mark": mark}


def _city_pairs() -> list[tuple[str, str, str, int]]:
    """(city, true country, stated country, label): every city once true, once with a wrong country."""
    rng = random.Random(6)
    countries = list(sources.CITIES)
    out = []
    for country, cities in sources.CITIES.items():
        for city in cities:
            wrong = rng.choice([c for c in countries if c != country])
            out += [(city, country, country, 1), (city, country, wrong, 0)]
    return out


def cities(negated: bool = False) -> list[Row]:
    verb = "is not in" if negated else "is in"
    return [_row(f"The city of {city} {verb} {stated}.", label ^ negated, city, stated.removeprefix("the "))
            for city, _, stated, label in _city_pairs()]


def number_word(n: int) -> str:
    """English words for 0..99: 'seven', 'thirteen', 'fifty-one'."""
    if n < 20:
        return sources.UNITS[n] if n < 10 else sources.TEENS[n - 10]
    tens, units = divmod(n, 10)
    word = sources.TENS[tens - 2]
    return f"{word}-{sources.UNITS[units]}" if units else word


def _number_pairs(n_pairs: int = 400) -> list[tuple[int, int]]:
    """Ordered pairs (x, y) from 51..99, each unordered pair once, half of them with x > y."""
    rng = random.Random(7)
    pairs = [(a, b) for a in range(51, 100) for b in range(a + 1, 100)]
    chosen = rng.sample(pairs, n_pairs)
    return [(b, a) if i % 2 else (a, b) for i, (a, b) in enumerate(chosen)]


def comparisons(word: str = "larger", negated: bool = False) -> list[Row]:
    """ "X is larger than y." (or smaller); the label says whether the statement is true."""
    rows = []
    for x, y in _number_pairs():
        holds = x > y if word == "larger" else x < y
        verb = f"is not {word} than" if negated else f"is {word} than"
        text = f"{number_word(x).capitalize()} {verb} {number_word(y)}."
        rows.append(_row(text, int(holds) ^ negated, f"{min(x, y)}-{max(x, y)}", number_word(y)))
    return rows


def numbers() -> list[Row]:
    """Numbers 2..99 in words inside short sentences; the label is the number (for ridge probes).
    Groups are the numbers, so folds hold out whole numbers."""
    return [_row(t.format(number_word(n)), n, str(n), number_word(n))
            for n in range(2, 100) for t in sources.NUMBER_TEMPLATES]


def sentiment(negated: bool = False, per_class: int = 200) -> list[Row]:
    """Short reviews; label 1 = positive. Groups are the sentiment words, so folds hold out words."""
    rng = random.Random(8)
    rows = []
    for label, words in ((1, sources.POSITIVE_WORDS), (0, sources.NEGATIVE_WORDS)):
        combos = [(t, n, a) for t in sources.SENTIMENT_TEMPLATES for n in sources.SENTIMENT_NOUNS for a in words]
        for template, noun, adj in rng.sample(combos, per_class):
            text = template.format(noun=noun, adj=adj, **{"not": "not " if negated else ""})
            rows.append(_row(text, label ^ negated, adj, adj))
    return rows


BUILDERS: dict[str, Callable[[], list[Row]]] = {
    "cities": cities,
    "neg_cities": lambda: cities(negated=True),
    "larger_than": comparisons,
    "neg_larger_than": lambda: comparisons(negated=True),
    "smaller_than": lambda: comparisons("smaller"),
    "numbers": numbers,
    "sentiment": sentiment,
    "neg_sentiment": lambda: sentiment(negated=True),
}


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label", "group", "mark"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def cooccurrence_corpus(path: str | Path, documents: int = 4000, per_document: int = 4, seed: int = 0) -> Path:
    """A JSONL training corpus in which truth co-occurs (the setting of "Emergence of Linear Truth
    Encodings"): each document holds `per_document` city statements, all true (the city's country) or
    all false (a random other country each time), so a model lowers its loss on the later statements by
    telling whether the earlier ones were true. For `python -m interp.outliers.checkpoints --corpus`."""
    import json

    rng = random.Random(seed)
    countries = list(sources.CITIES)
    places = [(city, country) for country, cities in sources.CITIES.items() for city in cities]
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(documents):
            true = rng.random() < 0.5
            lines = []
            for city, country in rng.sample(places, per_document):
                stated = country if true else rng.choice([c for c in countries if c != country])
                lines.append(f"The city of {city} is in {stated}.")
            f.write(json.dumps({"text": " ".join(lines)}) + "\n")
    return path


def main() -> None:
    DATA_DIR.mkdir(exist_ok=True)
    for name, build in BUILDERS.items():
        rows = build()
        write_csv(rows, DATA_DIR / f"{name}.csv")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()

"""The built-in corpus's sources split by input domain, for analyses that compare domains (which
attention heads are active on one kind of text and dormant on another).

The built-in corpus (`interp.corpus`) mixes Python's documentation and source without labels, and
its cached file stays as it is (cache keys hash it). The domain samples are built here instead, in
memory and deterministically, from the same sources plus two made-up kinds of text:

- prose: the pydoc topic pages (English about Python);
- code: standard-library source files;
- lists: per standard-library module, a bulleted list of its public functions, each with the first
  line of its docstring;
- numbers: seeded tables of integers and decimals, one comma-separated row per line (CSV-like).

`labelled_corpora(path)` reads a JSONL file whose records carry `text` and `domain` instead.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from interp.corpus import Corpus, passages
from interp.errors import InterpError, file_error

DOMAINS = ("prose", "code", "lists", "numbers")
SAMPLE_FILES = 80  # standard-library files whose passages are shuffled into the code sample
NUMBER_DOCS, NUMBER_ROWS = 200, 24


def _stdlib_files() -> list[Path]:
    """Standard-library modules outside the tests, in a fixed shuffled order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "lib2to3"}
    files = [p for p in sorted(stdlib.rglob("*.py")) if skip.isdisjoint(p.relative_to(stdlib).parts)]
    random.Random(0).shuffle(files)
    return files


def _prose() -> Iterator[str]:
    import pydoc_data.topics

    docs = [p for _, text in sorted(pydoc_data.topics.topics.items()) for p in passages(text)]
    random.Random(0).shuffle(docs)
    yield from docs


def _code() -> Iterator[str]:
    docs = [p for path in _stdlib_files()[:SAMPLE_FILES] for p in passages(path.read_text(encoding="utf-8", errors="replace"))]
    random.Random(0).shuffle(docs)
    yield from docs


def _function_list(path: Path) -> str:
    """'Functions in <module>:' and one '- name: first docstring line' bullet per public function."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    items = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = (ast.get_docstring(node) or "").strip().splitlines()
            if doc:
                items.append(f"- {node.name}: {doc[0]}")
    return f"Functions in {path.stem}:\n" + "\n".join(items) + "\n" if len(items) >= 3 else ""


def _lists() -> Iterator[str]:
    yield from (doc for doc in map(_function_list, _stdlib_files()) if doc)


def _numbers() -> Iterator[str]:
    rng = random.Random(0)
    for _ in range(NUMBER_DOCS):
        rows = []
        for _ in range(NUMBER_ROWS):
            rows.append(", ".join(str(rng.randint(0, 99_999)) if rng.random() < 0.5 else f"{rng.uniform(-1e3, 1e3):.2f}"
                                  for _ in range(6)))
        yield "\n".join(rows) + "\n"


_BUILDERS = {"prose": _prose, "code": _code, "lists": _lists, "numbers": _numbers}


def domain_corpora(domains=DOMAINS) -> dict[str, Corpus]:
    """{domain: Corpus} of the built-in domain samples (see the module docstring)."""
    unknown = [d for d in domains if d not in _BUILDERS]
    if unknown:
        raise InterpError(f"unknown domain {unknown[0]!r}; the built-in domains are {', '.join(DOMAINS)}")
    return {d: Corpus(f"builtin-{d}", _BUILDERS[d]) for d in domains}


def labelled_corpora(path: str | Path) -> dict[str, Corpus]:
    """{domain: Corpus} from a JSONL file whose records hold `text` and `domain` (read now, so a bad
    file fails before any model work)."""
    path = Path(path).expanduser()
    if path.suffix != ".jsonl" or not path.is_file():
        raise InterpError(f"{path} is not a .jsonl file; domains need JSONL records with 'text' and 'domain'")
    groups: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise InterpError(f"{path}:{n} is not valid JSON; fix that line") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str) \
                        or not isinstance(record.get("domain"), str):
                    raise InterpError(f"{path}:{n} lacks a 'text' or 'domain' string; give every record both")
                groups.setdefault(record["domain"], []).append(record["text"])
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, e) from None
    if len(groups) < 2:
        raise InterpError(f"{path} holds {len(groups)} domain(s); comparing domains needs at least two")
    return {d: Corpus(f"{path.stem}-{d}", lambda docs=docs: iter(docs), path) for d, docs in groups.items()}

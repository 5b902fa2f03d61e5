"""Text corpora that need no download, and packing them into token batches.

The built-in corpus is text that ships with Python itself: the pydoc topic pages, the docstrings of
the standard library (about 560k tokens of prose) and the standard library's source files (several
million tokens of code), cut into passages of at most a few thousand characters and shuffled
together, so that any stretch of it (a training run's last 200k tokens, an evaluation read from the
end) mixes prose and code instead of running through one long source file. `--corpus`
takes a text file, a folder of them, JSONL, Parquet, or a local Hugging Face dataset folder.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import random
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from interp.cache import cache_dir
from interp.errors import InterpError, file_error

BUILTIN = "python-docs"
BUILTIN_VERSION = 2  # 2: passages instead of whole files; part of cache keys, so old statistics are not reused
PASSAGE_CHARS = 4000
TEXT_SUFFIXES = {".txt", ".md", ".rst"}


@dataclasses.dataclass
class Corpus:
    """An iterable of documents (strings); `name` labels it, `source` (the file or folder it reads,
    None for one made in code) is what `interp.fingerprint.corpus_fingerprint` hashes for cache keys."""

    name: str
    documents: Callable[[], Iterator[str]]
    source: Path | None = None

    def __iter__(self) -> Iterator[str]:
        return (doc for doc in self.documents() if doc.strip())


def _module_docstrings(path: Path) -> str:
    """All docstrings of one source file, joined; '' when the file does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    docs = [ast.get_docstring(n) for n in nodes]
    return "\n\n".join(d for d in docs if d and len(d) > 40)


def passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """`text` cut at line ends into pieces of at most `max_chars` (a longer single line stays whole)."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return pieces


def _build_python_docs(target: Path) -> None:
    import pydoc_data.topics

    docs = [text for _, text in sorted(pydoc_data.topics.topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "lib2to3"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.isdisjoint(path.relative_to(stdlib).parts):
            docs.append(_module_docstrings(path))
            docs.append(path.read_text(encoding="utf-8", errors="replace"))
    docs = [p for d in docs for p in passages(d) if p.strip()]
    random.Random(0).shuffle(docs)  # mix topics, docstrings and code so any stretch is varied
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    tmp.rename(target)


def builtin_corpus() -> Corpus:
    """Python's own documentation text, built once and cached as JSONL."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"{BUILTIN}-v{BUILTIN_VERSION}"
    path = cache_dir("corpus") / f"{name}-{version}.jsonl"
    if not path.is_file():
        _build_python_docs(path)
    return Corpus(name, _jsonl(path).documents, path)


def _text_field(record: dict, source: Path) -> str:
    if isinstance(record.get("text"), str):
        return record["text"]
    for value in record.values():
        if isinstance(value, str):
            return value
    raise InterpError(f"{source}: a record has no text field; give each record a 'text' string")


def _jsonl(path: Path) -> Corpus:
    def docs() -> Iterator[str]:
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield _text_field(json.loads(line), path)
                        except json.JSONDecodeError:
                            raise InterpError(f"{path}:{n} is not valid JSON; fix that line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise file_error(path, e) from None
    return Corpus(path.name, docs)


def _parquet(path: Path) -> Corpus:
    """A Parquet file's `text` column; the file's footer is checked now, before any model work."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as e:
        raise InterpError(f"{path} is not a readable Parquet file ({' '.join(str(e).split())[:120]}); "
                          "check or rewrite the file") from None
    if "text" not in columns:
        raise InterpError(f"{path} has no 'text' column (columns: {columns}); rename the text column")

    def docs() -> Iterator[str]:
        yield from pd.read_parquet(path, columns=["text"])["text"].astype(str)
    return Corpus(path.name, docs)


def _hf_dataset(path: Path) -> Corpus:
    def docs() -> Iterator[str]:
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
        if "text" not in data.column_names:
            raise InterpError(f"{path} has no 'text' column (columns: {data.column_names}); rename the text column")
        yield from data["text"]
    return Corpus(path.name, docs)


def _file(path: Path) -> Corpus:
    if path.suffix == ".jsonl":
        return _jsonl(path)
    if path.suffix == ".parquet":
        return _parquet(path)
    return Corpus(path.name, lambda: iter([path.read_text(encoding="utf-8", errors="replace")]))


def _folder(path: Path) -> Corpus:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _hf_dataset(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES | {".jsonl", ".parquet"})
    if not files:
        raise InterpError(f"{path} holds no .txt, .md, .jsonl or .parquet files; point --corpus at text")

    def docs() -> Iterator[str]:
        for file in files:
            yield from _file(file).documents()
    return Corpus(path.name, docs)


def load_corpus(spec: str | Path | None = None) -> Corpus:
    """The corpus named by `spec`: None or 'python-docs' for the built-in one, else a path."""
    if spec is None or str(spec) in (BUILTIN, "builtin"):
        return builtin_corpus()
    path = Path(spec).expanduser()
    if path.is_dir():
        return dataclasses.replace(_folder(path), source=path)
    if path.is_file():
        return dataclasses.replace(_file(path), source=path)
    raise InterpError(f"corpus {spec!r} not found; pass a text/JSONL/Parquet file, a folder, or 'python-docs'")


def token_batches(
    model, corpus: Corpus, batch_size: int = 16, seq_len: int = 128, max_tokens: int | None = None,
) -> Iterator[torch.Tensor]:
    """Pack the corpus into [batch, seq_len] token batches, documents separated by EOS.

    Stops after `max_tokens` tokens (whole rows); the last batch may have fewer rows. Raises when the
    corpus yields no full row at all.
    """
    if batch_size < 1 or seq_len < 2:
        raise InterpError("batch size must be >= 1 and sequence length >= 2")
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    budget_rows = None if max_tokens is None else max(1, max_tokens // seq_len)
    buffer: list[int] = []
    rows: list[list[int]] = []
    emitted = 0
    for doc in corpus:
        buffer.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= seq_len:
            rows.append(buffer[:seq_len])
            buffer = buffer[seq_len:]
            emitted += 1
            if len(rows) == batch_size or emitted == budget_rows:
                yield torch.tensor(rows, dtype=torch.long)
                rows = []
            if emitted == budget_rows:
                return
    if rows:
        yield torch.tensor(rows, dtype=torch.long)
    elif emitted == 0:
        raise InterpError(f"corpus {corpus.name!r} has fewer than {seq_len} tokens; give it more text")

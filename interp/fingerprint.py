"""Content fingerprints for cache keys: "these weights", "this corpus", "these settings".

A cache keyed on a name (a model spec, a corpus file's basename) hands out another model's or
another corpus's numbers once the content behind the name changes (a weight edit, a different file
of the same name) and recomputes needlessly when the same content arrives under another name.
Keys built here change exactly when the content does. Digests are 128-bit xxh3 (about 16 ms for
the default model's 540 MB of float32 weights, so nothing is memoised: a memo keyed on a tensor's
version counter would miss writes through `.data`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import xxhash

CHUNK = 1 << 22  # bytes read at a time when hashing files


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor` as it is now (a contiguous CPU copy only when needed)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def weights_fingerprint(model: torch.nn.Module, include: Callable[[str], bool] | None = None) -> str:
    """Hex digest of the model's parameters (names, dtypes, shapes, values) as they are now.

    `include` keeps only the parameters whose names it accepts, for caches that depend on part of
    the model (statistics of one layer do not depend on the layers after it). Buffers are left out:
    TransformerLens derives them from the configuration (masks, rotary tables).
    """
    digest = xxhash.xxh3_128()
    for name, param in model.named_parameters():
        if include is None or include(name):
            digest.update(f"{name}|{param.dtype}|{tuple(param.shape)}\n".encode())
            digest.update(_tensor_bytes(param))
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """Hex digest of a file's bytes (and its suffix, which decides how it is read), or of every file
    under a folder with its relative path. Names outside the folder do not count: two copies of the
    same content under different names share the digest."""
    path = Path(path)
    if path.is_file():
        files = [(path.suffix, path)]
    else:
        files = [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*")) if p.is_file()]
    digest = xxhash.xxh3_128()
    for name, file in files:
        digest.update(f"{name}|{file.stat().st_size}\n".encode())
        with open(file, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def corpus_fingerprint(corpus) -> str:
    """Hex digest of a corpus's content: `file_fingerprint` of the file or folder it reads.

    `corpus` is a `Corpus` (from `interp.corpus.load_corpus`), or a spec `load_corpus` accepts (None
    or "python-docs" for the built-in one, a file, a folder). A `Corpus` made in code without a
    source on disk is hashed by its documents' text.
    """
    from interp.corpus import Corpus, load_corpus

    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    if corpus.source is not None:
        return file_fingerprint(corpus.source)
    digest = xxhash.xxh3_128()
    for doc in corpus:
        digest.update(f"{len(doc)}\n{doc}".encode())
    return digest.hexdigest()


def settings_fingerprint(**settings) -> str:
    """Hex digest of keyword settings as canonical JSON (sorted keys; paths and other objects as str)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return xxhash.xxh3_128(text.encode()).hexdigest()


def cache_name(label: str, suffix: str, **parts) -> str:
    """A cache file name: a short `label`, then the digest of everything the content depends on.

    `parts` are fingerprints and settings, e.g.
    `cache_name("L4", ".safetensors", weights=weights_fingerprint(m), corpus=corpus_fingerprint(c), tokens=n)`.
    The label is part of the name, so it must not carry a model or file name: the same content
    reached under another name has to find the same file.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:60]
    return f"{safe}-{settings_fingerprint(**parts)}{suffix}"

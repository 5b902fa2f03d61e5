"""Edit, score before and after, optionally save: the workflows behind `interp edit` and the benchmark."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError

from circuits.editing.evaluate import score_cases
from circuits.editing.handle import EditHandle
from circuits.editing.layers import resolve_layers
from circuits.editing.memit import MEMITSettings, memit
from circuits.editing.pmet import PMETSettings, pmet
from circuits.editing.requests import EditRequest, as_request, check_requests
from circuits.editing.result import EditResult
from circuits.editing.rome import ROMESettings, rome
from circuits.editing.save import check_savable, save_model

METHODS: dict[str, Callable[..., EditHandle]] = {"rome": rome, "memit": memit, "pmet": pmet}
SETTINGS = {"rome": ROMESettings, "memit": MEMITSettings, "pmet": PMETSettings}


def method_fn(method: str) -> Callable[..., EditHandle]:
    if method not in METHODS:
        raise InterpError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method]


def settings_for(method: str, corpus: str | None = None, stats_tokens: int | None = None):
    """The reference settings of `method`, with another statistics corpus or token count."""
    method_fn(method)
    changes = {"corpus": corpus} if corpus else {}
    if stats_tokens:
        if stats_tokens < 10_000:
            raise InterpError(f"--stats-tokens {stats_tokens} is too few for a stable covariance; use >= 10000")
        changes["stats_tokens"] = stats_tokens
    return dataclasses.replace(SETTINGS[method](), **changes)


@torch.no_grad()
def with_true_target(model, request: EditRequest) -> EditRequest:
    """`request` with target_true set to the model's own greedy next token when it has none."""
    if request.target_true is not None:
        return request
    from interp.tokens import encode

    top = int(model(encode(model, request.text))[0, -1].argmax())
    true = model.tokenizer.decode([top])
    if true.strip() == request.target_new.strip():
        raise InterpError(f"the model already answers {request.target_new!r} to {request.text!r}; "
                          "pick a different target")
    return dataclasses.replace(request, target_true=true if true.startswith(" ") else " " + true.lstrip())


def edit_and_evaluate(
    model, requests: list | EditRequest | dict, method: str = "rome", layers=None,
    eval_records: list | None = None, generations: int = 1, gen_tokens: int = 50,
    save: str | Path | None = None, settings=None, progress: bool = True,
) -> tuple[EditResult, EditHandle]:
    """Apply one edit of all `requests` and score `eval_records` (default: the requests) before and
    after; return the result and the handle that undoes the edit. Bad input raises before any change."""
    fn = method_fn(method)
    reqs = [with_true_target(model, as_request(r)) for r in (requests if isinstance(requests, list) else [requests])]
    cases = [with_true_target(model, as_request(r)) for r in eval_records] if eval_records else reqs
    layers = resolve_layers(model, layers, method)
    check_requests(model, reqs)
    if save:
        check_savable(model, save)
    start = time.perf_counter()
    pre = score_cases(model, cases, "pre", generations, gen_tokens, progress)
    edit_start = time.perf_counter()
    kwargs = {"settings": settings} if settings is not None else {}
    handle = fn(model, reqs, layers if method != "rome" else layers[0], progress=progress, **kwargs)
    edit_seconds = time.perf_counter() - edit_start
    try:
        post = score_cases(model, cases, "post", generations, gen_tokens, progress)
        saved = str(save_model(model, save)) if save else None
    except BaseException:
        handle.undo()
        raise
    result = EditResult(
        model=str(model.cfg.spec), method=method, layers=layers, requests=[r.to_record() for r in reqs],
        cases=_concat(pre, post), edit_seconds=edit_seconds, seconds=time.perf_counter() - start,
        saved_model=saved,
    )
    return result, handle


def evaluate_each(
    model, records: list, method: str = "rome", layers=None, generations: int = 1, gen_tokens: int = 50,
    settings=None, progress: bool = True,
) -> EditResult:
    """The CounterFact protocol for single edits: for each record, edit it alone, score it, undo."""
    fn = method_fn(method)
    cases = [with_true_target(model, as_request(r)) for r in records]
    layers = resolve_layers(model, layers, method)
    check_requests(model, cases)
    start = time.perf_counter()
    pre = score_cases(model, cases, "pre", generations, gen_tokens, progress)
    posts, edit_seconds = [], 0.0
    kwargs = {"settings": settings} if settings is not None else {}
    for case in tqdm(cases, desc=f"{method} per case", disable=not progress, file=sys.stderr):
        t = time.perf_counter()
        with fn(model, [case], layers if method != "rome" else layers[0], progress=False, **kwargs):
            seconds = time.perf_counter() - t
            edit_seconds += seconds
            post = score_cases(model, [case], "post", generations, gen_tokens, progress=False)
            posts.append(post.assign(edit_seconds=seconds))
    return EditResult(
        model=str(model.cfg.spec), method=method, layers=layers, requests=[c.to_record() for c in cases],
        cases=_concat(pre, *posts), edit_seconds=edit_seconds, seconds=time.perf_counter() - start,
    )


def _concat(*frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)

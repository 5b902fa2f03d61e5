"""Result pages: a registry from Result kind to page builder, with a generic view for every other kind.

A module that defines a new Result kind can give it a richer page with

    from dashboards.views import entry_key, figure_section, register_view, table_section

    @register_view("trace")
    def trace_view(result, entry, ctx):
        key = entry_key(entry)
        return [figure_section(result, key), table_section(result.to_frame, key, "Scores")]

Kinds without a view get `generic_view` (summary text, `figure()`, `to_frame()` table), and folders
whose kind no imported module registers get `raw_view` (the stored JSON, tables and tensors).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from dash import dcc, html

from dashboards.components import frame_table, graph, message
from dashboards.context import Context, check_name
from dashboards.figures import tensor_figure
from interp.errors import InterpError
from interp.results import RESULT_KINDS, Result
from interp.workspace import Entry, Workspace

ViewFn = Callable[[Result, Entry, Context], list[Any]]
VIEWS: dict[str, ViewFn] = {}
ANALYSIS_PACKAGES = ("interp", "circuits", "probes")
_searched: set[str] = set()


def register_view(kind: str) -> Callable[[ViewFn], ViewFn]:
    """Decorator: `fn(result, entry, ctx) -> list of components` becomes the page of results of `kind`."""

    def add(fn: ViewFn) -> ViewFn:
        VIEWS[kind] = fn
        return fn

    return add


# -- building blocks for views -------------------------------------------------------------------
def entry_key(entry: Entry) -> str:
    """A page-unique id for the figures and tables of one saved result."""
    return f"{entry.kind}-{entry.name}"


def figure_section(result: Result, key: str) -> Any:
    """`result.figure()` with its download button (or a message when it fails)."""
    return attempt(lambda: graph(result.figure(), key), "figure")


def table_section(frame: Callable[[], pd.DataFrame], key: str, title: str = "Table") -> Any:
    """A titled, paged table of `frame()` (or a message when it fails)."""
    return attempt(lambda: html.Div([html.H3(title), frame_table(frame(), key)], className="section"), title.lower())


def summary_section(result: Result) -> list[Any]:
    return [html.H3("Summary"), attempt(lambda: html.Pre(result.summary(), className="summary"), "summary")]


def attempt(build: Callable[[], Any], what: str) -> Any:
    """Run one section builder; a failure becomes a message instead of breaking the page."""
    try:
        return build()
    except NotImplementedError:
        return message(f"This result has no {what}.")
    except Exception as e:  # a broken section must not hide the rest of the page
        print(f"dashboard: {what} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return message(f"Could not build the {what}: {type(e).__name__}: {e}", "error")


def attention_link(result: Result) -> html.Div | None:
    """A link that opens the result's prompt in the attention browser, when it has one."""
    prompt = getattr(result, "prompt", None)
    if not isinstance(prompt, str) or not prompt:
        return None
    return html.Div(dcc.Link("Open this prompt in the attention browser",
                             href="/attention?" + urllib.parse.urlencode({"prompt": prompt})))


def generic_view(result: Result, entry: Entry, ctx: Context) -> list[Any]:
    """`figure()`, `to_frame()` and `summary()`: works for any registered Result kind."""
    key = entry_key(entry)
    return [attention_link(result), figure_section(result, key), table_section(result.to_frame, key),
            *summary_section(result)]


@register_view("lens")
def lens_view(result, entry: Entry, ctx: Context) -> list[Any]:
    """Logit lens: the figure, the per-layer table and the direct logit attribution table."""
    key = entry_key(entry)
    return [attention_link(result), figure_section(result, key), table_section(result.to_frame, key),
            table_section(result.dla_frame, key + "-dla", "Direct logit attribution")]


# -- loading -------------------------------------------------------------------------------------
def import_kind(kind: str) -> None:
    """Import the analysis modules that define Result `kind`, so that it (and its view) is registered.

    Modules are found by their source text (`kind = "..."`), so only those modules are imported.
    """
    if kind in _searched:
        return
    _searched.add(kind)
    declares = re.compile(rf"""\bkind\s*(?::[^=\n]+)?=\s*["']{re.escape(kind)}["']""")
    for package_name in ANALYSIS_PACKAGES:
        spec = importlib.util.find_spec(package_name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            root = Path(location)
            for path in sorted(root.rglob("*.py")) if root.is_dir() else []:
                module = ".".join((package_name, *path.relative_to(root).with_suffix("").parts))
                if module.startswith("interp.cli") or not declares.search(path.read_text(errors="replace")):
                    continue
                try:
                    importlib.import_module(module.removesuffix(".__init__"))
                except Exception as e:  # a broken module must not break the page
                    print(f"dashboard: could not import {module}: {type(e).__name__}: {e}", file=sys.stderr)


def stored_meta(entry: Entry) -> dict[str, Any]:
    """The entry's result.json (kind, JSON fields under "json", table and tensor names); a damaged file
    becomes an InterpError that names it."""
    path = entry.path / "result.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("json"), dict):
            raise ValueError("not a result's description")
        return meta
    except (OSError, ValueError) as e:
        raise InterpError(f"{entry.kind}/{entry.name}/{path.name} is damaged ({type(e).__name__}: {e}); "
                          "re-run the analysis that wrote it") from e


def saved_prompt(entry: Entry) -> str:
    """The prompt stored in the entry's result.json (InterpError naming the file when there is none)."""
    prompt = stored_meta(entry)["json"].get("prompt")
    if not isinstance(prompt, str):
        raise InterpError(f"{entry.kind}/{entry.name}/result.json holds no prompt; pick another result")
    return prompt


def find_entry(ctx: Context, kind: str, name: str) -> Entry:
    """The saved result `kind/name`, only among the workspace's complete entries."""
    check_name(kind, "result kind")
    check_name(name, "result name")
    for entry in Workspace(ctx.root).entries(kind):
        if entry.name == name:
            return entry
    raise InterpError(f"there is no saved result {kind}/{name} in this workspace; pick one from the home page")


def load_result(ctx: Context, entry: Entry) -> Result | None:
    """The Result in `entry` (cached per file version), or None when its kind is not registered."""
    if entry.kind not in RESULT_KINDS:
        import_kind(entry.kind)
    if entry.kind not in RESULT_KINDS:
        return None
    stamp = (entry.path / "result.json").stat().st_mtime_ns
    return ctx.cache.get(("result", str(entry.path), stamp), lambda: Result.read(entry.path))


def raw_view(ctx: Context, entry: Entry) -> list[Any]:
    """What is stored, for results no class can load: JSON fields, tables, 1-D/2-D tensors; a damaged
    file becomes a message that names it."""
    try:
        meta = stored_meta(entry)
    except InterpError as e:
        return [message(str(e), "error")]
    parts: list[Any] = [html.Pre(json.dumps(meta["json"], indent=1, default=str)[:20000], className="summary")]
    for name in meta.get("frames", []):
        path = ctx.inside(entry.kind, entry.name, f"{check_name(str(name), 'table')}.parquet")
        parts.append(table_section(lambda: pd.read_parquet(path), f"{entry_key(entry)}-{name}", path.name))
    if (entry.path / "tensors.safetensors").is_file():
        parts.append(attempt(lambda: tensor_sections(entry), "tensors in tensors.safetensors"))
    return parts


def tensor_sections(entry: Entry) -> html.Div:
    """A figure (1-D, 2-D) or the shape of every tensor in the entry's tensors.safetensors."""
    from safetensors.numpy import load_file

    parts = []
    for name, values in load_file(str(entry.path / "tensors.safetensors")).items():
        fig = tensor_figure(name, values)
        parts.append(graph(fig, f"{entry_key(entry)}-{name}") if fig is not None
                     else html.P(f"{name}: tensor of shape {list(values.shape)}"))
    return html.Div(parts)


def result_page(ctx: Context, kind: str, name: str) -> list[Any]:
    """The page of one saved result: header, then its kind's view (or the generic/raw one)."""
    entry = find_entry(ctx, kind, name)
    header = [html.H2(f"{kind}: {name}"), html.P(str(Path(kind) / name), className="muted")]
    if entry.note:
        header.append(message(f"{kind}/{name}: {entry.note}; shown with the folder's time."))
    try:
        result = load_result(ctx, entry)
    except Exception as e:  # saved by another version of its class, or damaged: show what is stored
        print(f"dashboard: cannot load {kind}/{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return header + [message(f"Could not load this result as its class ({type(e).__name__}: {e}); it may "
                                 "come from another version of the code. Showing the stored data.", "error"),
                         *raw_view(ctx, entry)]
    if result is None:
        return header + [message(f"No module registers results of kind {kind!r}; showing the stored data."),
                         *raw_view(ctx, entry)]
    meta = [html.P(f"{field}: {value}", className="muted") for field in ("model", "prompt")
            if isinstance(value := getattr(result, field, None), str)]
    return header + meta + [p for p in VIEWS.get(kind, generic_view)(result, entry, ctx) if p is not None]

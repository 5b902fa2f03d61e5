"""What a hostile prompt, workspace or web page must not get from the dashboard and the figures.

- Markup in user text (prompts, tokens, names, anything read from a saved result) stays text in every
  plotly figure: plotly would turn `<a href>` into a live link and `<b>` into bold.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dashboards.app import render
from dashboards.context import Context
from dashboards.sample import write_sample_workspace
from dashboards.views import import_kind
from interp.lens import logit_lens
from interp.results import Result

MARKUP = '<a href="http://x">y</a> <b>z</b>'
LIVE = re.compile(r"<a\s|<b>", re.IGNORECASE)  # what plotly would render as a link or bold


def figure_strings(value) -> list[str]:
    """Every string in a figure's JSON (titles, labels, hover text, annotations, templates)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in figure_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in figure_strings(v)]
    return []


def live_markup(fig) -> list[str]:
    """The strings of `fig` (a plotly Figure or its dict) that plotly would render as markup."""
    data = fig.to_plotly_json() if hasattr(fig, "to_plotly_json") else fig
    return [s for s in figure_strings(json.loads(json.dumps(data, default=str))) if LIVE.search(s)]


def tainted(value, keys: bool = False):
    """`value` with MARKUP put in front of every string in it (also dict keys with `keys`); tensors unchanged."""
    if isinstance(value, str):
        return MARKUP + value
    if isinstance(value, (list, tuple)):
        return type(value)(tainted(v, keys) for v in value)
    if isinstance(value, dict):
        return {(tainted(k) if keys else k): tainted(v, keys) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return value.apply(lambda column: column.map(lambda v: tainted(v, keys)) if column.dtype == object else column)
    return value


@pytest.fixture(scope="module")
def sample(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """One saved result of every kind (tiny-llama, a few seconds)."""
    return write_sample_workspace(tmp_path_factory.mktemp("sample"), tiny_llama)


def test_escaping_is_needed_and_keeps_the_text():
    """The check can fail (raw markup is live), and escaped text still shows every character."""
    from interp.plotting import escape_label, token_labels

    assert live_markup({"layout": {"title": {"text": MARKUP}}})
    assert not live_markup({"layout": {"title": {"text": escape_label(MARKUP)}}})
    assert escape_label(MARKUP) == '&lt;a href="http://x"&gt;y&lt;/a&gt; &lt;b&gt;z&lt;/b&gt;'
    assert escape_label("a & b\nc") == "a &amp; b\\nc"
    assert token_labels(["<b>", "x"], start=1) == ["1:x"] and token_labels(["<b>"]) == ["0:&lt;b&gt;"]


def test_every_figure_escapes_every_string_of_its_result(sample):
    """Whatever string a saved result holds (it may come from anyone's workspace), no figure renders it as markup."""
    assert len(sample) >= 20
    for kind, folder in sample.items():
        import_kind(kind)
        result = Result.read(folder)
        fig = dataclasses.replace(result, **{f.name: tainted(getattr(result, f.name))
                                             for f in dataclasses.fields(result)}).figure()
        assert not live_markup(fig), (kind, live_markup(fig)[:3])
        try:  # dict keys (kinds, sites, sources) too: a figure may refuse unknown keys, never render them
            fig = dataclasses.replace(result, **{f.name: tainted(getattr(result, f.name), keys=True)
                                                 for f in dataclasses.fields(result)}).figure()
        except (KeyError, ValueError):
            continue
        assert not live_markup(fig), (kind, live_markup(fig)[:3])


def test_lens_trace_and_outlier_figures_of_a_hostile_prompt(tiny_llama, tmp_path):
    """Real runs on a prompt with markup: the lens, trace and outliers figures, and the lens page, show it as text."""
    from circuits.tracing import trace
    from interp.outliers import analyze_outliers

    prompt = f"{MARKUP} The Eiffel Tower is in Paris"
    lens = logit_lens(tiny_llama, prompt)
    traced = trace(tiny_llama, prompt, "Eiffel", samples=2, noise_std=1.0, window=2, progress=False)
    outliers = analyze_outliers(tiny_llama, [prompt, "A second, plain text."], ppl_tokens=64, seq_len=32)
    for result in [lens, traced, *outliers.results()]:
        assert not live_markup(result.figure()), (result.kind, live_markup(result.figure())[:3])
    assert "&lt;b&gt;z&lt;/b&gt;" in lens.figure().layout.title.text
    lens.save(tmp_path, "hostile")
    page = render(Context(tmp_path), "/result/lens/hostile", "")
    graphs = [c for c in _components(page) if type(c).__name__ == "Graph"]
    assert graphs and all(not live_markup(g.figure) for g in graphs)


def test_html_files_hold_no_live_markup_from_the_prompt(tmp_path):
    """`interp lens ... --html FILE`: the figure JSON inside the page carries the prompt escaped."""
    from interp.cli import main

    out = tmp_path / "lens.html"
    assert main(["lens", f"{MARKUP} The capital of France is", "--model", "tiny-llama", "--html", str(out)]) == 0
    page = out.read_text()
    script = page[page.rindex("Plotly.newPlot("):]
    script = script[:script.index("</script>")]  # plotly writes < and / in its JSON as \u003c, \u002f
    strings = [json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', script)]
    assert any('&lt;a href="http://x"&gt;' in s for s in strings)
    assert not [s for s in strings if LIVE.search(s)]


def _components(tree) -> list:
    """Every Dash component in a tree of components and lists."""
    if isinstance(tree, (list, tuple)):
        return [c for child in tree for c in _components(child)]
    if not hasattr(tree, "to_plotly_json"):
        return []
    return [tree, *_components(getattr(tree, "children", None))]

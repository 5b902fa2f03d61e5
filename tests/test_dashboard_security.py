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


# -- Host check (DNS rebinding) -------------------------------------------------------------------
GOOD_HOSTS = ["localhost", "localhost:8050", "LOCALHOST.", "127.0.0.1", "127.0.0.1:1234", "[::1]", "[::1]:8050",
              "mybox.lan", "mybox.lan:9000", "10.0.0.5:80"]
BAD_HOSTS = ["evil.example", "evil.example:8050", "localhost.evil.example", "127.0.0.1.evil.example", "127.0.0.2",
             "[::2]:8050", "[::1", "::1]", "", "mybox.lan.evil.example"]


def rule_urls(app) -> list[tuple[str, str]]:
    """(method, url) for every route of the app's server, variables filled with real files where they name one."""
    page = app.server.test_client().get("/").get_data(as_text=True)
    suite = re.search(r'src="/(_dash-component-suites/[^"]+)"', page).group(1)
    package, _, rest = suite.removeprefix("_dash-component-suites/").partition("/")
    fill = {"filename": "style.css", "package_name": package, "fingerprinted_path": rest, "path": "some/page"}
    urls = []
    for rule in app.server.url_map.iter_rules():
        url = rule.rule
        for name in rule.arguments:
            url = re.sub(rf"<(?:\w+:)?{name}>", fill[name], url)
        urls += [(method, url) for method in sorted(rule.methods - {"HEAD"})]
    return urls


def test_only_loopback_and_allowed_hosts_are_answered_on_every_route(tmp_path):
    from dashboards.app import create_app

    app = create_app(tmp_path, allowed_hosts=["mybox.lan", "10.0.0.5"])
    client = app.server.test_client()
    urls = rule_urls(app)
    assert {"/", "/_dash-layout", "/_dash-update-component", "/assets/style.css", "/_favicon.ico"} <= {u for _, u in urls}
    assert any(u.startswith("/_dash-component-suites/") for _, u in urls) and len(urls) >= 12
    for method, url in urls:
        for host in BAD_HOSTS:
            response = client.open(url, method=method, headers={"Host": host}, json={} if method == "POST" else None)
            assert response.status_code == 403, (method, url, host, response.status_code)
            assert response.mimetype == "text/plain" and response.get_data(as_text=True).count("\n") == 1
            assert "--allow-host" in response.get_data(as_text=True)
    for host in GOOD_HOSTS:
        for url in ("/", "/_dash-layout", "/_dash-dependencies", "/assets/style.css", "/_favicon.ico",
                    next(u for _, u in urls if u.startswith("/_dash-component-suites/"))):
            assert client.get(url, headers={"Host": host}).status_code == 200, (url, host)
    other = create_app(tmp_path).server.test_client()  # without the flag, the LAN name is refused too
    assert other.get("/", headers={"Host": "mybox.lan"}).status_code == 403
    assert other.get("/", headers={"Host": "localhost:8050"}).status_code == 200


def test_a_callback_from_an_allowed_host_runs(tmp_path):
    """The page's own requests (POST /_dash-update-component) still work from localhost."""
    from dashboards.app import create_app

    client = create_app(tmp_path).server.test_client()
    body = {"output": "page.children", "outputs": {"id": "page", "property": "children"},
            "inputs": [{"id": "url", "property": "pathname", "value": "/"},
                       {"id": "url", "property": "search", "value": ""}], "changedPropIds": ["url.pathname"]}
    assert client.post("/_dash-update-component", json=body, headers={"Host": "localhost:8050"}).status_code == 200
    assert client.post("/_dash-update-component", json=body, headers={"Host": "evil.example"}).status_code == 403


def test_the_server_answers_for_the_address_it_is_bound_to(tmp_path):
    """Bound to 127.0.1.1 (what Debian maps the host name to), that address works; other names still get 403."""
    import http.client

    from dashboards.app import Server, create_app

    with Server(create_app(tmp_path), host="127.0.1.1", port=0) as server:
        for host, status in ((f"127.0.1.1:{server.port}", 200), ("evil.example", 403), ("localhost", 200)):
            conn = http.client.HTTPConnection("127.0.1.1", server.port, timeout=10)
            conn.request("GET", "/", headers={"Host": host})
            assert conn.getresponse().status == status, host
            conn.close()


@pytest.mark.parametrize("name", ["", "two words", "a/b", "[::1"])
def test_bad_allow_host_names_are_refused(tmp_path, name):
    from dashboards.app import create_app
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="is not a host name"):
        create_app(tmp_path, allowed_hosts=[name])


def test_cli_allow_host_flag(tmp_path, monkeypatch, capsys):
    """`interp dashboard --allow-host NAME` (repeatable) reaches the app; a bad name exits 2 with one line."""
    import dashboards.app
    from interp.cli import main

    apps = []

    class FakeServer:
        url = "http://127.0.0.1:1/"

        def __init__(self, app, host, port):
            apps.append(app)

        def serve_forever(self):
            return None

    monkeypatch.setattr(dashboards.app, "Server", FakeServer)
    assert main(["dashboard", "--workspace", str(tmp_path), "--allow-host", "mybox.lan",
                 "--allow-host", "10.0.0.5:8050"]) == 130  # the fake server "stops" at once, as on Ctrl-C
    assert {"mybox.lan", "10.0.0.5", "localhost"} <= apps[0].allowed_hosts
    capsys.readouterr()
    assert main(["dashboard", "--workspace", str(tmp_path), "--allow-host", "a b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a host name" in err and len(err.splitlines()) == 1

"""What a hostile prompt, workspace or web page must not get from the dashboard and the figures.

- Markup in user text (prompts, tokens, names, anything read from a saved result) stays text in every
  plotly figure: plotly would turn `<a href>` into a live link and `<b>` into bold.
- A web page whose domain resolves to 127.0.0.1 (DNS rebinding) gets 403 on every route: the server
  answers only requests whose Host is loopback, its own address, or a name given with --allow-host.
- A link inside the workspace to a file outside it is never followed, and a damaged file costs only
  its own entry, with a note that names it, never the page.
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
        try:  # a string field may name a column or hold a number: a figure may refuse it, never render it
            fig = dataclasses.replace(result, **{f.name: tainted(getattr(result, f.name))
                                                 for f in dataclasses.fields(result)}).figure()
            assert not live_markup(fig), (kind, live_markup(fig)[:3])
        except (KeyError, ValueError):
            pass
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
    expected = {"/", "/_dash-layout", "/_dash-update-component", "/assets/style.css", "/_favicon.ico"}
    assert expected <= {u for _, u in urls}
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


def route_body(pathname: str) -> dict:
    """The request the page sends to build the page at `pathname` (the router callback)."""
    return {"output": "page.children", "outputs": {"id": "page", "property": "children"},
            "inputs": [{"id": "url", "property": "pathname", "value": pathname},
                       {"id": "url", "property": "search", "value": ""}], "changedPropIds": ["url.pathname"]}


def test_a_callback_from_an_allowed_host_runs(tmp_path):
    """The page's own requests (POST /_dash-update-component) still work from localhost."""
    from dashboards.app import create_app

    client = create_app(tmp_path).server.test_client()
    body = route_body("/")
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


# -- links out of the workspace, damaged files ----------------------------------------------------
def page_text(ctx: Context, url: str) -> str:
    """Every string of the page at `url` (path and query), as the route callback builds it."""
    path, _, query = url.partition("?")
    page = render(ctx, path, "?" + query)
    return json.dumps(page, default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))


def route_status(ctx_root: Path, pathname: str) -> int:
    """Status of the page callback for `pathname`, through the Flask server (as the browser asks for it)."""
    from dashboards.app import create_app

    client = create_app(ctx_root).server.test_client()
    return client.post("/_dash-update-component", json=route_body(pathname)).status_code


@pytest.fixture()
def linked(tmp_path, tiny_llama) -> Path:
    """A workspace whose links lead outside it: a result folder, a kind folder, a file in a result folder,
    a feature set and a file in one; plus a link that stays inside (allowed)."""
    from dashboards.attention import attention_patterns
    from dashboards.synthetic import write_synthetic_features

    ws, outside = tmp_path / "ws", tmp_path / "outside"
    logit_lens(tiny_llama, "secret outside prompt").save(outside, "secret")
    attention_patterns(tiny_llama, "secret outside prompt").save(outside, "secret")
    write_synthetic_features(outside, "secret", n_features=16, n_top=2, quantiles=1, per_quantile=1)
    logit_lens(tiny_llama, "inside prompt").save(ws, "real")
    (ws / "lens" / "alias").symlink_to(ws / "lens" / "real")
    (ws / "lens" / "linked").symlink_to(outside / "lens" / "secret")
    (ws / "linkedkind").symlink_to(outside / "lens")
    (ws / "attention").mkdir()
    (ws / "attention" / "linked").symlink_to(outside / "attention" / "secret")
    partial = ws / "lens" / "partial"
    partial.mkdir()
    for name in ("result.json", "saved.json"):
        (partial / name).write_bytes((outside / "lens" / "secret" / name).read_bytes())
    (partial / "tensors.safetensors").symlink_to(outside / "lens" / "secret" / "tensors.safetensors")
    write_synthetic_features(ws, "mixed", n_features=16, n_top=2, quantiles=1, per_quantile=1)
    table = ws / "sae_features" / "mixed" / "features.parquet"
    table.unlink()
    table.symlink_to(outside / "sae_features" / "secret" / "features.parquet")
    (ws / "sae_features" / "ext").symlink_to(outside / "sae_features" / "secret")
    return ws


def test_links_out_of_the_workspace_are_not_followed(linked):
    from dashboards.attention import saved_options, saved_source
    from dashboards.feature_store import feature_set_names
    from interp.errors import InterpError
    from interp.workspace import Workspace

    ws = Workspace(linked)
    assert sorted(e.name for e in ws.entries()) == ["alias", "real"]  # the inside link still works
    for name in ("linked", "partial"):
        with pytest.raises(InterpError, match="outside the workspace"):
            ws.load("lens", name)
    assert ws.load("lens", "alias").prompt == "inside prompt"
    ctx = Context(linked, "tiny-llama")
    assert feature_set_names(ctx) == []
    home = page_text(ctx, "/")
    assert "inside prompt" in home and "secret" not in home and "/result/lens/alias" in home
    for path in ("/result/lens/linked", "/result/lens/partial", "/result/linkedkind/secret", "/features/ext",
                 "/features/mixed", "/features/ext/0", "/attention?saved=linked"):
        page = page_text(ctx, path)
        assert "secret outside prompt" not in page and "synthetic" not in page.lower(), path
        assert route_status(linked, path.partition("?")[0]) == 200
    for path in ("/result/lens/linked", "/result/lens/partial", "/features/ext", "/features/mixed"):
        assert "message error" in page_text(ctx, path), path
    assert not [o for o in saved_options(ctx) if "secret" in o["label"]]
    with pytest.raises(InterpError):
        saved_source(ctx, "linked")


def test_a_table_name_in_result_json_cannot_leave_the_folder(tmp_path, tiny_llama):
    from interp.errors import InterpError

    folder = logit_lens(tiny_llama, "x").save(tmp_path / "ws", "x")
    pd.DataFrame({"secret": [1]}).to_parquet(tmp_path / "secret.parquet")
    meta = json.loads((folder / "result.json").read_text())
    meta["frames"] = ["../../../secret"]
    (folder / "result.json").write_text(json.dumps(meta))
    with pytest.raises(InterpError, match="not a field"):
        Result.read(folder)
    assert "secret" not in page_text(Context(tmp_path / "ws"), "/result/lens/x").replace("../../../secret", "")


@pytest.mark.parametrize("saved", ['{"created": "yesterday"}', '{"created": 1e300}', '{"created": true}', "[1, 2]",
                                   "not json", '{"name": "no time"}', '{"created": NaN}'])
def test_a_damaged_saved_json_costs_only_the_time_and_is_named(tmp_path, tiny_llama, saved):
    from interp.workspace import Workspace

    ws = tmp_path / "ws"
    logit_lens(tiny_llama, "good one").save(ws, "good")
    logit_lens(tiny_llama, "bad one").save(ws, "bad")
    (ws / "lens" / "bad" / "saved.json").write_text(saved)
    entries = {e.name: e for e in Workspace(ws).entries()}
    assert set(entries) == {"good", "bad"} and entries["good"].note is None
    assert "saved.json" in entries["bad"].note
    assert entries["bad"].created == pytest.approx((ws / "lens" / "bad").stat().st_mtime)
    ctx = Context(ws, "tiny-llama")
    home = page_text(ctx, "/")
    assert "Could not build" not in home and "good one" in home and "bad one" in home
    assert "lens/bad: saved.json" in home and "lens/good:" not in home
    page = page_text(ctx, "/result/lens/bad")
    assert "lens/bad: saved.json" in page and "Logit lens" in page  # the note, and the result itself
    assert "bad one" in page_text(ctx, "/attention")  # its prompt is offered in the attention browser
    assert route_status(ws, "/") == route_status(ws, "/result/lens/bad") == route_status(ws, "/attention") == 200


def test_a_damaged_result_or_tensors_file_is_named_on_its_page(tmp_path, tiny_llama):
    from dashboards.attention import attention_patterns, saved_source, source_layer
    from interp.errors import InterpError

    ws = tmp_path / "ws"
    logit_lens(tiny_llama, "good one").save(ws, "good")
    for name in ("json", "shape", "tensors"):
        logit_lens(tiny_llama, f"{name} one").save(ws, name)
    (ws / "lens" / "json" / "result.json").write_text("{not json")
    (ws / "lens" / "shape" / "result.json").write_text('{"created": "yesterday"}')
    (ws / "lens" / "tensors" / "tensors.safetensors").write_bytes(b"garbage")
    attention_patterns(tiny_llama, "The cat sat.").save(ws, "attn")
    attention_patterns(tiny_llama, "The cat sat.").save(ws, "attn-bad")
    (ws / "attention" / "attn-bad" / "tensors.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    ctx = Context(ws, "tiny-llama")
    home = page_text(ctx, "/")
    assert "Could not build" not in home and "good one" in home and "/result/lens/json" in home
    assert "lens/json/result.json is damaged" in page_text(ctx, "/result/lens/json")
    assert "lens/shape/result.json is damaged" in page_text(ctx, "/result/lens/shape")
    assert "tensors.safetensors" in page_text(ctx, "/result/lens/tensors")
    for path in ("/", "/result/lens/json", "/result/lens/shape", "/result/lens/tensors", "/result/attention/attn-bad"):
        assert route_status(ws, path) == 200, path
    with pytest.raises(InterpError, match="attention/attn-bad/tensors.safetensors is damaged"):
        saved_source(ctx, "attn-bad")
    good = saved_source(ctx, "attn")
    (ws / "attention" / "attn" / "tensors.safetensors").write_bytes(b"garbage")  # damaged after it was opened
    with pytest.raises(InterpError, match="attention/attn/tensors.safetensors is damaged"):
        source_layer(ctx, good, 0)

"""End-to-end: the dashboard in real headless Chromium (Playwright), offline, with hostile text.

Screenshots go to artifacts/screenshots/ (kept by CI). Skipped when /usr/bin/chromium or Playwright
is missing; CI installs Debian's `chromium` package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dashboards.app import Server, create_app
from dashboards.attention import attention_patterns
from dashboards.sample import MARKUP, write_sample_workspace
from dashboards.synthetic import HOSTILE_TOKEN, write_synthetic_features
from interp.lens import logit_lens

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
HOSTILE_PROMPT = 'Hi <script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> there'
TIMEOUT_MS = 60_000

PLOT = "document.querySelector('.figure .js-plotly-plot')"
# plotly keeps base64 arrays as given in .data; ._fullData holds them decoded
SUM_Z = """el => { const z = el._fullData[0].z; let s = 0, n = 0;
  for (const row of z) for (const v of row) { s += v * ((n % 7) + 1); n++; }
  return [z.length, s, el.data.length]; }"""


def rows_are(n: int) -> str:
    return f"{PLOT} && {PLOT}._fullData && {PLOT}._fullData.length == 1 && {PLOT}._fullData[0].z.length == {n}"


def traces_are(n: int) -> str:
    return f"{PLOT} && {PLOT}.data && {PLOT}.data.length == {n}"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def links(workspace, tiny_llama) -> list[str]:
    """Fill the workspace (one result of every kind, a hostile prompt, synthetic features); its result pages."""
    sample = write_sample_workspace(workspace, tiny_llama)
    logit_lens(tiny_llama, HOSTILE_PROMPT).save(workspace, "hostile")
    attention_patterns(tiny_llama, "The cat sat on the mat because it was warm.").save(workspace, "cat")
    write_synthetic_features(workspace, "syn", n_features=2000)
    return sorted(["/result/lens/hostile", "/result/attention/cat"]
                  + [f"/result/{kind}/{folder.name}" for kind, folder in sample.items()])


@pytest.fixture(scope="module")
def server(workspace, links):
    with Server(create_app(workspace, model_spec="tiny-llama"), port=0) as s:
        yield s


@pytest.fixture
def page(browser, server):
    """A fresh page that records errors and every request; asserts all stayed local and nothing ran."""
    pg = browser.new_page(viewport={"width": 1300, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    requests: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: requests.append(r.url))
    yield pg
    pwned = pg.evaluate("window.__pwned")
    pg.close()
    assert not errors, errors
    assert pwned is None, "markup from a token or prompt was executed"
    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert not outside, f"requests left the local server: {outside[:5]}"


def visit(pg, server, path: str, ready: str = ".page h2"):
    pg.goto(server.url.rstrip("/") + path)
    pg.wait_for_selector(ready)


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_page_html_uses_no_external_scripts(server):
    html = urllib.request.urlopen(server.url, timeout=30).read().decode()
    srcs = [part.split('"')[1] for part in html.split('src=')[1:] if part.startswith('"')]
    assert srcs and all(s.startswith("/") for s in srcs), srcs
    assert "cdn" not in html.lower()


def test_every_page_of_the_workspace(page, server, links):
    visit(page, server, "/", "#results")
    shot(page, "home")
    shown = page.eval_on_selector_all("#results a", "els => els.map(e => e.getAttribute('href'))")
    assert sorted(shown) == links and len(links) > 20
    for href in links:
        page.click(f"#results a[href='{href}']")
        page.wait_for_selector(".page .js-plotly-plot")
        assert page.locator(".page h2").inner_text() == href.removeprefix("/result/").replace("/", ": ")
        assert page.locator(".message.error").count() == 0
        shot(page, "result_" + href.removeprefix("/result/").replace("/", "_"))
        page.go_back()
        page.wait_for_selector("#results")
    visit(page, server, "/result/lens/hostile", ".page .js-plotly-plot")
    assert page.get_by_text("prompt: " + HOSTILE_PROMPT).count() == 1  # shown as text
    visit(page, server, "/result/edit/sample", "pre.generation")
    before, after = page.locator("pre.generation").all_inner_texts()
    assert before.startswith(MARKUP) and after.startswith(MARKUP)  # both generations, markup as text
    assert page.locator(".section h3").all_inner_texts() == [
        "Scores before (pre) and after (post) the edit", "Per case, before and after", "Generations"]
    visit(page, server, "/result/..%2F..%2Fetc/passwd", ".message.error")
    assert "not a plain name" in page.locator(".message.error").inner_text()


def test_attention_browser_follows_typed_prompts(page, server):
    visit(page, server, "/attention")
    page.fill("#attn-prompt", "The quick brown fox")
    page.click("#attn-run")
    page.wait_for_function("document.querySelectorAll('#attn-strip .tok').length == 19")
    page.wait_for_selector(".figure .js-plotly-plot")
    page.wait_for_function(traces_are(4))  # all heads
    page.check("#attn-head input[value='1']")
    page.wait_for_function(rows_are(19))
    rows, first, _ = page.eval_on_selector(".figure .js-plotly-plot", SUM_Z)
    assert rows == 19
    shot(page, "attention_fox")

    page.fill("#attn-prompt", HOSTILE_PROMPT)
    page.click("#attn-run")
    page.wait_for_function(f"document.querySelectorAll('#attn-strip .tok').length == {len(HOSTILE_PROMPT)}")
    page.wait_for_function(rows_are(len(HOSTILE_PROMPT)))
    rows, second, _ = page.eval_on_selector(".figure .js-plotly-plot", SUM_Z)
    assert rows == len(HOSTILE_PROMPT) and second != first
    assert page.locator("#attn-strip").inner_text().replace("\n", "") == HOSTILE_PROMPT

    page.hover("#attn-strip .tok[data-i='10']")
    page.wait_for_function("document.getElementById('attn-hover-info')?.textContent.includes('token 10 attends')")
    shaded = page.eval_on_selector_all("#attn-strip .tok", "els => els.map(e => e.style.backgroundColor)")
    assert all(shaded[:11]) and not any(shaded[11:])  # causal: token 10 attends only to 0..10
    page.check("#attn-mode input[value='to']")
    page.hover("#attn-strip .tok[data-i='11']")
    page.hover("#attn-strip .tok[data-i='10']")
    page.wait_for_function("document.getElementById('attn-hover-info')?.textContent.includes('is attended by')")
    shaded = page.eval_on_selector_all("#attn-strip .tok", "els => els.map(e => e.style.backgroundColor)")
    assert not any(shaded[:10]) and all(shaded[10:])
    shot(page, "attention_hover")

    page.uncheck("#attn-first input")
    page.wait_for_function(rows_are(len(HOSTILE_PROMPT) - 1))
    assert not page.locator("#attn-strip .tok[data-i='0']").is_visible()
    page.check("#attn-head input[value='all']")
    page.wait_for_function(traces_are(4))
    shot(page, "attention_all_heads_no_first")


def test_saved_attention_and_download(page, server):
    visit(page, server, "/attention?saved=cat")
    page.wait_for_function("document.querySelectorAll('#attn-strip .tok').length > 0")
    assert page.locator("#attn-strip").inner_text().replace("\n", "") == "The cat sat on the mat because it was warm."
    page.wait_for_selector(".figure .js-plotly-plot")
    with page.expect_download() as info:
        page.click("button.download")
    html = Path(info.value.path()).read_text()
    assert info.value.suggested_filename == "attention.html" and "Plotly" in html and 'src="http' not in html


def test_feature_list_search_paging_and_feature_page(page, server):
    visit(page, server, "/features/syn", "#feat-table")
    assert "page 1 of 40 (2000 features)" in page.locator("#feat-page-label").inner_text()
    shot(page, "features_list")
    page.click("#feat-next")
    page.wait_for_function("document.getElementById('feat-page-label')?.textContent.startsWith('page 2 of 40')")
    page.fill("#feat-search", "<script>")
    page.press("#feat-search", "Enter")
    page.wait_for_function("location.search.includes('q=')")
    page.wait_for_function("document.getElementById('feat-page-label')?.textContent.startsWith('page 1 of')")
    assert page.locator("#feat-table").get_by_text(HOSTILE_TOKEN).count() >= 1
    page.click("#feat-table a[href='/features/syn/0']")
    page.wait_for_selector("#feat-contexts")
    assert page.locator(".page h2").inner_text() == "Feature 0 of syn"
    assert page.locator("#feat-contexts .strip").count() == 10 + 4 * 3
    shaded = page.eval_on_selector_all("#feat-contexts .tok", "els => els.filter(e => e.style.backgroundColor).length")
    assert shaded > 0 and page.locator("#feat-contexts").get_by_text(HOSTILE_TOKEN).count() > 0
    assert page.locator(".page .js-plotly-plot").count() == 2  # activation histogram, logits
    shot(page, "feature_0")


def test_cli_serves_the_dashboard(browser, workspace, links, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "interp", "dashboard", "--workspace", str(workspace),
                             "--port", "0", "--json", "--model", "tiny-llama"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:")
        pg = browser.new_page()
        pg.goto(url)
        pg.wait_for_selector("#results", timeout=TIMEOUT_MS)
        assert pg.locator("#results a").count() == len(links)
        pg.close()
    finally:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 130

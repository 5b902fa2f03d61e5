"""The Dash app: routing, home page, and a small local server (loopback, free-port fallback).

Pages:  /                         workspace overview
        /attention[?prompt=|saved=] attention browser
        /result/<kind>/<name>     one saved result (views registry)
        /features/<name>          SAE feature list (?q=&sort=&page=)
        /features/<name>/<id>     one feature

Every script and stylesheet is served by this server from the installed packages (Dash's
`serve_locally`, plus `assets/`), so the pages work with no internet.

Every request must name this machine in its `Host` header (localhost, 127.0.0.1, [::1], the address
the server is bound to) or a name the user allowed; anything else gets 403. Binding to loopback keeps
other machines out, but not a web page whose own domain is made to resolve to 127.0.0.1 (DNS
rebinding): its requests carry the page's domain as their Host.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flask
from dash import Dash, Input, Output, dcc, html

from dashboards import microscope_view, outlier_views, probe_views, result_views  # noqa: F401  (register the dedicated result pages)
from dashboards.attention import attention_page, register_attention_callbacks
from dashboards.components import message, register_downloads
from dashboards.context import Context
from dashboards.feature_store import FEATURES_DIR, feature_set_names
from dashboards.features import feature_list_page, feature_page, register_feature_callbacks
from dashboards.ffn import register_ffn_callbacks
from dashboards.graph_page import register_graph_callbacks
from dashboards.steering import register_steering_callbacks
from dashboards.views import result_page, saved_prompt
from interp.errors import InterpError
from interp.workspace import Entry, Workspace

ASSETS = Path(__file__).parent / "assets"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # "every interface": no request is addressed to these


def host_name(value: str) -> str:
    """The host of a `Host` header or of a name the user gave: lower case, without port, IPv6 brackets or
    trailing dot; "" when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return ""
    elif value.count(":") == 1:
        host = value.partition(":")[0]
    else:  # a name without a port, or a bare IPv6 address
        host = value
    return host.rstrip(".")


def _checked_host(name: str) -> str:
    host = host_name(name)
    if not host or any(c.isspace() or c in "/\\@?#" for c in host):
        raise InterpError(f"{name!r} is not a host name; pass a name or address such as mybox.local or 192.168.1.5")
    return host


def guard_hosts(app: Dash, allowed: Iterable[str] = ()) -> None:
    """Answer only requests whose Host is loopback or in `allowed` (names or addresses, ports ignored);
    the rest get 403 with a one-line plain-text reason. `app.allowed_hosts` is the set checked."""
    names = [allowed] if isinstance(allowed, str) else list(allowed)
    app.allowed_hosts = set(LOOPBACK_HOSTS) | {_checked_host(name) for name in names}

    @app.server.before_request
    def check_host():
        host = host_name(flask.request.host)
        if host in app.allowed_hosts:
            return None
        response = flask.Response(f"403: this dashboard answers only for localhost and the hosts given with "
                                  f"--allow-host, not for {ascii(host[:80])}\n", 403, mimetype="text/plain")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def create_app(workspace: str | Path, model_spec: str | None = None, device: str = "cpu",
               allowed_hosts: Iterable[str] = (), model_options: dict | None = None) -> Dash:
    """A dashboard over `workspace`; with `model_spec`, typed prompts run on that model (loaded lazily, with
    `load_model`'s `model_options`: dtype, n_devices, device_map).

    It answers requests addressed to loopback hosts, to the address a `Server` binds it to, and to
    `allowed_hosts` (e.g. this machine's LAN name when serving on 0.0.0.0); others get 403.
    """
    ctx = Context(workspace, model_spec, device, model_options)
    app = Dash(__name__, assets_folder=str(ASSETS), serve_locally=True, title="interp dashboard",
               update_title=None, suppress_callback_exceptions=True)
    guard_hosts(app, allowed_hosts)
    app.layout = lambda: html.Div([dcc.Location(id="url", refresh="callback-nav"), _nav(ctx),
                                   html.Div(id="page", className="page")])
    app.enable_dev_tools(debug=False, dev_tools_disable_version_check=True)  # no call home, ever
    app.interp_context = ctx

    @app.callback(Output("page", "children"), Input("url", "pathname"), Input("url", "search"))
    def route(pathname, search):
        return render(ctx, pathname, search)

    register_downloads(app)
    register_attention_callbacks(app, ctx)
    register_feature_callbacks(app, ctx)
    register_graph_callbacks(app, ctx)
    register_steering_callbacks(app, ctx)
    register_ffn_callbacks(app, ctx)
    return app


def _nav(ctx: Context) -> html.Div:
    links = [dcc.Link("interp", href="/"), dcc.Link("Attention", href="/attention")]
    if ctx.workspace_problem() is None:
        links += [dcc.Link(f"Features: {name}", href=f"/features/{name}") for name in feature_set_names(ctx)]
    return html.Div(links + [html.Span(str(ctx.root), className="muted")], className="nav")


def render(ctx: Context, pathname: str | None, search: str | None) -> list[Any]:
    """The children of the page at `pathname`; bad input and broken files become messages."""
    parts = [urllib.parse.unquote(p) for p in (pathname or "/").strip("/").split("/") if p]
    query = {k: v[-1] for k, v in urllib.parse.parse_qs((search or "").lstrip("?")).items()}
    try:
        if parts == ["attention"]:
            return attention_page(ctx, query)
        problem = ctx.workspace_problem()
        if problem:
            return [message(problem, "error")]
        if not parts:
            return home_page(ctx)
        if parts[0] == "result" and len(parts) == 3:
            return result_page(ctx, parts[1], parts[2])
        if parts[0] == "features" and len(parts) == 2:
            return feature_list_page(ctx, parts[1], query)
        if parts[0] == "features" and len(parts) == 3 and parts[2].isdigit():
            return feature_page(ctx, parts[1], int(parts[2]))
        return [message(f"There is no page at {pathname}; start from the home page.", "error")]
    except InterpError as e:
        return [message(str(e), "error")]
    except Exception as e:  # a page, not a stack trace, for files that are broken in unforeseen ways
        traceback.print_exc(file=sys.stderr)
        return [message(f"Could not build this page ({type(e).__name__}: {e}). The workspace may be "
                        "half-written or from another version; re-run the analysis that wrote it.", "error")]


def _prompt_of(entry: Entry) -> str:
    try:
        return saved_prompt(entry)
    except InterpError:
        return ""


def _incomplete(ctx: Context) -> list[str]:
    """Result folders that are still being written or were interrupted (no result.json)."""
    return [f"{kind.name}/{folder.name}" for kind in ctx.root.iterdir()
            if kind.is_dir() and not kind.name.startswith(".") and kind.name != FEATURES_DIR
            for folder in kind.iterdir() if folder.is_dir() and not (folder / "result.json").is_file()]


def home_page(ctx: Context) -> list[Any]:
    entries = Workspace(ctx.root).entries()
    parts: list[Any] = [html.H2("Workspace"), html.P(str(ctx.root), className="muted")]
    incomplete = _incomplete(ctx)
    if incomplete:
        parts.append(message(f"Skipped {len(incomplete)} incomplete folder(s) (still being written, or "
                             f"interrupted): {', '.join(incomplete[:5])}"))
    damaged = [f"{e.kind}/{e.name}: {e.note}" for e in entries if e.note]
    if damaged:
        parts.append(message(f"{len(damaged)} result(s) are shown with their folder's time: {'; '.join(damaged[:5])}",
                             "error"))
    names = feature_set_names(ctx)
    if not entries and not names:
        parts.append(message("This workspace has no saved results yet. Save one with `--workspace "
                             f"{ctx.root}` on any command, e.g. `interp lens \"The capital of France is\" "
                             f"--workspace {ctx.root}`."))
    if entries:
        rows = [html.Tr([html.Td(e.kind), html.Td(dcc.Link(e.name, href=f"/result/{e.kind}/{e.name}")),
                         html.Td(time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))),
                         html.Td(_prompt_of(e), className="toks")]) for e in entries]
        header = html.Tr([html.Th(t) for t in ("kind", "result", "saved", "prompt")])
        parts += [html.H3("Saved results"), html.Table([header] + rows, className="list", id="results")]
    if names:
        parts += [html.H3("SAE features"),
                  html.Ul([html.Li(dcc.Link(n, href=f"/features/{n}")) for n in names], id="feature-sets")]
    parts.append(html.P(dcc.Link("Attention browser", href="/attention")))
    return parts


def _can_bind(host: str, port: int) -> bool:
    """Whether `port` is free on `host` (werkzeug exits the process instead of raising when it is not)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise InterpError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass --host 127.0.0.1") from e
    return True


class Server:
    """A threaded local HTTP server for the app; falls back to a free port if `port` is taken."""

    def __init__(self, app: Dash, host: str = "127.0.0.1", port: int = 8050):
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        if hasattr(app, "allowed_hosts") and host_name(host) not in WILDCARD_HOSTS:
            app.allowed_hosts.add(host_name(host))  # requests to the address it listens on
        self._server = make_server(host, port if _can_bind(host, port) else 0, app.server, threaded=True)
        self.port = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> Server:
        """Serve in a background thread (for tests and notebooks); returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""`interp dashboard --workspace DIR`: serve the local web dashboard (loopback by default)."""

import json
import signal
import sys

from interp.cli.outputs import UNUSED, declare_outputs
from interp.cli.types import port


def register(sub, common) -> None:
    p = sub.add_parser("dashboard", parents=[common], help="browse a workspace in a local web app")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port, default=8050, help="port (default: 8050; a free one if it is taken)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (repeatable; localhost, 127.0.0.1 and [::1] "
                        "always work): e.g. this machine's LAN name when serving on --host 0.0.0.0")
    p.set_defaults(run=run)
    declare_outputs(p, html=UNUSED)


def run(args):
    from dashboards.app import Server, create_app
    from interp.errors import InterpError

    if not args.workspace:
        raise InterpError("pass --workspace DIR, the folder your analyses saved into")
    # Ctrl-C stops it even when started from a parent that ignores SIGINT (background jobs, some test
    # runners); installed before the URL is printed, since whoever reads it may press Ctrl-C at once.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app = create_app(args.workspace, model_spec=args.model, device=args.device, allowed_hosts=args.allow_host,
                     model_options={"dtype": args.dtype, "n_devices": args.n_devices, "device_map": args.device_map})
    server = Server(app, args.host, args.port)
    if args.json:
        print(json.dumps({"url": server.url, "workspace": args.workspace}), flush=True)
    else:
        print(f"interp dashboard on {server.url} (Ctrl-C to stop)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}; anyone who can reach it can read the workspace", file=sys.stderr)
    server.serve_forever()  # returns only on Ctrl-C: werkzeug swallows the KeyboardInterrupt
    raise KeyboardInterrupt  # so the CLI reports it (exit 130) instead of printing an empty result

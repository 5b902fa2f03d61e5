"""Local web dashboard over a workspace: saved results, attention patterns, SAE features.

    from dashboards import create_app, Server
    with Server(create_app("ws", model_spec="tiny-llama"), port=0) as server:
        print(server.url)
"""

from dashboards.app import Server, create_app
from dashboards.views import register_view

__all__ = ["Server", "create_app", "register_view"]

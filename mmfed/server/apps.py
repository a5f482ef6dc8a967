"""Factories for the ServerApp and ClientApp, shared by `flwr run` (server/, client/) and `mmfed simulate`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.server import Grid, ServerApp

from mmfed.federation.config import FederationConfig
from mmfed.server.run import run_server
from mmfed.site.client import make_client_app

__all__ = ["make_client_app", "make_server_app"]


def make_server_app(
    cfg: FederationConfig | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    result: dict[str, Any] | None = None,
) -> ServerApp:
    """With `cfg`, the simulation's app; without, the config comes from Flower's run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        run_cfg = cfg or FederationConfig.from_mapping(dict(context.run_config))
        summary = run_server(grid, context, run_cfg, on_round=on_round)
        if result is not None:
            result.update(summary)

    return app

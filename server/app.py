"""Flower ServerApp (`flwr run .`): run config -> mmfed.federation -> rounds."""

from mmfed.server.apps import make_server_app

app = make_server_app()

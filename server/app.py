"""Flower ServerApp (`flwr run .`): run config -> mmfed.federation -> rounds."""

from mmfed.federation.apps import make_server_app

app = make_server_app()

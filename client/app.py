"""Flower ClientApp (`flwr run .`, SuperNodes): node config -> the site's data -> train/evaluate."""

from mmfed.federation.apps import make_client_app

app = make_client_app()

"""Flower ClientApp (`flwr run .`, SuperNodes): node config -> the site's data -> train/evaluate."""

from mmfed.site.client import make_client_app  # light: no torch until a message trains

app = make_client_app()

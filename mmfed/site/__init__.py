"""The site side of a run: its data and training (runtime), its ClientApp (client), its own log."""

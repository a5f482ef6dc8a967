"""Local training: train/evaluate loops and the centralised baseline."""

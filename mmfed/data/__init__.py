"""Site data: manifest format, per-modality processing, datasets, partitioners, scenarios."""

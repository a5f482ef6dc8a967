"""Small valid inputs for the reliability cases to break: a site directory, a run config."""

from __future__ import annotations

import shutil
from pathlib import Path


def site(work: Path, name: str = "site_a", samples: int = 12, modalities: str = "image,audio,text") -> Path:
    """A valid site directory `work/name` (manifest.csv, images, audio, text), nothing else in it."""
    from mmfed.data.scenarios.synthetic import synthetic_site

    built = synthetic_site(work / ".gen", 0, samples=samples, num_classes=2, modalities=modalities)
    target = work / name
    shutil.copytree(built, target)
    shutil.rmtree(work / ".gen")
    for stray in target.glob(".*"):
        stray.unlink() if stray.is_file() else shutil.rmtree(stray)
    return target


def run_config(work: Path, text: str, name: str = "run.toml") -> Path:
    """A run config with the defaults of a tiny synthetic federation, plus `text` (TOML lines)."""
    path = work / name
    path.write_text(
        'scenario = "synthetic"\nsites = 2\nsamples-per-site = 8\nmodalities = "image"\nrounds = 1\n' + text
    )
    return path

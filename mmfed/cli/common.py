"""What several commands share: the console, option types, and preparing a scenario with a status line."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


class OnBadRow(StrEnum):
    fail = "fail"
    skip = "skip"


ScenarioOpt = Annotated[
    str,
    typer.Option(
        help="digits-av (embedded); digits-public (embedded, public); fsdd-mnist, fsdd-mnist-public "
        "(public), covid-cxr, grid-av (need --data-dir); synthetic"
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="folder with the real data a scenario reads (fsdd-mnist, fsdd-mnist-public, covid-cxr, grid-av)"
    ),
]
CacheOpt = Annotated[
    Path | None, typer.Option(help="where scenarios and features are cached [$MMFED_CACHE_DIR]")
]


def prepared_scenario(
    name: str, data_dir: Path | None, cache_dir: Path | None, site_dirs: list[Path] | None, seed: int
):
    """The user's own site directories, or the named scenario (built once, then cached)."""
    from mmfed.data.scenarios import from_site_dirs, prepare_scenario

    if site_dirs:
        return from_site_dirs(site_dirs)
    with console.status(f"preparing scenario {name} (built once, then cached)"):
        return prepare_scenario(name, data_dir=data_dir, cache_dir=cache_dir, seed=seed)

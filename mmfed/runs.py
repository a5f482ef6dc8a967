"""Run directories: where a new run's results go when none is given (runs/<kind>-<what>-<YYYYmmdd-HHMMSS>
under the working directory; `mmfed train`: train-<scenario>, a federation: fed-<scenario>), and the one
rule for claiming one: an earlier run's results are never overwritten."""

from __future__ import annotations

import time
from pathlib import Path

from mmfed.errors import MMFedError


def new_run_dir(kind: str, what: str) -> Path:
    return Path.cwd() / "runs" / f"{kind}-{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_run_dir(path: Path, resume: bool = False, resumable: bool = False) -> bool:
    """Refuse a non-empty directory unless the run resumes it; returns whether it holds an earlier run.
    `resumable`: the command could resume it (the message says how)."""
    path = Path(path)
    existing = path.exists() and any(path.iterdir())
    if existing and not resume:
        how = (
            "pass --resume to continue that run, or choose a new --run-dir"
            if resumable
            else "choose a new --run-dir"
        )
        raise MMFedError(f"{path}: run directory is not empty; {how} (nothing was changed)")
    return existing


def check_new_folder(path: Path, option: str, earlier: str = "") -> None:
    """Refused before anything runs (nothing is overwritten): `path` a file, under a file, or a folder that
    is not empty. `option` names the setting in the message; `earlier`, what such a folder likely holds."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            what = "is a file" if part == path else f"is under {part}, a file"
            raise MMFedError(f"{option} {path}: {what}; choose a new {option} (nothing was changed)")
        if part.exists():
            break
    if path.is_dir() and any(path.iterdir()):
        held = f" ({earlier}?)" if earlier else ""
        raise MMFedError(
            f"{option} {path}: folder is not empty{held}; choose a new {option} (nothing was changed)"
        )

"""Where a new run's results go when no run directory is given: runs/<kind>-<what>-<YYYYmmdd-HHMMSS>
under the working directory (`mmfed train`: train-<scenario>; a federation: fed-<scenario>)."""

from __future__ import annotations

import time
from pathlib import Path


def new_run_dir(kind: str, what: str) -> Path:
    return Path.cwd() / "runs" / f"{kind}-{what}-{time.strftime('%Y%m%d-%H%M%S')}"

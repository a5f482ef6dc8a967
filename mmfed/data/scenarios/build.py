"""Build a scenario's site directories once, atomically, safe when several processes race to do it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = ".mmfed-scenario.json"


def _complete(root: Path, key: str) -> list[Path] | None:
    try:
        meta = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    return [root / name for name in meta["sites"]]


def build_once(root: Path, key: str, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Return the site dirs under `root`, calling `write(tmp_dir)` only if no complete build for `key` exists.

    `write` builds into a fresh temporary sibling, which is renamed into place only when complete, so a
    crashed build is never used and a finished one is never half-overwritten.
    """
    done = _complete(root, key)
    if done is not None:
        return done
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        sites = write(tmp)
        names = [s.relative_to(tmp).as_posix() for s in sites]
        (tmp / MARKER).write_text(json.dumps({"key": key, "sites": names}, indent=1))
        if root.exists() and _complete(root, key) is None:
            stale = root.with_name(f".{root.name}.stale-{os.getpid()}")
            root.rename(stale)  # an old or half-built version: move aside, then delete
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if _complete(root, key) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = _complete(root, key)
    assert done is not None
    return done

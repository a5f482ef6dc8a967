"""Build a scenario's site directories once, atomically, safe when several processes race to do it.

`root` either holds a complete build (its marker file, written last) or is absent: the build happens in
a temporary sibling that is renamed into place. Concurrent callers (the ClientApps of a simulation)
serialise on a lock file beside `root`, so one builds and the others reuse. A build made with other
settings is replaced; a directory without a marker is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmfed.errors import DataError

MARKER = ".mmfed-scenario.json"


def build_once(
    root: Path, settings: dict[str, Any], write: Callable[[Path], list[Path]], marker: str = MARKER
) -> list[Path]:
    """The site dirs under `root`, calling `write(tmp_dir)` (which returns the site dirs it wrote) only if
    no complete build with these `settings` exists. The marker holds the settings plus the site names."""
    root = Path(root)
    found = _existing(root, settings, marker)
    if found is not None:
        return found
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):
        found = _existing(root, settings, marker)  # another process may have finished while we waited
        if found is not None:
            return found
        if root.exists() and any(root.iterdir()) and not (root / marker).exists():
            raise DataError(
                f"{root} exists and is not a {settings.get('scenario', 'scenario')} generation (it has no "
                f"{marker}); empty it or choose another directory"
            )
        _remove_leftovers(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the build is ordinary shared data
        try:
            names = [site.relative_to(tmp).as_posix() for site in write(tmp)]
            # the marker goes in last: a directory with a marker is a complete build
            (tmp / marker).write_text(
                json.dumps({**settings, "sites": names}, indent=2) + "\n", encoding="utf-8"
            )
            _swap_in(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [root / name for name in names]


def _existing(root: Path, settings: dict[str, Any], marker: str) -> list[Path] | None:
    """The site dirs of a complete build with these settings under root, else None."""
    try:
        stored = json.loads((root / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = stored.pop("sites", None)
    if stored != settings or not isinstance(names, list):
        return None
    sites = [root / name for name in names]
    return sites if all((s / "manifest.csv").is_file() for s in sites) else None


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """An exclusive lock next to root, so concurrent callers build once and the others wait."""
    from mmfed.files import locked

    with locked(root.parent / f".{root.name}"):
        yield


def _remove_leftovers(root: Path) -> None:
    # called under the lock: no build is running, so any temporary sibling is from a crashed one
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _swap_in(tmp: Path, root: Path) -> None:
    if root.exists():
        # rename() cannot replace a non-empty directory: move the old build aside first
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.rename(root, old / "x")
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, root)

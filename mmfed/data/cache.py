"""On-disk cache of computed arrays keyed by the content of the source file and the settings used.

Keyed by content (not path or mtime) so that a renamed or copied file hits, and an edited file misses.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from mmfed.data import file_identity
from mmfed.files import write_atomic


def default_cache_dir() -> Path:
    """$MMFED_CACHE_DIR, else ~/.cache/mmfed."""
    env = os.environ.get("MMFED_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mmfed"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArrayCache:
    """`get(path, settings_key)` -> array or None; `put(...)` writes atomically (safe across processes)."""

    def __init__(self, root: Path | None, namespace: str):
        self.root = None if root is None else Path(root) / namespace
        self._digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content digest

    def _digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:  # hash each file once per process, not once per epoch
            known = file_identity.active()  # and, at a site, once while it is unchanged
            self._digests[key] = file_digest(path) if known is None else known.digest(path, file_digest)
        return self._digests[key]

    def _entry(self, path: Path, settings_key: str) -> Path:
        assert self.root is not None
        digest = hashlib.sha256(f"{self._digest(path)}:{settings_key}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, path: Path, settings_key: str) -> np.ndarray | None:
        if self.root is None:
            return None
        entry = self._entry(path, settings_key)
        if not entry.exists():
            return None
        try:
            return np.load(entry, allow_pickle=False)
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)  # a corrupt entry is recomputed, never trusted
            return None

    def put(self, path: Path, settings_key: str, array: np.ndarray) -> None:
        if self.root is None:
            return
        entry = self._entry(path, settings_key)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_atomic(entry, buffer.getvalue(), durable=False)  # a lost cache entry is recomputed

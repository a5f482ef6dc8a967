"""What a site already knows about its files, by file identity: a file's content digest and whether its
manifest probe passed, remembered until the file changes, so unchanged files are not read again.

A file's identity is (path, size, mtime_ns, ctime_ns, inode, device): any write, replacement or `touch`
changes it (ctime too, which no user can set back), and a changed file is read again from its content.
The cache lives in the site's home (`state/file-identity.json`, mode 0600) and never leaves the site; a
warm site worker (mmfed.site.worker) also keeps it in memory.

`using(cache_or_path)` makes a cache the active one for a block (one message at a site); the data
fingerprint, the manifest's file probes and the feature cache's digests consult it. Without an active
cache everything is computed from content, as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmfed.files import write_atomic

STATE_FILE = "state/file-identity.json"
VERSION = 1
log = logging.getLogger("mmfed.data")

_ACTIVE: contextvars.ContextVar[FileIdentityCache | None] = contextvars.ContextVar(
    "mmfed_file_identity", default=None
)


def identity(path: Path) -> list[int] | None:
    """The file's identity now, or None when it cannot be stat-ed (then nothing is remembered for it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class FileIdentityCache:
    """path -> {"id": identity, facts...}; facts are dropped as soon as the identity differs."""

    def __init__(self, path: Path | None = None):
        self.path = None if path is None else Path(path)
        self.files: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if self.path is not None:
            self.files = _read(self.path)

    def get(self, path: Path, fact: str, ident: list[int] | None = None) -> Any:
        """The fact remembered for `path` as it is now (or as `ident` says it is), or None."""
        entry = self.files.get(str(path))
        now = ident if ident is not None else identity(path)
        if entry is None or now is None:
            return None
        return entry.get(fact) if entry.get("id") == now else None

    def put(self, path: Path, fact: str, value: Any, ident: list[int] | None) -> None:
        """Remember `fact` for `path` at identity `ident` (taken before the file was read)."""
        if ident is None:
            return
        entry = self.files.get(str(path))
        if entry is None or entry.get("id") != ident:
            entry = self.files[str(path)] = {"id": ident}
        if entry.get(fact) != value:
            entry[fact] = value
            self.dirty = True

    def digest(self, path: Path, compute: Callable[[Path], str]) -> str:
        """The content digest of `path`: remembered while the file is unchanged, else `compute(path)`."""
        ident = identity(path)  # before reading: a write during the read changes it for next time
        known = self.get(path, "sha256", ident)
        if known is None:
            known = compute(path)
            self.put(path, "sha256", known, ident)
        return known

    def save(self) -> None:
        """Write the cache (mode 0600) if anything changed; a site home that cannot be written only
        costs the re-reads next time."""
        if self.path is None or not self.dirty:
            return
        body = json.dumps({"v": VERSION, "files": self.files}, sort_keys=True, separators=(",", ":"))
        try:
            write_atomic(self.path, body, durable=False)  # a temporary file is created 0600
            os.chmod(self.path, 0o600)
            self.dirty = False
        except OSError as exc:
            log.warning("could not save the file identity cache %s: %s", self.path, exc)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a damaged cache is only a cache: start again
        log.warning("ignoring the file identity cache %s: %s", path, exc)
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("v") == VERSION else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("id"), list)}


def active() -> FileIdentityCache | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def using(cache: FileIdentityCache | Path) -> Iterator[FileIdentityCache]:
    """Make `cache` (or the cache stored at a path) the active one for the block; saved at its end."""
    if not isinstance(cache, FileIdentityCache):
        cache = FileIdentityCache(cache)
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
        cache.save()

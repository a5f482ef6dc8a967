"""Writing files so that a killed process leaves the old file or the new one, never half of either, and
locking them across processes. One implementation for every state file, checkpoint and cache entry.

A write that fails (a full disk, a file-size limit, a read-only folder) raises WriteError, an MMFedError
that is also the OSError it came from: its message names the file and says what was left as it was."""

from __future__ import annotations

import contextlib
import errno as errnos
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mmfed.errors import MMFedError


class WriteError(MMFedError, OSError):
    """`path` could not be written; `kept` says what is still as it was."""

    def __init__(self, path: Path, cause: BaseException, kept: str):
        code = getattr(cause, "errno", None) or errnos.EIO
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(code, reason, str(path))
        self.path, self.reason, self.kept = Path(path), reason, kept

    def __str__(self) -> str:
        return f"{self.path}: could not be written ({self.reason}); {self.kept}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a short write (the disk filling up) goes on with the rest, or fails
        view = view[os.write(fd, view) :]


def write_atomic(path: Path, data: bytes | str | Callable[[Path], None], durable: bool = True) -> None:
    """Replace `path` by `data` (bytes, text, or a function that writes a given temporary path) in one
    rename. The temporary file is unique (concurrent writers never share one); `durable` also fsyncs the
    file and its folder before and after the rename, so a power cut cannot leave an empty file behind.
    A failed write (WriteError) leaves `path` as it was and no temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(path, exc, "nothing was changed") from exc
    tmp = Path(name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            if durable:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
        else:
            try:
                _write_all(fd, data.encode() if isinstance(data, str) else data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        kept = "the file is as it was before" if path.exists() else "nothing was written"
        raise WriteError(path, exc, kept) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def append(
    path: Path, data: bytes | str, durable: bool = False, kept: str = "nothing was added to it"
) -> None:
    """Append `data` (whole lines) to `path`, unbuffered. A failed write (WriteError, its message ending
    in `kept`) is taken back: the file keeps exactly what it had, never half a line; `durable` fsyncs it."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WriteError(path, exc, "nothing was changed") from exc
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, payload)
            if durable:
                os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(fd, size)
            raise WriteError(path, exc, kept) from exc
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """A temporary file write_atomic leaves behind only when its process is killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on `path`.lock (a sibling file) held for the block, across processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

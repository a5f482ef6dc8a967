"""What no command may write over: a file the command reads, or a site's manifest, labels, policy,
keys or privacy state (its ledger, budget, log). One rule, used by every command that writes."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from mmfed.errors import MMFedError

# what of a site directory no command may write over (relative to the site directory), longest first
_PROTECTED = {
    "keys/ledger-signing.pem": "a site's ledger signing key",
    "keys/ledger-signing.pub.pem": "a site's ledger public key",
    "state/ledger.jsonl": "a site's ledger",
    "state/site-log.jsonl": "a site's log",
    "state/budget": "a site's privacy budget",
    "manifest.csv": "a site's manifest",
    "labels.txt": "a site's labels",
    "site.toml": "a site's privacy policy",
    "keys": "a site's keys folder",
    "state": "a site's privacy state folder",
}
# a folder holding one of these is a site directory (keys.PRIVATE_KEY, budget.LEDGER, policy.POLICY_FILE)
_SITE_MARKERS = ("manifest.csv", "site.toml", "state/ledger.jsonl", "keys/ledger-signing.pem")


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the path as written
        return Path(os.path.abspath(path))


def _site_part(path: Path, own: Path | None) -> str | None:
    """'that is X' / 'that is inside X' when `path`, as written (absolute, `..` folded) or with its
    symlinks resolved, is or lies in a protected part of a site directory; None otherwise. A site `own`
    (the one `site init` sets up) may have its own policy and keys created."""
    skip = {Path(os.path.abspath(own)), _real(own)} if own else set()
    for candidate in dict.fromkeys((Path(os.path.abspath(path)), _real(path))):
        for home in candidate.parents:
            rel = candidate.relative_to(home).as_posix()
            if rel.split("/")[0] not in _PROTECTED or home in skip:
                continue
            if any(os.path.exists(home / marker) for marker in _SITE_MARKERS):
                part = next(k for k in _PROTECTED if rel == k or rel.startswith(k + "/"))
                if rel != part:
                    return f"that is inside {_PROTECTED[part]} {home / part} (nothing may be written there)"
                folder = part in ("keys", "state", "state/budget")
                why = "nothing may be written there" if folder else "it would be overwritten"
                return f"that is {_PROTECTED[part]} ({why})"
    return None


def _same_file(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:  # a hard link of a file read
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_protected(
    option: str,
    path: Path | str | None,
    reads: Iterable[Path | str | None] = (),
    *,
    folder: bool = False,
    writes: Iterable[str] = (),
    own: Path | None = None,
    instead: str = "write the report elsewhere",
) -> None:
    """The one rule of every command that writes: refuse (MMFedError, before anything is written) a target
    that is a file the command reads, or is or lies in a site's manifest.csv, labels.txt, site.toml,
    keys/ or state/. `folder`: `path` is a folder the command writes `writes` (and maybe more) into."""
    if path is None:
        return
    path = Path(path)
    reads = [Path(r) for r in reads if r is not None]
    targets = [path, *(path / name for name in writes)] if folder else [path]
    for target in targets:
        problem = _site_part(target, own)
        if problem is None and any(
            _same_file(target, r) for r in reads if not (folder and target == path and r.is_dir())
        ):
            problem = "that is a file this command reads (it would be overwritten)"
        if problem:
            real = _real(path)
            shown = f"{path}" + (f" (resolves to {real})" if real != Path(os.path.abspath(path)) else "")
            what = problem if target == path else f"it would write {target}: {problem}"
            raise MMFedError(f"{option} {shown}: {what}; {instead}")


def check_target(option: str, path: Path | str | None, *, folder: bool = False) -> None:
    """A path a command will write (a report file, or a folder of plots) has the right shape, checked before
    the command's work: not a folder where a file goes, not a file where a folder goes, and nothing on the
    way to it a file. Missing folders on the way are fine (they are created)."""
    if path is None:
        return
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise MMFedError(f"{option} {path}: is a file; give a folder (nothing was written)")
    if not folder and path.is_dir():
        raise MMFedError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'report.md'}")
    for part in path.parents:
        if part.exists():
            if not part.is_dir():
                raise MMFedError(f"{option} {path}: {part} is a file, not a folder (nothing was written)")
            return


def manifest_files(site_dir: Path) -> list[Path]:
    """The files a site's manifest names (its image, audio, video cells): what `data check` reads."""
    from mmfed.data.manifest import FILE_MODALITIES, MANIFEST_NAME

    path = site_dir / MANIFEST_NAME
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = csv.reader(fh)
        header = [h.strip() for h in next(rows, [])]
        columns = [i for i, name in enumerate(header) if name in FILE_MODALITIES]
        return [site_dir / row[i].strip() for row in rows for i in columns if i < len(row) and row[i].strip()]


def refuse_cache_dir(cache_dir: Path | str | None) -> None:
    """The cache folder scenarios and features are written to, given or the default one."""
    from mmfed.data.cache import default_cache_dir

    option = "--cache-dir" if cache_dir else "$MMFED_CACHE_DIR" if os.environ.get("MMFED_CACHE_DIR") else None
    if option:
        refuse_protected(
            option, cache_dir or default_cache_dir(), folder=True, instead="choose another cache folder"
        )

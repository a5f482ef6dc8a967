"""A manifest's file cells, checked before any training: inside the site directory, a regular readable
file, of the kind its column says (by content: a PNG named .jpg is a PNG), and decoded in full within the
site's limits (mmfed.data.limits: its site.toml [data]) exactly as training will decode it. What passes
here decodes when training reads it; what does not is reported with its row, before anything is trained."""

from __future__ import annotations

import re
from pathlib import Path

from mmfed.data import file_identity
from mmfed.data.decoding import FileProblem, check_size, open_image, to_channels, verify_audio, verify_video
from mmfed.data.limits import DataLimits, site_limits

# words Excel and pandas write for an empty or broken cell (NaN, #N/A, None, ...): never a real value
EMPTY_LIKE = frozenset(
    "nan -nan #n/a n/a #na na <na> null none nil -1.#ind 1.#ind -1.#qnan 1.#qnan "
    "#value! #ref! #div/0! #name? #num! #null! #getting_data".split()
) | {"#n/a n/a"}
# what each file was found to be, per process: (path, its identity, modality and limits) -> problem or None
_VERIFIED: dict[tuple, str | None] = {}


def is_empty_like(cell: str) -> bool:
    """'nan', '#N/A', 'None', ...: what an export writes where a cell was empty (or its formula broke)."""
    return cell.strip().lower() in EMPTY_LIKE


def empty_like(what: str, fix: str) -> str:
    return f"{what} is what Excel or pandas writes for an empty cell; {fix}"


def check_file(site_dir: Path, cell: str, modality: str) -> tuple[Path | None, str | None]:
    """Resolve a path cell and decode the file; return (path, None) or (None, problem)."""
    if is_empty_like(cell):
        return None, empty_like(repr(cell), f"leave it empty if the record has no {modality}, or name a file")
    if re.match(r"[A-Za-z]:[\\/]|\\\\", cell):
        return None, f"path {cell!r} is an absolute Windows path; give it relative to the site directory"
    rel = Path(cell)
    if rel.is_absolute():
        return None, f"path {cell!r} is absolute; give it relative to the site directory"
    if "\0" in cell or len(cell.encode()) > 4000 or any(len(p.encode()) > 255 for p in rel.parts):
        return None, f"path {cell!r} cannot name a file (a NUL, or a name too long); name the file itself"
    if "\\" in cell and not (Path(site_dir) / rel).exists():  # written on Windows: folders split by \\
        rel = Path(cell.replace("\\", "/"))
    try:
        path = (site_dir / rel).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return None, f"path {cell!r} is a symbolic link that loops (points back at itself); replace it"
    if not path.is_relative_to(Path(site_dir).resolve()):
        return None, f"path {cell!r} points outside the site directory; move the file inside it"
    problem = _where_problem(site_dir, cell, rel, path)
    if problem:
        return None, problem
    problem = _content_problem(path, modality, site_limits(site_dir))
    return (None, f"file {cell!r} {problem}") if problem else (path, None)


def _where_problem(site_dir: Path, cell: str, rel: Path, path: Path) -> str | None:
    if not path.exists():
        if (Path(site_dir) / rel).is_symlink():
            return f"file {cell!r} is a symbolic link to a file that does not exist; copy the file itself"
        twin = _case_twin(Path(site_dir), path.relative_to(Path(site_dir).resolve()))
        if twin:
            return f"file {cell!r} not found in {site_dir}, but {twin!r} is (letter case matters here)"
        return f"file {cell!r} not found in {site_dir}; was the folder copied completely?"
    if path.is_dir():
        return f"{cell!r} is not a file but a directory; name the file itself"
    if not path.is_file():
        return f"{cell!r} is not a file (a device, pipe or socket); copy the file itself"
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"file {cell!r} cannot be read ({exc.strerror or exc}); check its permissions"
    return None


def _case_twin(site_dir: Path, rel: Path) -> str | None:
    """The file `rel` names when letter case is ignored (as Windows does), if exactly one such exists."""
    here = site_dir
    for part in rel.parts:
        try:
            matches = [p for p in here.iterdir() if p.name.lower() == part.lower()]
        except OSError:
            return None
        if len(matches) != 1:
            return None
        here = matches[0]
    return here.relative_to(site_dir).as_posix() if here.is_file() else None


def _content_problem(path: Path, modality: str, limits: DataLimits) -> str | None:
    """The file decoded in full, once per process while it is unchanged (and, at a site with a file
    identity cache, once while it is unchanged at all: only passes are remembered there)."""
    known = file_identity.active()
    ident = file_identity.identity(path)  # before reading: a write during the read changes it
    fact = f"decoded:{modality}:{':'.join(repr(v) for v in limits.key())}"
    key = (str(path), *(ident or ()), fact)
    if key in _VERIFIED:
        return _VERIFIED[key]
    if known is not None and known.get(path, fact, ident):
        return None
    try:
        _verify(path, modality, limits)
        problem = None
    except FileProblem as exc:
        problem = exc.problem
    if ident is not None:
        _VERIFIED[key] = problem
    if known is not None and problem is None:
        known.put(path, fact, True, ident)
    return problem


def _verify(path: Path, modality: str, limits: DataLimits) -> None:
    if modality == "image":
        to_channels(open_image(path, limits), 3, path)  # as training converts it
    elif modality == "audio":
        verify_audio(path, limits)
    elif modality == "video":
        verify_video(path, limits)
    else:
        check_size(path, limits)

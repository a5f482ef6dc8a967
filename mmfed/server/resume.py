"""Whether a run directory may be continued, and from where: all of it checked before anything is
written; whatever does not add up is refused, saying what to do, never guessed at.

What a run directory promises (mmfed.server.rundir): config.json is written before the first round; a
round's checkpoint is written once the round is aggregated, and `checkpoints/latest.json` (the commit)
only once the round's rows are all in metrics.jsonl. So a resumed run continues after the round that
latest.json names: it drops the rows a killed round left behind (and a last line a killed write cut in
half), and trains that round again — for a run without DP, bit for bit as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmfed.errors import MMFedError
from mmfed.federation.config import RESUMABLE_SETTINGS, FederationConfig
from mmfed.files import is_temporary
from mmfed.runs import claim_run_dir

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
NEW_RUN = "start a new --run-dir"


def round_file(server_round: int) -> str:
    return f"round_{server_round:04d}.safetensors"


@dataclass
class Resume:
    """Where a resumed run continues from."""

    done: int = 0  # the last complete round
    weights: list[np.ndarray] | None = None  # its global model
    rows: list[dict[str, Any]] | None = None  # metrics.jsonl as the run continues it; None: as it is
    leftovers: list[Path] = field(default_factory=list)  # temporary files of writes a kill cut off
    note: str = ""  # what was recovered (recorded in config.json)


# -- the directory and its config -----------------------------------------------------------------------
def _holds_a_run(path: Path) -> bool:
    """Anything in `path` but empty folders and the temporary files of killed writes."""
    return path.is_dir() and any(p.is_file() and not is_temporary(p) for p in path.rglob("*"))


def existing_run(path: Path, cfg: FederationConfig) -> dict[str, Any] | None:
    """The saved config of the run in `path` that `cfg` continues (cfg.resume), or None: a new run
    (refused if `path` holds anything). Reads only."""
    if path.exists() and not path.is_dir():
        raise MMFedError(f"{path}: a file, not a run directory; choose another --run-dir (nothing changed)")
    holds = _holds_a_run(path)
    if not cfg.resume:
        if holds:
            claim_run_dir(path, resume=False, resumable=True)  # refuses, saying how to resume it
        return None
    if not holds:
        what = "holds no run" if path.exists() else "does not exist"
        raise MMFedError(
            f"{path}: no run to resume (the directory {what}); to start a new run there, leave out --resume"
        )
    saved = read_config(path)
    if saved["identity"] != cfg.identity_hash():
        theirs = saved["federation"]
        differ = [
            k
            for k, v in cfg.to_run_config().items()
            if k.replace("-", "_") not in RESUMABLE_SETTINGS and theirs.get(k) != v
        ]
        raise MMFedError(
            f"{path}: cannot resume: the run was made with other settings "
            f"({', '.join(differ) or 'unknown'}); resume with the same settings or {NEW_RUN}"
        )
    return saved


def read_config(path: Path) -> dict[str, Any]:
    """config.json of the run in `path`, refused when missing, unreadable or edited."""
    target = path / CONFIG
    restore = f"restore it from a backup, or {NEW_RUN}"
    if not target.is_file():
        raise MMFedError(
            f"{target}: missing, so the settings the run was made with cannot be checked; {restore}"
        )
    try:
        saved = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "not valid JSON"
        raise MMFedError(f"{target}: unreadable ({reason}); {restore}") from None
    federation = saved.get("federation") if isinstance(saved, dict) else None
    if not isinstance(federation, dict) or not isinstance(saved.get("identity"), str):
        raise MMFedError(f"{target}: not the config of a run (no federation settings or identity); {restore}")
    try:
        recorded = FederationConfig.from_mapping(federation, where=str(target)).identity_hash()
    except MMFedError as exc:
        raise MMFedError(f"{target}: its settings are not valid ({exc}); {restore}") from None
    if recorded != saved["identity"]:
        raise MMFedError(
            f"{target}: edited since the run started (its settings no longer match the identity recorded "
            f"with them); {restore}"
        )
    return saved


# -- metrics.jsonl --------------------------------------------------------------------------------------
def read_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The rows of `path` (a metrics.jsonl), and whether it must be rewritten before rows are appended: its
    last line was cut by a killed write (that line is no row), or lacks its newline. Any other unreadable
    line is refused."""
    if not path.exists():
        return [], False
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines):  # the last line, without its newline: a write cut off
                continue
            raise MMFedError(
                f"{path}: line {number} is not a metrics row; restore the file from a backup, or delete that "
                "line to resume without it"
            ) from None
        rows.append(row)
    return rows, bool(data) and not data.endswith(b"\n")


def row_round(row: dict[str, Any]) -> int:
    value = row.get("round", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _span(rounds: list[int]) -> str:
    return str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"


def _check_rows(path: Path, rows: list[dict[str, Any]], done: int) -> None:
    """Every complete round has its rows; only the round after the last complete one may have been cut."""
    logged = {row_round(r) for r in rows}
    metrics = path / METRICS
    missing = [n for n in range(1, done + 1) if n not in logged]
    if missing:
        raise MMFedError(
            f"{metrics}: no rows of round(s) {_span(missing)}, which {CHECKPOINTS}/{LATEST} records as "
            f"complete; restore {METRICS} from a backup, or {NEW_RUN} (with --initial-model "
            f"{path / CHECKPOINTS / round_file(done)} to start from this run's model)"
        )
    ahead = sorted(n for n in logged if n > done + 1)
    if ahead:
        raise MMFedError(
            f"{metrics}: rows of round(s) {_span(ahead)}, but the last complete round is {done} (their "
            f"checkpoints are missing); restore {CHECKPOINTS}/ from a backup, or {NEW_RUN} (if you pointed "
            f"{LATEST} at an earlier round on purpose, delete the rows after round {done + 1} too)"
        )


# -- checkpoints ----------------------------------------------------------------------------------------
def _numbered_rounds(checkpoints: Path) -> list[int]:
    found = (re.fullmatch(r"round_(\d{4,})\.safetensors", p.name) for p in checkpoints.glob("round_*"))
    return sorted(int(m.group(1)) for m in found if m)


def last_complete_round(checkpoints: Path, rows: list[dict[str, Any]]) -> tuple[int, str]:
    """The round latest.json names; without latest.json, the last round whose checkpoint and rows are
    both there (its `global` row, or a later round's rows, show its rows are complete). And a note of
    what was recovered."""
    latest = checkpoints / LATEST
    if latest.exists():
        try:
            data = json.loads(latest.read_text(encoding="utf-8"))
            number = data["round"]
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(number)
            if data.get("file", round_file(number)) != round_file(number):
                raise ValueError(data.get("file"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise MMFedError(
                f"{latest}: unreadable; it names the last complete round: restore it, or delete it to let "
                f"the resume find that round from the checkpoints and {METRICS}"
            ) from None
        return number, ""
    top = max((row_round(r) for r in rows), default=0)
    evaluated = {row_round(r) for r in rows if r.get("kind") == "global"}
    for number in reversed(_numbered_rounds(checkpoints)):
        if number in evaluated or top > number:
            return number, f"{LATEST} was missing: continued after round {number}, the last one complete"
    return 0, ""


def load_round(checkpoints: Path, number: int, keys: list[str], like: list[np.ndarray]) -> list[np.ndarray]:
    """Round `number`'s global model, refused unless it is a checkpoint of this run's model (`keys` and
    the shapes and dtypes of `like`)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = checkpoints / round_file(number)
    earlier = [n for n in _numbered_rounds(checkpoints) if n < number]
    todo = (
        f'restore it from a backup, or write {checkpoints / LATEST} as {{"round": {earlier[-1]}, "file": '
        f'"{round_file(earlier[-1])}"}} to train the rounds after {earlier[-1]} again'
        if earlier
        else f"restore it from a backup, or {NEW_RUN}"
    )
    if not path.is_file():
        raise MMFedError(f"{path}: missing, but {LATEST} names it as the last complete round; {todo}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MMFedError(f"{path}: not a readable checkpoint ({str(exc)[:80]}); {todo}") from None
    unknown, absent = sorted(set(tensors) - set(keys)), [k for k in keys if k not in tensors]
    if unknown or absent:
        names = ", ".join([*absent[:2], *unknown[:2]])
        raise MMFedError(f"{path}: a checkpoint of another model (tensors {names} differ); {todo}")
    for key, ours in zip(keys, like, strict=True):
        theirs = tensors[key]
        if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
            raise MMFedError(
                f"{path}: a checkpoint of another model ({key} is {theirs.dtype}{list(theirs.shape)}, this "
                f"run's model has {ours.dtype}{list(ours.shape)}); {todo}"
            )
    return [tensors[k] for k in keys]


def plan_resume(path: Path, keys: list[str], like: list[np.ndarray]) -> Resume:
    """Where the run in `path` continues from, every part checked; reads only."""
    checkpoints = path / CHECKPOINTS
    rows, rewrite = read_metrics(path / METRICS)
    done, note = last_complete_round(checkpoints, rows)
    weights = load_round(checkpoints, done, keys, like) if done else None
    _check_rows(path, rows, done)
    keep = [r for r in rows if row_round(r) <= done]
    leftovers = [p for folder in (path, checkpoints) if folder.is_dir() for p in folder.iterdir()]
    return Resume(
        done,
        weights,
        keep if rewrite or len(keep) != len(rows) else None,
        [p for p in leftovers if is_temporary(p) and p.is_file()],
        note,
    )

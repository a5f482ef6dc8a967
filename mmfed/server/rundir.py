"""A federated run's directory: config.json, metrics.jsonl, summary.json, checkpoints/, plots.

Checkpoints are written every round (safetensors + JSON, atomically); `checkpoints/latest.json` names the
last complete round and is written last, once the round's rows are all in metrics.jsonl, so a restarted
server with `resume` continues from there (what it checks first, and refuses: mmfed.server.resume). A
failed write (a full disk) leaves every file as it was and raises mmfed.files.WriteError.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmfed.checkpoint import save_arrays
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.files import append, write_atomic
from mmfed.server.resume import (
    CHECKPOINTS,
    CONFIG,
    LATEST,
    METRICS,
    Resume,
    existing_run,
    plan_resume,
    read_metrics,
    round_file,
)

ANCHORS = "anchors.jsonl"
log = logging.getLogger("mmfed.federation")

__all__ = ["ANCHORS", "LATEST", "RunDir", "held", "read_anchors"]


def read_anchors(path: Path) -> dict[str, dict[str, Any]]:
    """The last anchor row per site in an anchors file (JSON lines; a cut last line is skipped)."""
    last: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                last[str(row["site"])] = row
            except (ValueError, KeyError, TypeError):
                continue
    return last


@contextlib.contextmanager
def held(path: Path, create: bool = True) -> Iterator[None]:
    """One run at a time in a run directory: an exclusive lock on the directory itself for the block,
    refused at once when another process holds it. `create`: make the directory first (a new run);
    without, a directory that is not there is not locked (the checks refuse it, or a new run makes it)."""
    path = Path(path)
    if create and not path.exists():
        path.mkdir(parents=True)
    if not path.is_dir():
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MMFedError(
                f"{path}: another mmfed run is using this run directory now; wait for it to end, or choose "
                "another --run-dir (nothing was changed)"
            ) from None
        except OSError:
            pass  # a file system without locks (some network ones): run unguarded, as before
        yield
    finally:
        os.close(fd)  # and the lock with it


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class RunDir:
    def __init__(self, path: str | Path, cfg: FederationConfig, keys: list[str]):
        """Open a run directory: new (or empty), or, with cfg.resume, an earlier run of the same settings
        (checked: mmfed.server.resume.existing_run). Writes nothing (write_config creates it)."""
        self.path = Path(path)
        self.run_id = ""  # set by write_config
        self.keys = keys  # state_dict names, so checkpoints are readable without mmfed
        self.checkpoints = self.path / CHECKPOINTS
        self.saved = existing_run(self.path, cfg)  # the earlier run's config.json, or None
        self._pending: int | None = None  # a round whose checkpoint is written, but not yet committed

    @property
    def existing(self) -> bool:
        return self.saved is not None

    def plan_resume(self, like: list[np.ndarray]) -> Resume:
        """Where the earlier run continues from (`like`: this run's initial weights); reads only."""
        return plan_resume(self.path, self.keys, like)

    def start_resume(self, plan: Resume) -> None:
        """Put the directory in the state `plan` continues from: the rows of the round a crash cut off
        dropped, and the temporary files of killed writes removed."""
        if plan.rows is not None:
            write_atomic(self.path / METRICS, "".join(json.dumps(r, default=float) + "\n" for r in plan.rows))
        for leftover in plan.leftovers:
            leftover.unlink(missing_ok=True)
        if plan.note:
            log.warning("%s: %s", self.path, plan.note)

    def write_config(self, cfg: FederationConfig, extra: dict[str, Any]) -> None:
        target = self.path / CONFIG
        if self.saved is not None:  # resumed: keep the original, record the resumption
            data = dict(self.saved)
            data.setdefault("resumed", []).append({"rounds": cfg.rounds, **extra.get("resume_info", {})})
        else:
            data = {
                "federation": cfg.to_run_config(),
                "identity": cfg.identity_hash(),
                "run_id": uuid.uuid4().hex,  # what the sites' privacy ledgers name this run by
                **extra,
            }
        _write_json(target, data)  # first: a directory with checkpoints always says what made them
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.saved = data
        self.run_id = str(data.get("run_id", ""))

    # -- checkpoints -------------------------------------------------------------------------------
    def last_round(self) -> int:
        """The last committed round (0: none)."""
        latest = self.checkpoints / LATEST
        return json.loads(latest.read_text())["round"] if latest.exists() else 0

    def save_round(self, server_round: int, weights: list[np.ndarray], metadata: dict[str, Any]) -> Path:
        """The round's checkpoint; committed (latest.json) once its `global` row is logged, when the next
        round is saved, or by commit() at the end of the run."""
        self.commit()  # an earlier round still pending is complete: the run went on past it
        path = self.checkpoints / round_file(server_round)
        save_arrays(path, dict(zip(self.keys, weights, strict=True)), metadata)
        self._pending = server_round
        return path

    def commit(self) -> None:
        """latest.json names the pending round: the one write that makes a round complete."""
        if self._pending is not None:
            number, self._pending = self._pending, None
            _write_json(self.checkpoints / LATEST, {"round": number, "file": round_file(number)})

    # -- metrics -----------------------------------------------------------------------------------
    def log(self, rows: list[dict[str, Any]]) -> None:
        """Append rows; a round's `global` row is its last, so it commits the round's checkpoint."""
        append(self.path / METRICS, "".join(json.dumps(row, default=float) + "\n" for row in rows))
        if any(r.get("kind") == "global" and r.get("round") == self._pending for r in rows):
            self.commit()

    def log_anchors(self, rows: list[dict[str, Any]], also: str = "") -> None:
        """Each site's ledger head as it released a round: the anchor outside the site (mmfed audit
        --anchors checks the sites' ledgers still hold every one). `also`: the server's anchor file
        shared by all its runs (run config `anchor-file`)."""
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        for path in (self.path / ANCHORS, *([Path(also)] if also else [])):
            append(path, text, durable=True)

    def anchors(self, also: str = "") -> dict[str, dict[str, Any]]:
        """The last head recorded per site: from `also` (all the server's runs) when given, else from this
        run directory (a resumed run continues from them)."""
        return read_anchors(Path(also) if also else self.path / ANCHORS)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path / METRICS)[0]

    def summary(self) -> dict[str, Any]:
        """summary.json as the last run wrote it ({} if none or unreadable: it is rewritten at the end)."""
        try:
            data = json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / "summary.json", summary)

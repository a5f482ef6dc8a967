"""A federated run's directory: config.json, metrics.jsonl, summary.json, checkpoints/, plots.

Checkpoints are written every round (safetensors + JSON, atomically) and `checkpoints/latest.json` names
the last complete round, so a restarted server with `resume` continues from there.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from mmfed.checkpoint import save_arrays
from mmfed.errors import MMFedError
from mmfed.federation.config import RESUMABLE_SETTINGS, FederationConfig
from mmfed.files import write_atomic
from mmfed.runs import claim_run_dir

LATEST = "latest.json"
ANCHORS = "anchors.jsonl"


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


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class RunDir:
    def __init__(self, path: str | Path, cfg: FederationConfig, keys: list[str]):
        """Open a run directory: new (or empty), or an earlier run of the same config when cfg.resume."""
        self.path = Path(path)
        self.run_id = ""  # set by write_config
        self.keys = keys  # state_dict names, so checkpoints are readable without mmfed
        self.checkpoints = self.path / "checkpoints"
        existing = claim_run_dir(self.path, resume=cfg.resume, resumable=True)
        if existing:
            saved = (
                json.loads((self.path / "config.json").read_text())
                if (self.path / "config.json").exists()
                else {}
            )
            if saved.get("identity") != cfg.identity_hash():
                theirs = saved.get("federation", {})
                differ = [
                    k
                    for k, v in cfg.to_run_config().items()
                    if k.replace("-", "_") not in RESUMABLE_SETTINGS and theirs.get(k) != v
                ]
                raise MMFedError(
                    f"{self.path}: cannot resume: the run was made with other settings "
                    f"({', '.join(differ) or 'unknown'}); "
                    "resume with the same settings or start a new --run-dir"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def write_config(self, cfg: FederationConfig, extra: dict[str, Any]) -> None:
        target = self.path / "config.json"
        if target.exists():  # resumed: keep the original, record the resumption
            data = json.loads(target.read_text())
            data.setdefault("resumed", []).append({"rounds": cfg.rounds, **extra.get("resume_info", {})})
        else:
            data = {
                "federation": cfg.to_run_config(),
                "identity": cfg.identity_hash(),
                "run_id": uuid.uuid4().hex,  # what the sites' privacy ledgers name this run by
                **extra,
            }
        _write_json(target, data)
        self.run_id = str(data.get("run_id", ""))

    # -- checkpoints -------------------------------------------------------------------------------
    def last_round(self) -> int:
        latest = self.checkpoints / LATEST
        return json.loads(latest.read_text())["round"] if latest.exists() else 0

    def load_round(self, server_round: int) -> list[np.ndarray]:
        path = self.checkpoints / f"round_{server_round:04d}.safetensors"
        tensors = load_file(str(path))
        if list(tensors) != self.keys and sorted(tensors) != sorted(self.keys):
            raise MMFedError(f"{path}: checkpoint tensors do not match this model")
        return [tensors[k] for k in self.keys]

    def save_round(self, server_round: int, weights: list[np.ndarray], metadata: dict[str, Any]) -> Path:
        path = self.checkpoints / f"round_{server_round:04d}.safetensors"
        save_arrays(path, dict(zip(self.keys, weights, strict=True)), metadata)
        _write_json(
            self.checkpoints / LATEST, {"round": server_round, "file": path.name}
        )  # last: commits the round
        return path

    # -- metrics -----------------------------------------------------------------------------------
    def log(self, rows: list[dict[str, Any]]) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=float) + "\n")

    def log_anchors(self, rows: list[dict[str, Any]], also: str = "") -> None:
        """Each site's ledger head as it released a round: the anchor outside the site (mmfed audit
        --anchors checks the sites' ledgers still hold every one). `also`: the server's anchor file
        shared by all its runs (run config `anchor-file`)."""
        for path in (self.path / ANCHORS, *([Path(also)] if also else [])):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                for row in rows:
                    fh.write(json.dumps(row, sort_keys=True) + "\n")

    def anchors(self, also: str = "") -> dict[str, dict[str, Any]]:
        """The last head recorded per site: from `also` (all the server's runs) when given, else from this
        run directory (a resumed run continues from them)."""
        return read_anchors(Path(also) if also else self.path / ANCHORS)

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if path.exists()
            else []
        )

    def drop_metrics_after(self, server_round: int) -> None:
        """A round that crashed half-way may have logged rows; its replay will log them again."""
        rows = [r for r in self.metrics() if r.get("round", 0) <= server_round]
        path = self.path / "metrics.jsonl"
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / "summary.json", summary)

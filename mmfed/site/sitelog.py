"""The site's own log (`state/site-log.jsonl` in its privacy home, mode 0600): what the site keeps and the
server never receives — training loss and accuracy under DP, exact counts, and the full text of refusals
and errors (which may name files, record ids and the site's numbers). One JSON object per line."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = "state/site-log.jsonl"


def record(home: Path, event: str, **fields: Any) -> None:
    path = Path(home) / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "event": event, **fields}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")


def entries(home: Path) -> list[dict[str, Any]]:
    path = Path(home) / LOG
    if not path.exists():
        return []
    out = []
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            continue  # a line cut by a killed process: the log is informative, not a ledger
    return out


def events(home: Path, run_id: str, server_round: int) -> list[dict[str, Any]]:
    """What the site logged for round `server_round` of run `run_id`, oldest first."""
    return [e for e in entries(home) if e.get("run_id") == run_id and e.get("round") == server_round]

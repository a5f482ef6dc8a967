"""What became of a site's part in a round, as the site tells the server: accepted, refused or failed.

The site encodes, the server decodes, with this module alone, so no wording of a message can change what
the server records. Two carriers:

- a plain run's FitRes/EvaluateRes metrics: `outcome` (the status), `code`, `reason` (the public sentence)
  and `site`; metrics without `outcome` are an accepted result's own numbers;
- the exception text, all that SecAgg+ lets through when a site drops out of a round: the public sentence,
  then a marker `[mmfed-outcome:TOKEN]` where TOKEN is the base64url of a versioned JSON object. Base64
  because Flower passes the text on inside a repr (`Error(code=.., reason='..')`), which would escape the
  quotes and backslashes of raw JSON. A text without a valid marker decodes as failed, site "unknown",
  code None, with the text's last line as its message.

The public sentence names the site, the status, the code and the code's generic sentence (client.py
FAILURES, mmfed.privacy.budget REFUSALS): never paths, record data or the site's numbers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, Literal

Status = Literal["accepted", "refused", "failed"]
STATUSES: tuple[str, ...] = ("accepted", "refused", "failed")
UNKNOWN = "unknown"
MARKER = "mmfed-outcome:"
VERSION = 1
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class SiteOutcome:
    site: str
    status: Status
    code: str | None = None
    message: str = ""  # the public sentence: what the server logs as the reason

    @classmethod
    def report(cls, site: str, status: Status, code: str, sentence: str) -> SiteOutcome:
        """A site's refusal or failure with its code and the code's generic sentence."""
        return cls(site, status, code, f"site {site}: {status} ({code}): {sentence}")

    # -- metrics (plain runs) ------------------------------------------------------------------------
    def to_metrics(self) -> dict[str, str]:
        if self.status == "accepted":
            return {"site": self.site}
        out = {"site": self.site, "outcome": self.status, "reason": self.message}
        return {**out, "code": self.code} if self.code is not None else out

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], default_site: str) -> SiteOutcome:
        site = str(metrics.get("site", default_site))
        status = metrics.get("outcome", "accepted")
        code = metrics.get("code")
        code = None if code is None else str(code)
        if status == "accepted":
            return cls(site, "accepted")
        if status not in STATUSES:
            return cls(site, "failed", code, f"site {site}: reported an unknown outcome {str(status)[:40]!r}")
        return cls(site, status, code, str(metrics.get("reason", "")))

    # -- exception text (SecAgg+) --------------------------------------------------------------------
    def to_text(self) -> str:
        payload = {"v": VERSION, "site": self.site, "status": self.status, "code": self.code,
                   "message": self.message}  # fmt: skip
        raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        token = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        return f"{self.message} [{MARKER}{token}]"

    @classmethod
    def from_text(cls, text: str) -> SiteOutcome:
        """The outcome in a text from to_text, wherever it sits inside (wrapped, quoted, repr'd); else an
        unknown site's failure."""
        start = text.rfind(MARKER)
        if start >= 0:
            token = "".join(takewhile(_TOKEN_CHARS.__contains__, text[start + len(MARKER) :]))
            decoded = _decode_token(token)
            if decoded is not None:
                return decoded
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return cls(UNKNOWN, "failed", None, lines[-1][:_MAX_MESSAGE] if lines else "")


def _decode_token(token: str) -> SiteOutcome | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:  # bad base64 (binascii.Error), bad UTF-8 or bad JSON
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION or data.get("status") not in STATUSES:
        return None
    site, code, message = data.get("site"), data.get("code"), data.get("message")
    if not isinstance(site, str) or not isinstance(message, str) or not isinstance(code, str | None):
        return None
    return SiteOutcome(site, data["status"], code, message)

"""Fingerprint of the data a site trains on: what its privacy budget is keyed by.

SHA-256 over the sorted training records — id, label, split, text, and the SHA-256 of every file they
point to (not the path: moving the site directory keeps its budget; editing a file starts a new one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from mmfed.data.cache import file_digest
from mmfed.data.manifest import Sample


def data_fingerprint(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.id):
        record = {
            "id": s.id,
            "label": s.label,
            "split": s.split,
            "text": s.text,
            **{m: file_digest(getattr(s, m)) for m in ("image", "audio", "video") if getattr(s, m)},
        }
        if s.tabular:  # only when present, so fingerprints of data without it stay as they were
            record["tabular"] = s.tabular
        h.update(json.dumps(record, sort_keys=True).encode() + b"\n")
    return "sha256:" + h.hexdigest()

"""Fingerprint of the data a site trains on: which version of its data a ledger entry was made on.

SHA-256 over the sorted training records — id, label, split, text, and the SHA-256 of every file they
point to (not the path: moving the site directory keeps it). The ledger records it *keyed* with a
secret of the site (`keyed`): the server, which knows every record but one, could otherwise compute the
plain hash for both candidate datasets and compare it with a ledger entry, or with its hash in the
ledger head every release carries.

Each file is hashed once while it is unchanged: with a file identity cache (given, or the active one of
mmfed.data.file_identity) a file whose identity — path, size, mtime, ctime, inode — is as last time keeps
its digest; only new or changed files are read again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from mmfed.data import file_identity
from mmfed.data.cache import file_digest
from mmfed.data.manifest import Sample


def data_fingerprint(samples: Sequence[Sample], cache: file_identity.FileIdentityCache | None = None) -> str:
    cache = cache if cache is not None else file_identity.active()

    def digest(path) -> str:
        return file_digest(path) if cache is None else cache.digest(path, file_digest)

    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.id):
        record = {
            "id": s.id,
            "label": s.label,
            "split": s.split,
            "text": s.text,
            **{m: digest(getattr(s, m)) for m in ("image", "audio", "video") if getattr(s, m)},
        }
        if s.tabular:  # only when present, so fingerprints of data without it stay as they were
            record["tabular"] = s.tabular
        h.update(json.dumps(record, sort_keys=True).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def keyed(fingerprint: str, secret: bytes) -> str:
    """The fingerprint as the ledger records it: HMAC-SHA256 under the site's secret."""
    return "hmac-sha256:" + hmac.new(secret, fingerprint.encode(), hashlib.sha256).hexdigest()

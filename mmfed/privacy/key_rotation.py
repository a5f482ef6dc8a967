"""Replacing a site's ledger signing key without breaking its ledger: a rotation entry announces the new
public key. Normally the old key signs it, so the chain of trust runs unbroken from the key the privacy
officer was given; when the old key is lost, the new key signs it and marks the loss, and every later
audit reports that entry. The retired public key stays in keys/retired/ for auditors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.privacy import ledger, site_keys

RETIRED = "keys/retired"


def rotate_key(home: Path, lost: bool = False) -> tuple[str, str]:
    """Rotate `home`'s signing key; returns (old key id, new key id). `lost`: the private key is gone
    (a recorded loss); otherwise it must be there and signs the announcement."""
    from mmfed.privacy.budget import BUDGET, LEDGER

    home = Path(home)
    private_path, public_path = home / site_keys.PRIVATE_KEY, home / site_keys.PUBLIC_KEY
    ledger_path = home / LEDGER
    with ledger.locked(ledger_path):
        if lost:
            if private_path.exists():
                raise MMFedError(
                    f"{private_path} exists: rotate without --lost (the old key signs the rotation)"
                )
            if not public_path.exists():
                raise MMFedError(
                    f"{public_path} is missing too: the site's old public key is needed to record it"
                )
            old_public = site_keys.load_public_key(public_path)
            old = None
        else:
            old = site_keys.load_private_key(home)
            old_public = old.public_key()
        new = Ed25519PrivateKey.generate()
        new_pem = new.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fields = {
            "kind": ledger.ROTATION,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "previous_key_id": site_keys.key_id(old_public),
            "new_key_id": site_keys.key_id(new.public_key()),
            "new_public_key": new_pem.decode(),
        }
        if lost:
            fields["lost_previous_key"] = True
        entry = ledger.append(ledger_path, new if lost else old, fields)
        # the site's state remembers the rotation as its last entry (its high-water mark)
        state_path = home / BUDGET
        if state_path.exists():
            state = json.loads(state_path.read_text())
            state["ledger_head"] = {
                "index": entry["index"],
                "hash": ledger.line_hash(ledger.canonical(entry)),
            }
            write_atomic(state_path, json.dumps(state, indent=1))
        retired = home / RETIRED
        retired.mkdir(parents=True, exist_ok=True)
        old_id = site_keys.key_id(old_public)
        public_path.replace(retired / f"{old_id.split(':')[1]}.pub.pem")
        if private_path.exists():
            private_path.unlink()  # retired: nothing may sign with it again
        site_keys.write_key(home, new)
    return old_id, site_keys.key_id(new.public_key())


def first_public_key(home: Path, lines: list[bytes], current):
    """The public key, among the site's current and retired ones, that signed its ledger's entry 0: where
    a verification after rotations starts (each rotation entry then names the next key)."""
    import orjson

    if not lines:
        return current
    try:
        wanted = orjson.loads(lines[0]).get("key_id")
    except (orjson.JSONDecodeError, AttributeError):
        return current
    for candidate in sorted((Path(home) / RETIRED).glob("*.pub.pem")):
        key = site_keys.load_public_key(candidate)
        if site_keys.key_id(key) == wanted:
            return key
    return current

"""The site's privacy ledger: append-only JSONL, one entry per released update, hash-chained and signed.

Entry `i` carries `index` (0, 1, ...), `prev_hash` (SHA-256 hex of line `i-1` exactly as written, or 64
zeros for the first) and `signature` (Ed25519, base64, over the entry's canonical JSON without the
`signature` key: keys sorted, separators `,` and `:`, ASCII). An edited entry fails its signature and
breaks the next entry's `prev_hash`; a deleted, inserted or reordered entry breaks `index`/`prev_hash`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mmfed import files
from mmfed.errors import MMFedError
from mmfed.privacy.entry_signatures import canonical, signature_ok, signatures_valid
from mmfed.privacy.site_keys import key_id

GENESIS = "0" * 64
# what auditors' tools read; σ, sample rate and steps are the round's, the two ε are cumulative
REQUIRED = {
    "index": int,
    "run_id": str,
    "round": int,
    "time": str,
    "data_fingerprint": str,
    "noise_multiplier": float,
    "sample_rate": float,
    "steps": int,
    "max_grad_norm": float,
    "delta": float,
    "epsilon_prv": float,
    "epsilon_rdp": float,
    "key_id": str,
    "prev_hash": str,
    "signature": str,
}


# a key rotation: the new public key, announced by an entry the old key signs (or, when the old key was
# lost, signed by the new key and marked so: every later audit reports it)
ROTATION = "key-rotation"
ROTATION_REQUIRED = {"index": int, "kind": str, "time": str, "new_key_id": str, "new_public_key": str,
                     "key_id": str, "prev_hash": str, "signature": str}  # fmt: skip

REQUIRED_KEYS = set(REQUIRED)
# exact types (bool is not a number here); a float field may hold an int (JSON has one number type)
REQUIRED_TYPES = [(name, (int, float) if kind is float else (kind,)) for name, kind in REQUIRED.items()]
_fields = operator.itemgetter(*REQUIRED)
EXACT_TYPES = tuple(REQUIRED.values())


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


locked = files.locked  # one writer of a site's budget and ledger at a time, across processes


def read_lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def last_line(path: Path) -> bytes | None:
    """The file's last non-empty line, read from the end (appending stays O(1) on long ledgers)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, 1 << 16)
        while True:
            f.seek(size - block)
            lines = [x for x in f.read(block).split(b"\n") if x.strip()]
            if len(lines) > 1 or block == size:
                return lines[-1] if lines else None
            block = min(size, block * 4)


def signed_entry(
    fields: dict[str, Any], key: Ed25519PrivateKey, index: int, prev_hash: str
) -> dict[str, Any]:
    entry = {**fields, "index": index, "prev_hash": prev_hash, "key_id": key_id(key.public_key())}
    entry["signature"] = base64.b64encode(key.sign(canonical(entry))).decode()
    return entry


def append(path: Path, key: Ed25519PrivateKey, fields: dict[str, Any]) -> dict[str, Any]:
    """Sign `fields` as the next entry and append it durably (caller holds `locked(path)`)."""
    last = last_line(path)
    if last is None:
        index, prev = 0, GENESIS
    else:
        try:
            index, prev = int(json.loads(last)["index"]) + 1, line_hash(last)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            raise MMFedError(
                f"{path}: the last entry is unreadable; nothing was appended — run `mmfed audit` on this site"
            ) from None
    entry = signed_entry(fields, key, index, prev)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:  # reads see the last byte
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - 1, 0))
        # a last entry whose newline a crash cut off: end its line first, or the new entry would join it
        start = b"\n" if size and f.read(1) != b"\n" else b""
    # whole or not at all: a full disk leaves the ledger as it was (files.WriteError)
    files.append(path, start + canonical(entry) + b"\n", durable=True, kept="the ledger is as it was")
    return entry


def take_back(path: Path, entry_hash: str) -> bool:
    """Remove the last entry if it is the one hashing to `entry_hash` (caller holds `locked(path)`): an
    entry whose release failed before anything left the site. Whether it was removed."""
    data = path.read_bytes() if path.exists() else b""
    body = data.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    if not body or line_hash(body[start:]) != entry_hash:
        return False
    with open(path, "r+b") as f:  # shrinking a file needs no space
        f.truncate(start)
        os.fsync(f.fileno())
    return True


@dataclass
class Problem:
    line: int  # 1-based line in the file
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def verify(
    lines: list[bytes], public: Ed25519PublicKey, every_signature: bool = False
) -> tuple[list[dict[str, Any]], Problem | None]:
    """(parsed entries, first problem or None).

    The chain makes the last entry's signature cover every earlier line, so an intact chain needs one
    signature check (and one per key rotation); `every_signature` (or any broken link) checks each entry's
    to name the first bad one. The last line must read exactly as `canonical` writes it: no hash pins it.
    """
    entries, problem = _parse(lines)
    if problem:
        return entries, problem
    signer, problem = _signers(entries, public)
    if problem:
        return entries, problem
    problem = _chain_problem(lines, entries, signer, every_signature)
    if problem:
        return entries, problem
    if entries and lines[-1] != canonical(entries[-1]):  # the next entry's prev_hash pins every other line
        what = f"entry {entries[-1]['index']}: not written as the ledger writes it: the entry was edited"
        return entries, Problem(len(entries), what)
    if entries and not every_signature:
        # the last signature covers the chain back to the last key rotation; each rotation's, the chain
        # before it (a rotation names the key that signs what follows: unchecked, any key could)
        signed = [n for n, e in enumerate(entries, start=1) if e.get("kind") == ROTATION] + [len(entries)]
        bad = next(filter(None, (_signature_problem(signer, n, entries[n - 1]) for n in signed)), None)
        if bad:  # something is wrong: check every entry so the message names the first bad one
            return entries, verify(lines, public, every_signature=True)[1] or bad
    return entries, None


def _parse(lines: list[bytes]) -> tuple[list[dict[str, Any]], Problem | None]:
    """The entries up to the first line that is not JSON or lacks a required field (then that problem)."""
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return entries, Problem(number, f"not valid JSON ({exc}): the entry was edited or truncated")
        if not isinstance(entry, dict):
            return entries, Problem(number, "not a JSON object: the entry was edited")
        if entry.get("kind") == ROTATION:
            bad = next((n for n, k in ROTATION_REQUIRED.items() if type(entry.get(n)) is not k), None)
            if bad:
                return entries, Problem(number, f"key rotation: field {bad!r} missing or mistyped")
            entries.append(entry)
            continue
        # fast path: one C-level tuple of the field types; the precise check only when it differs
        if not REQUIRED_KEYS <= entry.keys() or (
            tuple(map(type, _fields(entry))) != EXACT_TYPES
            and not all(type(entry[name]) in kinds for name, kinds in REQUIRED_TYPES)
        ):
            bad = next(n for n, kinds in REQUIRED_TYPES if n not in entry or type(entry[n]) not in kinds)
            return entries, Problem(number, f"field {bad!r} is missing or not a {REQUIRED[bad].__name__}")
        entries.append(entry)
    return entries, None


def _signers(
    entries: list[dict[str, Any]], public: Ed25519PublicKey
) -> tuple[list[Ed25519PublicKey], Problem | None]:
    """The key each entry must be signed with: the trusted one, then each rotation's new key."""
    signer = [public] * len(entries)
    current = public
    for i, entry in enumerate(entries):
        if entry.get("kind") == ROTATION:
            try:
                announced = public_key_from_text(entry["new_public_key"])
            except MMFedError as exc:
                return signer, Problem(i + 1, f"key rotation: {exc}")
            if key_id(announced) != entry["new_key_id"]:
                return signer, Problem(i + 1, "key rotation: new_key_id is not the announced key's")
            # a normal rotation is signed by the key it retires; a recorded loss by the new key itself
            signer[i] = announced if entry.get("lost_previous_key") else current
            current = announced
        else:
            signer[i] = current
    return signer, None


def _signature_problem(
    signer: list[Ed25519PublicKey], number: int, entry: dict[str, Any], valid: list[bool] | None = None
) -> Problem | None:
    """The problem with the signature of `entry` (line `number`), or None when `signer` signed it.
    `valid`: every entry's `signature_ok`, already computed (`signatures_valid`)."""
    key = signer[number - 1]
    expected_key = _key_id(key)
    if entry["key_id"] != expected_key:
        return Problem(
            number,
            f"entry {entry['index']} is signed by key {entry['key_id']}, not the site's key {expected_key}",
        )
    if not (valid[number - 1] if valid is not None else signature_ok(entry, key)):
        return Problem(
            number,
            f"entry {entry['index']}: signature does not verify with the site's key: "
            "the entry was edited or forged",
        )
    return None


_key_ids: dict[int, tuple[Ed25519PublicKey, str]] = {}


def _key_id(key: Ed25519PublicKey) -> str:
    """key_id, once per key object (the same few keys sign every entry of a ledger)."""
    known = _key_ids.get(id(key))
    if known is None or known[0] is not key:
        if len(_key_ids) > 1024:
            _key_ids.clear()
        known = _key_ids[id(key)] = (key, key_id(key))
    return known[1]


def _chain_problem(
    lines: list[bytes],
    entries: list[dict[str, Any]],
    signer: list[Ed25519PublicKey],
    every_signature: bool,
) -> Problem | None:
    """The first broken index or prev_hash link (and, with `every_signature`, bad signature), or None."""
    valid = signatures_valid(lines, entries, signer) if every_signature else None
    previous = GENESIS
    for number, (line, entry) in enumerate(zip(lines, entries, strict=True), start=1):
        if entry["index"] != number - 1:
            later = any(e["index"] == number - 1 for e in entries[number:])
            what = (
                "reordered"
                if later
                else ("deleted" if entry["index"] > number - 1 else "inserted or duplicated")
            )
            return Problem(
                number, f"entry {entry['index']} found where entry {number - 1} belongs: an entry was {what}"
            )
        if entry["prev_hash"] != previous:
            # name the entry that changed: the one before, unless its own signature still holds
            before = (
                _signature_problem(signer, number - 1, entries[number - 2], valid) if number > 1 else None
            )
            if before:
                return before
            return Problem(
                number,
                f"entry {entry['index']}: prev_hash does not match the entry before it: "
                "an entry was edited, deleted or reordered",
            )
        if every_signature and (bad := _signature_problem(signer, number, entry, valid)):
            return bad
        previous = line_hash(line)
    return None


def public_key_from_text(pem: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):  # an edited PEM may name an unknown algorithm
        raise MMFedError("the announced public key is not PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MMFedError("the announced public key is not Ed25519")
    return key


def current_key_id(entries: list[dict[str, Any]], first: str) -> str:
    """The key that signs the next entry: `first`, or the last rotation's new key."""
    rotations = [e for e in entries if e.get("kind") == ROTATION]
    return rotations[-1]["new_key_id"] if rotations else first

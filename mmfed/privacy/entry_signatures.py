"""Checking the Ed25519 signatures of ledger entries, fast: the signed bytes are cut out of the line as
written (no second serialisation), and many entries are verified in threads (OpenSSL verifies with
Python's lock released). Each entry's verdict is the canonical check's (mmfed.privacy.ledger)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signature_ok(entry: dict[str, Any], public: Ed25519PublicKey, line: bytes | None = None) -> bool:
    """Whether `public` signed `entry` (its canonical JSON without `signature`). `line`, the entry as
    written, lets the signed bytes be cut out of it instead of re-serialised (`signed_bytes`)."""
    signature = _signature_bytes(entry)
    if signature is None:
        return False
    message = signed_bytes(line, entry) if line is not None else None
    if message is not None and _verifies(public, signature, message):
        return True
    # not cut from the line, or that did not verify: the canonical form decides, as it always did
    return _verifies(public, signature, canonical({k: v for k, v in entry.items() if k != "signature"}))


def _signature_bytes(entry: dict[str, Any]) -> bytes | None:
    """The decoded signature; None unless it is canonical base64 (spare bits set in the last character
    would be another text for the same signature)."""
    text = entry.get("signature")
    try:
        signature = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None
    return signature if base64.b64encode(signature).decode() == text else None


def _verifies(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


_SIGNATURE_MEMBER = b',"signature":"'


def signed_bytes(line: bytes, entry: dict[str, Any]) -> bytes | None:
    """The bytes `entry`'s signature covers, cut out of `line` (the entry as `canonical` writes it: the
    same JSON with the `,"signature":"…"` member) without serialising it again; None when `line` is not
    plainly that shape, and then only `canonical` is checked.

    Sound because the cut is unambiguous: with no backslash in the line every `"` delimits a string, and
    the one `"signature"` in it is the top-level key `_parse` found (it requires one), so the cut-out
    text is one whole member and the rest parses to the entry without its signature. The site's key
    signs nothing but `canonical` bytes (`signed_entry`), so a signature that verifies over the rest
    covers exactly what the entry says, and the canonical check would have passed too."""
    if b"\\" in line or line.count(b'"signature"') != 1:
        return None
    start = line.find(_SIGNATURE_MEMBER)
    text = entry.get("signature")
    if start < 0 or not isinstance(text, str):
        return None
    value = start + len(_SIGNATURE_MEMBER)
    end = value + len(text)
    if line[value:end] != text.encode() or line[end : end + 1] != b'"':
        return None
    return line[:start] + line[end + 1 :]


def signatures_valid(
    lines: list[bytes], entries: list[dict[str, Any]], signer: list[Ed25519PublicKey]
) -> list[bool]:
    """`signature_ok` of every entry (entry i with signer[i]), spread over the machine's cores: OpenSSL
    verifies with Python's lock released, so threads verify side by side."""
    jobs = [
        (signer[i], _signature_bytes(e), signed_bytes(line, e))
        for i, (line, e) in enumerate(zip(lines, entries, strict=True))
    ]
    valid = _in_parallel(jobs)
    for i, ok in enumerate(valid):
        if not ok and jobs[i][1] is not None:  # not cut from the line, or that failed: the canonical form
            valid[i] = signature_ok(entries[i], signer[i])
    return valid


_PARALLEL_FROM = 256  # fewer signatures: one thread (starting the others costs more than it saves)
_pool: Any = None


def _verify_all(jobs: list[tuple[Ed25519PublicKey, bytes | None, bytes | None]]) -> list[bool]:
    return [s is not None and m is not None and _verifies(k, s, m) for k, s, m in jobs]


def _in_parallel(jobs: list[tuple[Ed25519PublicKey, bytes | None, bytes | None]]) -> list[bool]:
    global _pool
    workers = min(
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8
    )
    if workers < 2 or len(jobs) < _PARALLEL_FROM:
        return _verify_all(jobs)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmfed-verify")
    size = -(-len(jobs) // workers)
    parts = _pool.map(_verify_all, [jobs[i : i + size] for i in range(0, len(jobs), size)])
    return [ok for part in parts for ok in part]

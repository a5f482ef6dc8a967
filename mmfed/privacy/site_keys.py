"""The site's Ed25519 signing key (cryptography): private key PEM mode 0600, public key PEM beside it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mmfed.errors import MMFedError

PRIVATE_KEY = "keys/ledger-signing.pem"
PUBLIC_KEY = "keys/ledger-signing.pub.pem"


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (SHA-256 of its raw bytes), to compare out of band."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


LEDGER_FILE = "state/ledger.jsonl"


def create_key(home: Path) -> Ed25519PrivateKey:
    """A new key under `home`; refuses to replace an existing one (its ledger would stop verifying), and
    refuses to make one while the site has a public key or a ledger: the old key was lost, and a new key
    signing on top of a ledger nobody can verify any more would let a forged history pass."""
    private_path, public_path = home / PRIVATE_KEY, home / PUBLIC_KEY
    if private_path.exists():
        raise MMFedError(f"{private_path} exists; keep it (the ledger is signed with it) — nothing changed")
    ledger = home / LEDGER_FILE
    if public_path.exists() or (ledger.exists() and ledger.stat().st_size):
        raise MMFedError(
            f"{private_path} is missing but this site already has "
            f"{'a public key ' + str(public_path) if public_path.exists() else 'a ledger ' + str(ledger)}: "
            "restore the private key from backup; a new key is never made silently (nothing changed)"
        )
    key = Ed25519PrivateKey.generate()
    write_key(home, key)
    return key


def write_key(home: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` as the site's signing key (private 0600 from the first byte, public beside it)."""
    private_path, public_path = home / PRIVATE_KEY, home / PUBLIC_KEY
    private_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(private_path.parent, 0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # created 0600 from the start, not chmod-ed afterwards: never readable by others, even briefly
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private_key(home: Path) -> Ed25519PrivateKey:
    path = home / PRIVATE_KEY
    if not path.exists():
        raise MMFedError(
            f"{path}: no ledger signing key; create the site's key with `mmfed site init --dir {home}`"
        )
    if path.is_dir():
        raise MMFedError(f"{path}: a folder, not the site's private key file; restore the key from backup")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MMFedError(f"{path}: private key is readable by others (mode {mode:o}); run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:  # encrypted: a site signs unattended, its key is protected by mode 0600
        raise MMFedError(
            f"{path}: the key is password-protected; restore the unencrypted key (mode 0600) from backup"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MMFedError(
            f"{path}: not a readable PEM private key ({type(exc).__name__}); restore it"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MMFedError(f"{path}: not an Ed25519 private key")
    _check_pair(home, key)
    return key


def _check_pair(home: Path, key: Ed25519PrivateKey) -> None:
    """The private key is the one of the site's public key (what its privacy officer and every audit verify
    its ledger with): a key swapped in by mistake would sign entries no audit accepts."""
    public_path = home / PUBLIC_KEY
    if not public_path.is_file():
        return
    public = load_public_key(public_path)
    if key_id(public) != key_id(key.public_key()):
        raise MMFedError(
            f"{home / PRIVATE_KEY} is not the private key of {public_path} ({key_id(public)}): restore the "
            "site's own key from backup; if it is lost, move this file away and record the loss with "
            f"`mmfed site rotate-key --dir {home} --lost`"
        )


def fingerprint_secret(key: Ed25519PrivateKey) -> bytes:
    """A secret for keying data fingerprints, derived from the site's private key (never leaves the site)."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hashlib.sha256(b"mmfed data fingerprint\0" + raw).digest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise MMFedError(f"{path}: public key not found") from None
    except ValueError as exc:
        raise MMFedError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise MMFedError(f"{path}: not an Ed25519 public key")
    return key

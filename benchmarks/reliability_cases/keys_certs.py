"""Keys and certificates as they arrive at a hospital: garbage, truncated, the wrong kind, password-protected,
readable by others, a CA key that does not belong to its certificate, certificate options out of range. Each
must be refused naming the file or option, and a refused `mmfed certs` leaves nothing behind."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from reliability import Case, Run, mmfed

from reliability_cases.settings import leaves_nothing
from reliability_cases.sites import site

GARBAGE = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"


def _init_site(work: Path, name: str = "site_a") -> Path:
    root = site(work, name, samples=12, modalities="image")
    done = mmfed(work, ["site", "init", "--dir", name])
    if done.code != 0:
        raise RuntimeError(f"site init failed: {done.output[-300:]}")
    return root


def _ca(work: Path) -> Path:
    """A CA and server certificate made by `mmfed certs server` in work/certs."""
    done = mmfed(work, ["certs", "server", "--out", "certs", "--host", "localhost"])
    if done.code != 0:
        raise RuntimeError(f"certs server failed: {done.output[-300:]}")
    (work / "certs" / "server.key").unlink()
    (work / "certs" / "server.pem").unlink()
    return work / "certs"


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_cert(key, *, days: int = 3650, start_days: int = 0, ca: bool = True):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=start_days)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )


# -- a site's ledger signing key ----------------------------------------------------------------------


def _site_key(kind: str, command: str = "check"):
    def setup(work: Path) -> list[str]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        root = _init_site(work)
        path = root / "keys" / "ledger-signing.pem"
        if kind == "garbage":
            path.write_bytes(GARBAGE)
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[:40])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "EC key":
            path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
        elif kind == "password":
            path.write_bytes(
                Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        elif kind == "readable":
            os.chmod(path, 0o644)
        elif kind == "folder":
            path.unlink()
            path.mkdir()
        elif kind == "other key":  # a valid key, but not the one the public key and ledger belong to
            path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_pem(Ed25519PrivateKey.generate()))
        if command == "rotate":
            return ["site", "rotate-key", "--dir", "site_a"]
        if command == "init":
            return ["site", "init", "--dir", "site_a"]
        return ["site", "check", "--dir", "site_a"]

    return setup


def _with_ledger(work: Path) -> Path:
    """A site after `site init` whose ledger holds one release (as a round would append it)."""
    from mmfed.privacy import ledger, site_keys

    root = _init_site(work)
    fields = {"run_id": "run-1", "round": 1, "data_fingerprint": "sha256:" + "ab" * 32, "epsilon_prv": 0.1}
    ledger.append(root / "state" / "ledger.jsonl", site_keys.load_private_key(root), fields)
    return root


def _public_key(kind: str):
    def setup(work: Path) -> list[str]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        _with_ledger(work)
        path = work / "site_a.pub.pem"
        if kind == "garbage":
            path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nZ2FyYmFnZQ==\n-----END PUBLIC KEY-----\n")
        elif kind == "EC key":
            path.write_bytes(
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            )
        elif kind == "private key":
            path.write_bytes((work / "site_a" / "keys" / "ledger-signing.pem").read_bytes())
        elif kind == "folder":
            path.mkdir()
        elif kind == "missing":
            pass
        return ["audit", "site_a/state/ledger.jsonl", "--public-key", "site_a.pub.pem"]

    return setup


def _site_public_key_garbage(work: Path) -> list[str]:
    root = _init_site(work)
    (root / "keys" / "ledger-signing.pub.pem").write_bytes(b"not a key\n")
    return ["audit", "site_a"]


# -- the federation's CA, for `mmfed certs server` -----------------------------------------------------


def _ca_broken(kind: str):
    def setup(work: Path) -> list[str]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        folder = _ca(work)
        key, cert = folder / "ca.key", folder / "ca.crt"
        if kind == "garbage key":
            key.write_bytes(GARBAGE)
        elif kind == "garbage cert":
            cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n")
        elif kind == "empty cert":
            cert.write_bytes(b"")
        elif kind == "RSA key":
            key.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        elif kind == "password key":
            key.write_bytes(
                ec.generate_private_key(ec.SECP384R1()).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        elif kind == "mismatched":  # the key of another CA beside this CA's certificate
            key.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
        elif kind == "expired":
            other = ec.generate_private_key(ec.SECP384R1())
            key.write_bytes(_pem(other))
            cert.write_bytes(_ca_cert(other, days=-1).public_bytes(serialization.Encoding.PEM))
        elif kind == "not a CA":
            other = ec.generate_private_key(ec.SECP384R1())
            key.write_bytes(_pem(other))
            cert.write_bytes(_ca_cert(other, ca=False).public_bytes(serialization.Encoding.PEM))
        elif kind == "key only":
            cert.unlink()
        elif kind == "cert is a key":
            cert.write_bytes(key.read_bytes())
        return ["certs", "server", "--out", "certs", "--host", "localhost"]

    return setup


def _ca_garbage_for_node(work: Path) -> list[str]:
    folder = _ca(work)
    (folder / "ca.key").write_bytes(GARBAGE)
    return ["certs", "node", "--out", "certs", "--name", "site_a"]


def _certs_server(*options: str, out: str = "certs"):
    def setup(work: Path) -> list[str]:
        return ["certs", "server", "--out", out, *options]

    return setup


def _server_key_exists(work: Path) -> list[str]:
    mmfed(work, ["certs", "server", "--out", "certs", "--host", "localhost"])
    return ["certs", "server", "--out", "certs", "--host", "fl.hospital.example"]


def _certs_out_is_file(command: str):
    def setup(work: Path) -> list[str]:
        (work / "certs").write_text("not a folder\n")
        if command == "node":
            return ["certs", "node", "--out", "certs", "--name", "site_a"]
        return ["certs", "server", "--out", "certs", "--host", "localhost"]

    return setup


def _certs_out_in_keys(work: Path) -> list[str]:
    _init_site(work)
    return ["certs", "server", "--out", "site_a/keys/tls", "--host", "localhost"]


def _node_key_exists(work: Path) -> list[str]:
    mmfed(work, ["certs", "node", "--out", "keys", "--name", "site_a"])
    return ["certs", "node", "--out", "keys", "--name", "site_a"]


def _node(name: str):
    def setup(work: Path) -> list[str]:
        return ["certs", "node", "--out", "keys", "--name", name]

    return setup


CA_FILES = ("certs/ca.key", "certs/ca.crt", "certs/server.key", "certs/server.pem")
NO_CA = leaves_nothing(*CA_FILES, "certs")


def _unchanged_and_ok(work: Path, run: Run) -> str | None:
    return None if run.code == 0 else f"exit {run.code}: {run.output.strip()[-160:]}"


CASES = [
    # a site's ledger signing key
    Case("garbage private key in site keys/ (site check)", _site_key("garbage"), wants="ledger-signing.pem"),
    Case(
        "garbage private key (site init keeps it, refuses)",
        _site_key("garbage", "init"),
        wants="ledger-signing.pem",
    ),  # fmt: skip
    Case("garbage private key (site rotate-key)", _site_key("garbage", "rotate"), wants="ledger-signing.pem"),
    Case("truncated private key", _site_key("truncated"), wants="ledger-signing.pem"),
    Case("empty private key", _site_key("empty"), wants="ledger-signing.pem"),
    Case("EC key where the Ed25519 key belongs", _site_key("EC key"), wants="ledger-signing.pem"),
    Case("password-protected site key", _site_key("password"), wants="ledger-signing.pem"),
    Case("site key readable by others (0644)", _site_key("readable"), wants="chmod 600"),
    Case("site key is a folder", _site_key("folder"), wants="ledger-signing.pem"),
    Case("site key replaced by another key (site check)", _site_key("other key"), wants="ledger-signing"),
    Case("garbage --public-key (audit)", _public_key("garbage"), wants="site_a.pub.pem"),
    Case("EC --public-key (audit)", _public_key("EC key"), wants="site_a.pub.pem"),
    Case("private key given as --public-key (audit)", _public_key("private key"), wants="site_a.pub.pem"),
    Case("--public-key missing (audit)", _public_key("missing"), wants="site_a.pub.pem"),
    Case("--public-key is a folder (audit)", _public_key("folder"), wants="site_a.pub.pem"),
    Case(
        "garbage public key in a site's keys/ (audit)", _site_public_key_garbage, wants="ledger-signing.pub"
    ),
    # the CA, for certs server
    Case("garbage CA key (certs server)", _ca_broken("garbage key"), wants="ca.key"),
    Case("garbage CA cert (certs server)", _ca_broken("garbage cert"), wants="ca.crt"),
    Case("empty CA cert (certs server)", _ca_broken("empty cert"), wants="ca.crt"),
    Case("CA key that is RSA (certs server)", _ca_broken("RSA key"), wants="ca.key"),
    Case("password-protected CA key (certs server)", _ca_broken("password key"), wants="ca.key"),
    Case("CA key of another CA beside ca.crt (certs server)", _ca_broken("mismatched"), wants="ca.key"),
    Case("expired CA cert (certs server)", _ca_broken("expired"), wants="ca.crt"),
    Case("ca.crt that is not a CA (certs server)", _ca_broken("not a CA"), wants="ca.crt"),
    Case("ca.key without ca.crt (certs server)", _ca_broken("key only"), wants="ca.crt"),
    Case("ca.crt holds a private key (certs server)", _ca_broken("cert is a key"), wants="ca.crt"),
    Case(
        "garbage CA key beside a node key (certs node: CA not read)",
        _ca_garbage_for_node,
        expect="ok",
        check=_unchanged_and_ok,
        mutable=("certs/site_a", "certs/site_a.pub"),
    ),  # fmt: skip
    # certs server options
    Case(
        "certs server --days -5 (no CA left behind)",
        _certs_server("--host", "localhost", "--days", "-5"),
        run=NO_CA,
        wants="days",
    ),  # fmt: skip
    Case(
        "certs server --days 0 (no CA left behind)",
        _certs_server("--host", "localhost", "--days", "0"),
        run=NO_CA,
        wants="days",
    ),  # fmt: skip
    Case(
        "certs server --days 99999999",
        _certs_server("--host", "localhost", "--days", "99999999"),
        run=NO_CA,
        wants="days",
    ),  # fmt: skip
    Case(
        "certs server --host with spaces",
        _certs_server("--host", "fl server.hospital"),
        run=NO_CA,
        wants="fl server.hospital",
    ),  # fmt: skip
    Case("certs server --host bad_name!", _certs_server("--host", "bad_name!"), run=NO_CA, wants="bad_name!"),
    Case(
        "certs server --host -leading-dash",
        _certs_server("--host=-fl.example"),
        run=NO_CA,
        wants="-fl.example",
    ),  # fmt: skip
    Case("certs server --host ''", _certs_server("--host", ""), run=NO_CA, wants="host"),
    Case(
        "certs server --host 300.1.1.1 (no such IP)",
        _certs_server("--host", "300.1.1.1"),
        run=NO_CA,
        wants="300.1.1.1",
    ),  # fmt: skip
    Case(
        "certs server --host https://fl.example (a URL)",
        _certs_server("--host", "https://fl.example"),
        run=NO_CA,
        wants="https://fl.example",
    ),  # fmt: skip
    Case(
        "certs server --host fl.example:9092 (with a port)",
        _certs_server("--host", "fl.example:9092"),
        run=NO_CA,
        wants="fl.example:9092",
    ),  # fmt: skip
    Case("certs server: server.key exists, no --force", _server_key_exists, wants="server.key"),
    Case("certs server --out is a file", _certs_out_is_file("server"), wants="certs"),
    Case("certs server --out inside a site's keys/", _certs_out_in_keys, wants="keys"),
    # certs node
    Case("certs node: key exists, no --force", _node_key_exists, wants="site_a"),
    Case("certs node --out is a file", _certs_out_is_file("node"), wants="certs"),
    Case("certs node --name ../x", _node("../x"), run=leaves_nothing("x", "x.pub"), wants="name"),
    Case("certs node --name ''", _node(""), wants="name"),
    Case("certs node --name with a space", _node("site a"), run=leaves_nothing("keys"), wants="name"),
]

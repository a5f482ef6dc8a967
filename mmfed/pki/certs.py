"""Certificates and keys for a deployment (cryptography): a CA, the SuperLink's TLS certificate, and EC
P-384 SuperNode keys in OpenSSH format for node authentication. Private keys are created with mode 0600
and never overwritten unless asked."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmfed.errors import MMFedError

CA_KEY, CA_CERT = "ca.key", "ca.crt"
SERVER_KEY, SERVER_CERT = "server.key", "server.pem"
CA_DAYS = 3650  # a new CA's validity; a server certificate may not outlive its CA
# a DNS name's label (RFC 1123): letters, digits and inner hyphens, at most 63 characters
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_days(days: int) -> None:
    if not 1 <= days <= CA_DAYS:
        raise MMFedError(
            f"--days {days}: a certificate must be valid for 1 to {CA_DAYS} days (e.g. 365); "
            "nothing was written"
        )


def check_host(host: str) -> None:
    """An IP address or a DNS name (RFC 1123, `*.` wildcard first at most): what a TLS client matches."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    hint = ""
    if "://" in host or "/" in host:
        hint = "; give the host name alone, without scheme or path (e.g. fl.hospital.example)"
    elif ":" in host:
        hint = "; give the host name alone, without the port (the SuperLink's port is not in its certificate)"
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    numeric_top = labels[-1].isdigit() if labels else True  # 300.1.1.1 is no name, and no address
    if hint or len(host) > 253 or numeric_top or not all(_LABEL.fullmatch(label) for label in labels):
        hint = hint or " (letters, digits, - and . only, e.g. fl.hospital.example or 10.0.0.5)"
        raise MMFedError(f"--host {host!r}: not a DNS name or IP address{hint}; nothing was written")


def _write_private(path: Path, data: bytes, force: bool) -> None:
    if path.exists() and not force:
        raise MMFedError(f"{path} exists; nothing was changed (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mmfed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA in `folder`, refused (naming the file) unless its key is an unencrypted EC key, its
    certificate a CA's, valid now, and the certificate of that very key."""
    key_path, cert_path = folder / CA_KEY, folder / CA_CERT
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:  # encrypted
        raise MMFedError(
            f"{key_path}: the CA key is password-protected; give an unencrypted copy (e.g. `openssl pkey -in "
            f"{key_path} -out ca-plain.key`) in a folder of its own (nothing was written)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise MMFedError(
            f"{key_path}: not a readable PEM private key; restore the CA key from backup, or use a new --out "
            "folder for a new CA (nothing was written)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MMFedError(f"{key_path}: not an EC private key (mmfed's CAs are EC P-384); nothing was written")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise MMFedError(
            f"{cert_path}: not a readable PEM certificate; restore the CA certificate (nothing was written)"
        ) from None
    _check_ca_cert(cert_path, cert, key)
    return key, cert


def _check_ca_cert(cert_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise MMFedError(f"{cert_path}: not a CA certificate (a server's?); restore the CA's ca.crt")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise MMFedError(
            f"{cert_path}: the CA certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now; make a new CA in a new --out folder (and give "
            "its ca.crt to every site)"
        )
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*der) != cert.public_key().public_bytes(*der):
        raise MMFedError(
            f"{cert_path.parent / CA_KEY} is not the key of {cert_path} (another CA's key?); restore the "
            "pair that belongs together (nothing was written)"
        )


def load_or_create_ca(
    folder: Path, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The federation's CA in `folder` (created once; an existing one is reused, never replaced)."""
    key_path, cert_path = folder / CA_KEY, folder / CA_CERT
    if key_path.exists() and cert_path.exists():
        return _load_ca(folder)
    if key_path.exists() or cert_path.exists():
        missing = CA_CERT if key_path.exists() else CA_KEY
        raise MMFedError(
            f"{folder}: has only one of {CA_KEY} / {CA_CERT} ({folder / missing} is missing); restore it or "
            "use a new folder (nothing was written)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("mmfed federation CA"))
        .issuer_name(_name("mmfed federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    _write_private(key_path, _pem_key(key), force=False)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def server_certificate(folder: Path, hosts: list[str], days: int = 365, force: bool = False) -> Path:
    """TLS certificate for the SuperLink, valid for `hosts` (DNS names and/or IP addresses), signed by
    the CA in `folder`."""
    if not hosts:
        raise MMFedError("name at least one --host the SuperLink is reached by (DNS name or IP address)")
    for host in hosts:  # every option, and the folder, before anything is written
        check_host(host)
    check_days(days)
    _check_folder(folder)
    if (folder / SERVER_KEY).exists() and not force:
        raise MMFedError(f"{folder / SERVER_KEY} exists; nothing was changed (pass --force to replace it)")
    existing_ca = (folder / CA_KEY).exists()  # a new one lives CA_DAYS, longer than any --days
    ca_key, ca_cert = load_or_create_ca(folder)
    if existing_ca and now_plus(days) > ca_cert.not_valid_after_utc:
        raise MMFedError(
            f"--days {days}: the CA in {folder} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before "
            "this certificate would; give fewer --days (nothing was written)"
        )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(folder / SERVER_KEY, _pem_key(key), force)
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / SERVER_CERT


def now_plus(days: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _check_folder(folder: Path) -> None:
    """--out is a folder, or can become one (nothing on its way is a file)."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == folder else f"is under {part}, a file"
                raise MMFedError(f"--out {folder}: {where}; give a folder (nothing was written)")
            return


def node_key(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """EC P-384 key pair in OpenSSH format for SuperNode authentication: (private, public .pub)."""
    if not _PLAIN_NAME.fullmatch(name):
        raise MMFedError(
            f"--name {name!r}: use a plain file name (letters, digits, '.', '_', '-'), e.g. the site's name"
        )
    _check_folder(folder)
    if (folder / f"{name}.pub").exists() and not (folder / name).exists() and not force:
        raise MMFedError(f"{folder / name}.pub exists; nothing was changed (pass --force to replace it)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / name
    public = folder / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        force,
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )
    return private, public

"""Certificates and keys for a deployment (cryptography): a CA, the SuperLink's TLS certificate, and EC
P-384 SuperNode keys in OpenSSH format for node authentication. Private keys are created with mode 0600
and never overwritten unless asked."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmfed.errors import MMFedError

CA_KEY, CA_CERT = "ca.key", "ca.crt"
SERVER_KEY, SERVER_CERT = "server.key", "server.pem"


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


def load_or_create_ca(folder: Path, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The federation's CA in `folder` (created once; an existing one is reused, never replaced)."""
    key_path, cert_path = folder / CA_KEY, folder / CA_CERT
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise MMFedError(f"{key_path}: not an EC private key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    if key_path.exists() or cert_path.exists():
        raise MMFedError(
            f"{folder}: has only one of {CA_KEY} / {CA_CERT}; restore the other or use a new folder"
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
    ca_key, ca_cert = load_or_create_ca(folder)
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


def node_key(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """EC P-384 key pair in OpenSSH format for SuperNode authentication: (private, public .pub)."""
    if not name or "/" in name or name.startswith("."):
        raise MMFedError(f"--name {name!r}: use a plain file name, e.g. the site's name")
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

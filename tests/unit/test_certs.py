"""`mmfed certs`: a CA, a SuperLink certificate it signs, SuperNode keys; mode 0600; no overwrite."""

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from mmfed.cli import app


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["certs", "server", "--out", str(tmp_path), "--host", "localhost", "--host", "127.0.0.1"]
    )
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    # a second server certificate reuses the CA, and replacing the server key needs --force
    ca_key = (tmp_path / "ca.key").read_bytes()
    again = runner.invoke(app, ["certs", "server", "--out", str(tmp_path), "--host", "fl.hospital.example"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(
        app, ["certs", "server", "--out", str(tmp_path), "--host", "fl.example", "--force"]
    )
    assert forced.exit_code == 0 and (tmp_path / "ca.key").read_bytes() == ca_key
    x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes()).verify_directly_issued_by(ca)


def test_node_keys_are_p384_openssh_and_never_silently_replaced(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["certs", "node", "--out", str(tmp_path), "--name", "site_a"])
    assert result.exit_code == 0, result.output
    private = serialization.load_ssh_private_key((tmp_path / "site_a").read_bytes(), password=None)
    public = serialization.load_ssh_public_key((tmp_path / "site_a.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()
    assert (tmp_path / "site_a.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE((tmp_path / "site_a").stat().st_mode) == 0o600
    before = (tmp_path / "site_a").read_bytes()
    again = runner.invoke(app, ["certs", "node", "--out", str(tmp_path), "--name", "site_a"])
    assert again.exit_code == 2 and "nothing was changed" in again.output
    assert (tmp_path / "site_a").read_bytes() == before
    bad = runner.invoke(app, ["certs", "node", "--out", str(tmp_path), "--name", "../x"])
    assert bad.exit_code == 2 and "plain file name" in bad.output

"""Bad settings, paths, keys and certificates (the reliability campaign's settings, paths and keys_certs
cases): each is refused with exit code 2 and a message naming the setting, option or file, before anything
starts (Ray, a training loop) and without writing anything; a command that fails later removes what it had
created, so that the next attempt is not blocked."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from mmfed.cli import app
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.errors import ConfigError, MMFedError
from mmfed.federation.config import FederationConfig


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def text(result) -> str:
    return " ".join(result.output.split())


def assert_refused(result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    for name in names:
        assert name in text(result), result.output


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_simulation(monkeypatch):
    """`mmfed simulate` must refuse before the simulation (Ray) starts: reaching it fails the test."""

    def started(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr("mmfed.server.simulation.simulate", started)


# -- run settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1e30, -1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_by_name(seed):
    with pytest.raises(ConfigError) as info:
        FederationConfig.from_mapping({"scenario": "synthetic", "seed": seed})
    assert info.value.setting == "seed" and "4294967295" in str(info.value)


@pytest.mark.parametrize(
    "line", ["lr = true", "deidentify = 2", "sites = true", 'modalities = ["image"]', "rounds = 1.5"]
)
def test_a_value_of_the_wrong_type_in_a_toml_file_is_refused(tmp_path, line):
    path = tmp_path / "run.toml"
    path.write_text(f'scenario = "synthetic"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        FederationConfig.from_toml(path)
    assert info.value.setting == line.split(" = ")[0] and "not a valid" in str(info.value)


@pytest.mark.parametrize(
    ("option", "value", "names"),
    [
        ("--cpus-per-site", "0", "--cpus-per-site 0:"),
        ("--cpus-per-site", "nan", "--cpus-per-site nan"),
        ("--cpus-per-site", "4096", "this machine has"),
        ("--gpus-per-site", "-1", "--gpus-per-site -1:"),
        ("--gpus-per-site", "inf", "--gpus-per-site inf"),
        ("--gpus-per-site", "64", "--gpus-per-site 64"),
    ],
)
def test_resources_ray_could_never_give_are_refused_before_ray_starts(
    tmp_path, no_simulation, option, value, names
):
    run_dir = tmp_path / "run"
    result = invoke("simulate", "--scenario", "synthetic", "--run-dir", run_dir, option, value)
    assert_refused(result, names)
    assert not run_dir.exists()


# -- mmfed train's options, checked before any data is read ------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--modality-dropout", "1.5"], "setting 'modality-dropout'"),
        (["--modality-dropout", "nan"], "setting 'modality-dropout'"),
        (["--lr", "inf"], "setting 'lr'"),
        (["--lr", "nan"], "setting 'lr'"),
        (["--batch-size", "0"], "setting 'batch-size'"),
        (["--epochs", "0"], "setting 'epochs'"),
        (["--seed", "-1"], "setting 'seed'"),
        (["--device", "cudax"], "setting 'device'"),
        (["--image-encoder", "vgg"], "--image-encoder"),
        (["--text-encoder", "gpt"], "--text-encoder"),
    ],
)
def test_train_options_out_of_range_are_refused_by_name_before_the_data_is_read(tmp_path, options, names):
    missing_site = tmp_path / "no-such-site"  # never read: the option is refused first
    result = invoke("train", "--site-dir", missing_site, "--run-dir", tmp_path / "run", *options)
    assert_refused(result, names)
    assert not (tmp_path / "run").exists()


def test_train_run_dir_that_is_a_file_is_refused_before_the_data_is_read(tmp_path):
    (tmp_path / "out").write_text("mine\n")
    result = invoke("train", "--site-dir", tmp_path / "no-such-site", "--run-dir", tmp_path / "out")
    assert_refused(result, f"--run-dir {tmp_path / 'out'}: is a file")
    assert (tmp_path / "out").read_text() == "mine\n"


@pytest.fixture
def no_test_split(tmp_path):
    """A site whose every record is for training: `mmfed train` fails after claiming its run dir."""
    site = synthetic_site(tmp_path / "data", 0, samples=8, modalities="image")
    manifest = site / "manifest.csv"
    lines = manifest.read_text().splitlines()
    rows = [lines[0]] + [
        ",".join("train" if i == 2 else c for i, c in enumerate(r.split(","))) for r in lines[1:]
    ]
    manifest.write_text("\n".join(rows) + "\n")
    return site


def test_a_failed_train_removes_the_run_dir_it_created_and_a_retry_is_not_blocked(tmp_path, no_test_split):
    run_dir = tmp_path / "runs" / "deep" / "first"
    args = ["train", "--site-dir", no_test_split, "--run-dir", run_dir, "--epochs", "1"]
    for _ in range(2):  # the second attempt fails the same way: not "run directory is not empty"
        result = invoke(*args)
        assert_refused(result, "0 test samples")
        assert not (tmp_path / "runs").exists()  # the parents it created go too


def test_a_failed_train_empties_the_users_folder_but_keeps_it(tmp_path, no_test_split):
    mine = tmp_path / "mine"
    mine.mkdir()
    result = invoke("train", "--site-dir", no_test_split, "--run-dir", mine, "--epochs", "1")
    assert_refused(result, "0 test samples")
    assert mine.is_dir() and not any(mine.iterdir())


def test_a_train_that_fails_while_training_leaves_no_run_dir(tmp_path, monkeypatch):
    site = synthetic_site(tmp_path / "data", 0, samples=12, modalities="image")

    def diverged(*args, **kwargs):
        raise FloatingPointError("the training loss is nan: lower --lr")

    monkeypatch.setattr("mmfed.train.centralized.train_epochs", diverged)
    result = invoke("train", "--site-dir", site, "--run-dir", tmp_path / "run", "--epochs", "1")
    assert_refused(result, "lower --lr")
    assert not (tmp_path / "run").exists()
    assert files(site)  # the site's files stay


# -- the initial model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "json", "folder", "missing"])
def test_an_initial_model_that_is_no_safetensors_file_is_refused_before_ray(tmp_path, no_simulation, kind):
    model = tmp_path / "model.safetensors"
    if kind == "garbage":
        model.write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 4)
    elif kind == "json":
        model.write_text('{"weights": [1]}\n')
    elif kind == "folder":
        model.mkdir()
    args = ["simulate", "--scenario", "synthetic", "--run-dir", tmp_path / "run", "--initial-model", model]
    result = invoke(*args)
    assert_refused(result, f"initial-model {model}")
    assert not (tmp_path / "run").exists()


# -- certificates --------------------------------------------------------------------------------------


def make_ca(folder):
    result = invoke("certs", "server", "--out", folder, "--host", "localhost")
    assert result.exit_code == 0, result.output
    (folder / "server.key").unlink()
    (folder / "server.pem").unlink()
    return folder


def pem(key, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def self_signed(key, *, ca: bool = True, days: int = 100) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("days", ["-5", "0", "99999999"])
def test_certs_server_days_out_of_range_are_refused_and_leave_no_ca(tmp_path, days):
    out = tmp_path / "certs"
    result = invoke("certs", "server", "--out", out, "--host", "localhost", "--days", days)
    assert_refused(result, f"--days {days}", "nothing was written")
    assert not out.exists()


@pytest.mark.parametrize(
    "host", ["fl server.hospital", "bad_name!", "-fl.example", "", "300.1.1.1", "https://fl.example",
             "fl.example:9092", "a" * 64 + ".example"],
)  # fmt: skip
def test_certs_server_host_that_is_no_dns_name_or_ip_is_refused_and_leaves_no_ca(tmp_path, host):
    out = tmp_path / "certs"
    result = invoke("certs", "server", "--out", out, f"--host={host}")
    assert_refused(result, f"--host {host!r}", "nothing was written")
    assert not out.exists()


@pytest.mark.parametrize(
    "host", ["localhost", "fl.hospital.example", "10.0.0.5", "::1", "*.hospital.example"]
)
def test_certs_server_takes_dns_names_ips_and_wildcards(tmp_path, host):
    result = invoke("certs", "server", "--out", tmp_path / "certs", f"--host={host}")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("garbage key", "ca.key: not a readable PEM private key"),
        ("RSA key", "ca.key: not an EC private key"),
        ("password key", "ca.key: the CA key is password-protected"),
        ("mismatched key", "is not the key of"),
        ("garbage cert", "ca.crt: not a readable PEM certificate"),
        ("expired cert", "ca.crt: the CA certificate is valid from"),
        ("not a CA", "ca.crt: not a CA certificate"),
        ("cert only", "ca.key is missing"),
    ],
)
def test_a_broken_ca_is_refused_by_file_and_nothing_is_written(tmp_path, kind, names):
    from cryptography.hazmat.primitives.asymmetric import rsa

    folder = make_ca(tmp_path / "certs")
    key, cert = folder / "ca.key", folder / "ca.crt"
    other = ec.generate_private_key(ec.SECP384R1())
    if kind == "garbage key":
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
    elif kind == "RSA key":
        key.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    elif kind == "password key":
        key.write_bytes(pem(other, b"secret"))
    elif kind == "mismatched key":
        key.write_bytes(pem(other))
    elif kind == "garbage cert":
        cert.write_bytes(b"not a certificate\n")
    elif kind == "expired cert":
        key.write_bytes(pem(other))
        cert.write_bytes(self_signed(other, days=-1))
    elif kind == "not a CA":
        key.write_bytes(pem(other))
        cert.write_bytes(self_signed(other, ca=False))
    elif kind == "cert only":
        key.unlink()
    before = files(folder)
    result = invoke("certs", "server", "--out", folder, "--host", "localhost")
    assert_refused(result, names)
    assert files(folder) == before


def test_a_server_certificate_may_not_outlive_its_ca(tmp_path):
    folder = make_ca(tmp_path / "certs")
    result = invoke("certs", "server", "--out", folder, "--host", "localhost", "--days", "3650")
    assert_refused(result, "--days 3650: the CA in", "expires on")
    assert not (folder / "server.key").exists()


@pytest.mark.parametrize("command", ["server", "node"])
def test_certs_out_that_is_a_file_is_refused(tmp_path, command):
    out = tmp_path / "certs"
    out.write_text("mine\n")
    extra = ["--host", "localhost"] if command == "server" else ["--name", "site_a"]
    result = invoke("certs", command, "--out", out, *extra)
    assert_refused(result, f"--out {out}: is a file")
    assert out.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["site a", "-x", "a/b", "..", ""])
def test_certs_node_name_that_is_no_plain_file_name_is_refused(tmp_path, name):
    result = invoke("certs", "node", "--out", tmp_path / "keys", "--name", name)
    assert_refused(result, "--name", "plain file name")
    assert not (tmp_path / "keys").exists()


def test_certs_node_does_not_replace_a_lone_public_key(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "site_a.pub").write_text("registered key\n")
    result = invoke("certs", "node", "--out", keys, "--name", "site_a")
    assert_refused(result, "site_a.pub exists")
    assert files(keys) == {"site_a.pub": b"registered key\n"}


def test_garbage_private_key_of_a_site_is_refused_by_file(tmp_path):
    site = synthetic_site(tmp_path / "data", 0, samples=12, modalities="image")
    assert invoke("site", "init", "--dir", site).exit_code == 0
    private = site / "keys" / "ledger-signing.pem"
    private.write_bytes(b"garbage")
    os.chmod(private, stat.S_IRUSR | stat.S_IWUSR)
    before = files(site)
    for command in ("check", "init", "rotate-key"):
        result = invoke("site", command, "--dir", site)
        assert_refused(result, str(private))
        assert {k: v for k, v in files(site).items() if not k.endswith(".lock")} == before


def test_check_resources_takes_a_cluster_at_its_word():
    from mmfed.server.prepare import check_resources

    check_resources(4096, 64, ray_address="auto")  # a cluster's resources are its own
    with pytest.raises(MMFedError, match="--cpus-per-site"):
        check_resources(0, 0, ray_address="auto")


# -- folders and files a run writes, refused before Ray starts --------------------------------------------


@pytest.mark.parametrize(
    ("option", "make", "names"),
    [
        ("--run-dir", "under file", "is under"),
        ("--state-dir", "file", "--state-dir"),
        ("--cache-dir", "file", "--cache-dir"),
        ("--anchor-file", "folder", "--anchor-file"),
        ("--anchor-file", "under file", "which is a file"),
    ],
)
def test_a_run_path_of_the_wrong_shape_is_refused_before_ray(tmp_path, no_simulation, option, make, names):
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "a_folder").mkdir()
    path = {
        "under file": tmp_path / "a_file" / "x",
        "file": tmp_path / "a_file",
        "folder": tmp_path / "a_folder",
    }
    args = ["simulate", "--scenario", "synthetic", "--sites", "2", "--samples-per-site", "8"]
    run_dir = ["--run-dir", tmp_path / "run"] if option != "--run-dir" else []
    result = invoke(*args, *run_dir, option, path[make])
    assert_refused(result, names, str(path[make]))
    assert (tmp_path / "a_file").read_text() == "mine\n" and not (tmp_path / "run").exists()


# -- a site's keys -------------------------------------------------------------------------------------------


@pytest.fixture
def site_home(tmp_path):
    site = synthetic_site(tmp_path / "data", 0, samples=12, modalities="image")
    assert invoke("site", "init", "--dir", site).exit_code == 0
    return site


def replace_private_key(site, data: bytes) -> None:
    private = site / "keys" / "ledger-signing.pem"
    private.unlink()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def test_a_private_key_that_is_not_the_sites_public_keys_is_refused(site_home):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    replace_private_key(site_home, pem(Ed25519PrivateKey.generate()))
    result = invoke("site", "check", "--dir", site_home)
    assert_refused(result, "is not the private key of", "rotate-key", "--lost")


def test_a_password_protected_site_key_is_named_as_such(site_home):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    replace_private_key(site_home, pem(Ed25519PrivateKey.generate(), b"secret"))
    assert_refused(invoke("site", "check", "--dir", site_home), "password-protected")


def test_a_site_key_that_is_a_folder_is_named_as_such(site_home):
    private = site_home / "keys" / "ledger-signing.pem"
    private.unlink()
    private.mkdir()
    assert_refused(invoke("site", "check", "--dir", site_home), "a folder, not the site's private key")


# -- audit's outputs, checked before the audit ---------------------------------------------------------------


def test_audit_output_and_plots_of_the_wrong_shape_are_refused_before_any_report(site_home, tmp_path):
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "a_folder").mkdir()
    for args, names in [
        (["--output", tmp_path / "a_folder"], "--output"),
        (["--output", tmp_path / "a_file" / "audit.md"], "is a file, not a folder"),
        (["--plots", tmp_path / "a_file"], "--plots"),
    ]:
        result = invoke("audit", site_home, "--format", "md", *args)
        assert_refused(result, *names.split("|"))
        assert "# " not in result.output  # refused before the report, not after printing it
    assert (tmp_path / "a_file").read_text() == "mine\n" and not any((tmp_path / "a_folder").iterdir())


def test_audit_output_into_a_missing_folder_creates_it(site_home, tmp_path):
    report = tmp_path / "reports" / "2025" / "audit.json"
    result = invoke("audit", site_home, "--format", "json", "--output", report)
    assert result.exit_code == 0, result.output
    assert report.read_text().lstrip().startswith(("{", "["))


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_audit_public_key_that_is_no_file_is_named(site_home, tmp_path, kind):
    from mmfed.privacy import ledger, site_keys

    fields = {"run_id": "run-1", "round": 1, "data_fingerprint": "sha256:" + "ab" * 32, "epsilon_prv": 0.1}
    ledger.append(site_home / "state" / "ledger.jsonl", site_keys.load_private_key(site_home), fields)
    key = tmp_path / "site.pub.pem"
    if kind == "folder":
        key.mkdir()
    result = invoke("audit", site_home / "state" / "ledger.jsonl", "--public-key", key)
    assert_refused(result, f"--public-key {key}")

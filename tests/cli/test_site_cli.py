"""`mmfed site init` / `site check`: what a site operator runs first."""

import stat

from typer.testing import CliRunner

from mmfed.cli import app
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.privacy import site_keys
from mmfed.privacy.geometry import rounded_size
from mmfed.privacy.policy import load_policy


def test_site_init_creates_policy_and_key_and_never_overwrites(tmp_path):
    site = synthetic_site(tmp_path / "data", 0, samples=30, modalities="image")
    runner = CliRunner()
    result = runner.invoke(app, ["site", "init", "--dir", str(site), "--max-epsilon", "5", "--delta", "1e-6"])
    assert result.exit_code == 0, result.output
    policy = load_policy(site / "site.toml")
    assert (policy.max_epsilon, policy.delta) == (5.0, 1e-6)
    # what the site discloses is declared once, from the manifest: its size, rounded, and its schema
    train = sum(",train," in line for line in open(site / "manifest.csv"))
    assert policy.public_examples == rounded_size(train) and policy.held_modalities == ("image",)
    assert policy.secure_rng and policy.allow_evaluation
    private = site / site_keys.PRIVATE_KEY
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    text = " ".join(result.output.split())
    assert "manifest OK" in text and "next:" in text and "ed25519:" in text
    for option in ("flower-supernode", "--root-certificates ca.crt", "--auth-supernode-private-key"):
        assert option in text, option
    assert f"site-dir='{site.resolve()}'" in text
    # a second init keeps the edited policy and the key
    (site / "site.toml").write_text(
        (site / "site.toml").read_text().replace("max_epsilon = 5.0", "max_epsilon = 2.5")
    )
    key_bytes = private.read_bytes()
    again = runner.invoke(app, ["site", "init", "--dir", str(site)])
    assert again.exit_code == 0 and "kept existing" in again.output
    assert load_policy(site / "site.toml").max_epsilon == 2.5 and private.read_bytes() == key_bytes
    check = runner.invoke(app, ["site", "check", "--dir", str(site)])
    text = " ".join(check.output.split())  # rich wraps long lines
    assert check.exit_code == 0 and "ε spent 0.000" in text and "remaining 2.500" in text


def test_site_init_reports_a_bad_manifest_and_a_missing_one(tmp_path):
    site = synthetic_site(tmp_path / "data", 1, samples=30, modalities="image")
    manifest = site / "manifest.csv"
    manifest.write_text(manifest.read_text() + "broken_row,,,\n")
    result = CliRunner().invoke(app, ["site", "init", "--dir", str(site)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "manifest.csv" in text and "row" in text
    # the manifest is read first: nothing is written for a site whose public size cannot be known
    assert not (site / "site.toml").exists() and not (site / "keys").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["site", "init", "--dir", str(empty)])
    assert result.exit_code == 2 and "no manifest.csv" in result.output
    assert not (empty / "site.toml").exists()


def test_site_init_public_examples_option_and_a_delta_too_large_for_it(tmp_path):
    site = synthetic_site(tmp_path / "data", 2, samples=30, modalities="image")
    result = CliRunner().invoke(
        app, ["site", "init", "--dir", str(site), "--public-examples", "2000", "--delta", "1e-3"]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and load_policy(site / "site.toml").public_examples == 2000
    assert "not below 1/2000" in text and "refuse DP rounds" in text

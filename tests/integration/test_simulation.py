"""`mmfed simulate` end to end on Flower's simulation engine (Ray): the path users run."""

import json

import psutil
import pytest
from typer.testing import CliRunner

from mmfed.cli import app


@pytest.mark.slow
def test_simulate_cli_runs_a_federation_and_leaves_no_ray_processes(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "simulate",
        "--scenario",
        "synthetic",
        "--sites",
        "2",
        "--rounds",
        "2",
        "--modalities",
        "image,audio",
        "--fusion",
        "late",
        "--min-sites",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--run-dir",
        str(run_dir),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "round   2" in result.output and "global accuracy" in result.output and str(run_dir) in result.output
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert (run_dir / "global_metrics.png").stat().st_size > 0
    leftovers = [p.name() for p in psutil.Process().children(recursive=True)]
    assert not [n for n in leftovers if "ray" in n or "raylet" in n or "gcs" in n], leftovers
    # the same run dir is refused without --resume, and extended with it
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    more = CliRunner().invoke(app, [*args[:-2], "--rounds", "3", "--resume", "--run-dir", str(run_dir)])
    assert more.exit_code == 0, more.output
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 3


def test_simulate_rejects_bad_settings_before_starting(tmp_path, shared_data):
    def simulate(*args):
        return CliRunner().invoke(app, ["simulate", *args, "--run-dir", str(tmp_path / "r")])

    result = simulate("--scenario", "fsdd-mnist", "--data-dir", str(tmp_path), "--sites", "6")
    assert result.exit_code == 2 and "fsdd/recordings: not found" in result.output  # a wrong data folder
    result = simulate("--scenario", "fsdd-mnist", "--data-dir", str(shared_data), "--sites", "4")
    assert result.exit_code == 2 and "fsdd-mnist has 6 natural sites: use --sites 6" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nscenario = 'digits-av'\nlocal_epocs = 2\n")
    result = CliRunner().invoke(app, ["simulate", "--config", str(bad)])
    assert result.exit_code == 2 and "local_epocs" in result.output and "bad.toml" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_simulate_with_dp_and_secagg_prints_epsilon_and_its_ledgers_pass_the_audit(tmp_path):
    state = tmp_path / "sites"
    args = [
        "simulate", "--scenario", "synthetic", "--sites", "2", "--rounds", "2", "--modalities", "image",
        "--fusion", "late", "--min-sites", "2", "--cache-dir", str(tmp_path / "cache"),
        "--run-dir", str(tmp_path / "run"), "--target-epsilon", "4", "--max-grad-norm", "1.0",
        "--state-dir", str(state), "--secure-aggregation", "--site-max-epsilon", "4",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "ε max" in result.output and "privacy spent per site" in result.output and "SecAgg+" in result.output
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["site_epsilon"]) == {"site_00000", "site_00001"}
    assert 3.5 < summary["epsilon_prv_max"] <= 4.0  # the target, spent over the whole planned run
    # the run ends with the sites' ledgers audited: each site's cumulative ε (the ledger's, as printed
    # by the sites) with its cap, and the verdict
    said = " ".join(result.output.split())  # the console wraps at its width
    assert "audited from its ledger" in said and "audit PASSED" in said
    assert "the server's 4 anchors" in said and "within its cap" in said
    for site, eps in summary["site_epsilon"].items():
        row = next(line for line in result.output.splitlines() if site in line and "1e-05" in line)
        assert f"{eps['epsilon_prv']:.3f}" in row and " 4 " in row and "ok" in row
    audit = CliRunner().invoke(app, ["audit", str(state), "--format", "md"])
    assert audit.exit_code == 0 and "PASSED" in audit.output, audit.output


def test_simulate_rejects_bad_privacy_settings(tmp_path):
    base = ["simulate", "--scenario", "synthetic", "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*base, "--target-epsilon", "3", "--noise-multiplier", "1"])
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(app, [*base, "--noise-multiplier", "1", "--delta", "2"])
    assert result.exit_code == 2 and "delta" in result.output
    assert not (tmp_path / "r").exists()


def test_flwr_run_config_lists_every_setting_and_parses():
    """`flwr run .` can only override settings listed in pyproject.toml's [tool.flwr.app.config]."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from mmfed.federation.config import FederationConfig

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    listed = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    settings = {f.name.replace("_", "-") for f in dataclasses.fields(FederationConfig)}
    assert set(listed) == settings
    assert not FederationConfig.from_mapping(listed).private  # `flwr run .` defaults: no DP proposed

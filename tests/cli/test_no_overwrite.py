"""No command writes over what it reads, nor over a site's manifest, labels, policy, keys or state: every
writing option is refused (exit 2, a message naming the option, the path and what it is) before anything
is written; new, unrelated targets keep working."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from mmfed.cli import app
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.privacy import ledger, site_keys
from mmfed.privacy.budget import LEDGER

# (path in the site directory, what the refusal calls it)
PROTECTED = [
    ("manifest.csv", "that is a site's manifest (it would be overwritten)"),
    ("labels.txt", "that is a site's labels (it would be overwritten)"),
    ("site.toml", "that is a site's privacy policy (it would be overwritten)"),
    (site_keys.PRIVATE_KEY, "that is a site's ledger signing key (it would be overwritten)"),
    (site_keys.PUBLIC_KEY, "that is a site's ledger public key (it would be overwritten)"),
    (LEDGER, "that is a site's ledger (it would be overwritten)"),
    ("state/site-log.jsonl", "that is a site's log (it would be overwritten)"),
    ("state/budget/sha256-ab.json", "that is inside a site's privacy budget"),
    ("keys/new-report.txt", "that is inside a site's keys folder"),
    ("state/new-report.txt", "that is inside a site's privacy state folder"),
]
IDS = [p for p, _ in PROTECTED]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def init_site(root, index=0):
    site = synthetic_site(root, index, samples=30, modalities="image")
    result = invoke("site", "init", "--dir", site)
    assert result.exit_code == 0, result.output
    return site


@pytest.fixture
def site(tmp_path):
    """A site after `site init`, with a ledger entry, a budget file and a site log."""
    site = init_site(tmp_path / "data")
    fields = {"run_id": "run-1", "round": 1, "data_fingerprint": "sha256:" + "ab" * 32, "epsilon_prv": 0.1}
    ledger.append(site / LEDGER, site_keys.load_private_key(site), fields)
    (site / "state" / "budget").mkdir()
    (site / "state" / "budget" / "sha256-ab.json").write_text('{"fingerprint": "sha256:ab"}')
    (site / "state" / "site-log.jsonl").write_text('{"event": "round"}\n')
    return site


def snapshot(folder):
    """Every file (bytes) and folder under `folder`: nothing written means this does not change."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


def assert_refused(result, option, path, what):
    text = " ".join(result.output.split())  # no wrapping assumptions
    assert result.exit_code == 2, result.output
    assert text.startswith(f"error: {option} {path}"), text
    assert what in text, text
    assert "Traceback" not in text


# -- audit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "what"), PROTECTED, ids=IDS)
def test_audit_output_over_a_sites_files_is_refused(site, rel, what):
    before = snapshot(site)
    result = invoke("audit", site, "--format", "json", "--output", site / rel)
    assert_refused(result, "--output", site / rel, what)
    assert "write the report elsewhere" in result.output
    assert snapshot(site) == before


def test_audit_output_through_a_symlink_or_dotdot_is_refused(site, tmp_path):
    before = snapshot(site)
    link = tmp_path / "report.json"
    link.symlink_to(site / LEDGER)
    result = invoke("audit", site, "--output", link)
    assert_refused(result, "--output", link, "that is a site's ledger")
    assert f"resolves to {(site / LEDGER).resolve()}" in " ".join(result.output.split())
    sneaky = site / "keys" / ".." / "state" / "ledger.jsonl"
    assert_refused(invoke("audit", site, "--output", sneaky), "--output", sneaky, "a site's ledger")
    # a symlinked folder leading into a site's state/
    (tmp_path / "reports").symlink_to(site / "state")
    into = tmp_path / "reports" / "audit.md"
    assert_refused(invoke("audit", site, "--format", "md", "--output", into), "--output", into, "inside")
    assert snapshot(site) == before and not (site / "state" / "audit.md").exists()


def test_audit_output_over_a_ledger_or_key_it_reads_outside_a_site_is_refused(site, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(site / LEDGER, loose / "hospital.jsonl")
    shutil.copy(site / site_keys.PUBLIC_KEY, loose / "hospital.pub.pem")
    before = snapshot(loose)
    base = ["audit", loose / "hospital.jsonl", "--public-key", loose / "hospital.pub.pem"]
    for target in ("hospital.jsonl", "hospital.pub.pem"):
        result = invoke(*base, "--format", "json", "--output", loose / target)
        assert_refused(result, "--output", loose / target, "that is a file this command reads")
    # a hard link to the ledger is the same file
    os.link(loose / "hospital.jsonl", tmp_path / "hard.jsonl")
    result = invoke(*base, "--output", tmp_path / "hard.jsonl")
    assert_refused(result, "--output", tmp_path / "hard.jsonl", "a file this command reads")
    # --plots naming the ledger itself
    result = invoke(*base, "--plots", loose / "hospital.jsonl")
    assert_refused(result, "--plots", loose / "hospital.jsonl", "a file this command reads")
    assert snapshot(loose) == before


@pytest.mark.parametrize("rel", ["state/plots", "state", "keys", "keys/plots", "state/budget"])
def test_audit_plots_inside_a_sites_keys_or_state_is_refused(site, rel):
    before = snapshot(site)
    result = invoke("audit", site, "--format", "json", "--plots", site / rel)
    assert_refused(result, "--plots", site / rel, "nothing may be written there")
    assert "write the plots elsewhere" in result.output
    assert snapshot(site) == before


def test_audit_plots_into_a_site_directory_itself_is_refused_only_over_its_files(site):
    # the plot's own file name in a site directory is no protected file: only its keys/ and state/ are
    before = snapshot(site)
    (site / "epsilon_per_round.png").symlink_to(site / "site.toml")
    result = invoke("audit", site, "--format", "json", "--plots", site)
    assert_refused(result, "--plots", site, f"it would write {site / 'epsilon_per_round.png'}")
    assert "a site's privacy policy" in result.output
    assert {k: v for k, v in snapshot(site).items() if k != "epsilon_per_round.png"} == before


def test_audit_to_new_unrelated_paths_still_works(tmp_path):
    site = init_site(tmp_path / "data")  # no ledger yet: a clean audit
    out = tmp_path / "out" / "state"  # a folder named state that is no site's
    out.mkdir(parents=True)
    result = invoke("audit", site, "--format", "json", "--output", out / "audit.json")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "audit.json").read_text())["ok"]
    result = invoke("audit", site, "--format", "md", "--output", site / "audit.md")  # beside, not over
    assert result.exit_code == 0, result.output
    assert (site / "audit.md").read_text().strip()


# -- data check ------------------------------------------------------------------------------------


def add_bad_row(site):
    manifest = site / "manifest.csv"
    manifest.write_text(manifest.read_text() + "broken,0,nosplit,image/none.png,,,,\n")


@pytest.mark.parametrize(("rel", "what"), PROTECTED, ids=IDS)
def test_data_check_report_over_a_sites_files_is_refused(site, rel, what):
    add_bad_row(site)  # with skip, the report would be written
    before = snapshot(site)
    result = invoke("data", "check", site, "--on-bad-row", "skip", "--report", site / rel)
    assert_refused(result, "--report", site / rel, what)
    assert snapshot(site) == before


def test_data_check_report_over_a_file_it_reads_is_refused(site, tmp_path):
    add_bad_row(site)
    before = snapshot(site)
    image = site / "image" / "s0_0.png"  # a file the manifest names
    result = invoke("data", "check", site, "--on-bad-row", "skip", "--report", image)
    assert_refused(result, "--report", image, "that is a file this command reads")
    os.link(site / "manifest.csv", tmp_path / "copy.csv")  # the manifest under another name
    result = invoke("data", "check", site, "--on-bad-row", "skip", "--report", tmp_path / "copy.csv")
    assert_refused(result, "--report", tmp_path / "copy.csv", "a file this command reads")
    (tmp_path / "link.csv").symlink_to(site / "manifest.csv")
    result = invoke("data", "check", site, "--on-bad-row", "skip", "--report", tmp_path / "link.csv")
    assert_refused(result, "--report", tmp_path / "link.csv", "that is a site's manifest")
    assert snapshot(site) == before


def test_data_check_report_elsewhere_and_by_default_still_works(site, tmp_path, monkeypatch):
    add_bad_row(site)
    report = tmp_path / "reports" / "skipped.csv"
    result = invoke("data", "check", site, "--on-bad-row", "skip", "--report", report)
    assert result.exit_code == 0, result.output
    assert "broken" in report.read_text()
    result = invoke("data", "check", site, "--on-bad-row", "skip")  # SITE/../NAME-skipped.csv
    assert result.exit_code == 0, result.output
    assert "broken" in (site.parent / f"{site.name}-skipped.csv").read_text()
    (site.parent / f"{site.name}-skipped.csv").unlink()
    monkeypatch.chdir(site)  # `data check .`: next to the folder, named after it, not "-skipped.csv" in it
    result = invoke("data", "check", ".", "--on-bad-row", "skip")
    assert result.exit_code == 0, result.output
    assert not (site / "-skipped.csv").exists() and (site.parent / f"{site.name}-skipped.csv").exists()


# -- train, simulate, data prepare: run and cache folders ------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    calls = []

    def fake(scenario, run_dir, **kwargs):
        calls.append(run_dir)
        run_dir.mkdir(parents=True)
        return {"test_accuracy": 0.5, "test_examples": 3, "epochs": 1, "seconds": 0.0}

    monkeypatch.setattr("mmfed.train.centralized.train_centralized", fake)
    return calls


@pytest.mark.parametrize("rel", ["state/run", "keys/run", "state", "state/budget/run"])
def test_train_run_dir_inside_a_sites_keys_or_state_is_refused(site, no_training, rel):
    before = snapshot(site)
    result = invoke("train", "--site-dir", site, "--epochs", "1", "--run-dir", site / rel)
    assert_refused(result, "--run-dir", site / rel, "nothing may be written there")
    assert "choose another --run-dir" in result.output
    assert snapshot(site) == before and not no_training


def test_train_cache_dir_inside_a_site_is_refused_and_new_folders_work(site, tmp_path, no_training):
    before = snapshot(site)
    run = tmp_path / "run"
    result = invoke("train", "--site-dir", site, "--run-dir", run, "--cache-dir", site / "keys" / "cache")
    assert_refused(result, "--cache-dir", site / "keys" / "cache", "inside a site's keys folder")
    assert snapshot(site) == before and not run.exists() and not no_training
    result = invoke("train", "--site-dir", site, "--run-dir", run, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert no_training == [run]


@pytest.fixture
def no_simulation(monkeypatch):
    calls = []

    def fake(cfg, **kwargs):
        calls.append(cfg)
        return {"global_accuracy": 0.5, "rounds_completed": 1}

    monkeypatch.setattr("mmfed.server.simulation.simulate", fake)
    return calls


@pytest.mark.parametrize(
    ("option", "rel", "what"),
    [
        ("--run-dir", "state/run", "inside a site's privacy state folder"),
        ("--run-dir", "keys", "that is a site's keys folder"),
        ("--state-dir", "state/sites", "inside a site's privacy state folder"),
        ("--state-dir", "keys/sites", "inside a site's keys folder"),
        ("--cache-dir", "state/cache", "inside a site's privacy state folder"),
    ],
)
def test_simulate_folders_inside_a_sites_keys_or_state_are_refused(
    site, tmp_path, no_simulation, option, rel, what
):
    before = snapshot(site)
    args = {"--run-dir": tmp_path / "run", option: site / rel}
    result = invoke("simulate", "--scenario", "synthetic", *[x for kv in args.items() for x in kv])
    assert_refused(result, option, site / rel, what)
    assert snapshot(site) == before and not no_simulation and not (tmp_path / "run").exists()


def test_simulate_run_dir_from_a_config_file_is_checked_too(site, tmp_path, no_simulation):
    config = tmp_path / "run.toml"
    config.write_text(f"[federation]\nscenario = 'synthetic'\nrun-dir = '{site / 'state' / 'run'}'\n")
    result = invoke("simulate", "--config", config)
    assert_refused(result, "--run-dir", site / "state" / "run", "inside a site's privacy state folder")
    result = invoke("simulate", "--config", config, "--run-dir", config)  # the file it reads
    assert_refused(result, "--run-dir", config, "a file this command reads")
    assert not no_simulation and config.is_file()


def test_simulate_into_new_folders_still_works(tmp_path, no_simulation):
    run = tmp_path / "run"
    result = invoke(
        "simulate", "--scenario", "synthetic", "--run-dir", run, "--state-dir", tmp_path / "sites"
    )
    assert result.exit_code == 0, result.output
    assert [cfg.run_dir for cfg in no_simulation] == [str(run.resolve())]


def test_data_prepare_cache_inside_a_site_is_refused(site, tmp_path, monkeypatch):
    before = snapshot(site)
    result = invoke("data", "prepare", "--scenario", "synthetic", "--cache-dir", site / "state" / "cache")
    assert_refused(result, "--cache-dir", site / "state" / "cache", "inside a site's privacy state folder")
    monkeypatch.setenv("MMFED_CACHE_DIR", str(site / "keys"))
    result = invoke("data", "prepare", "--scenario", "synthetic")
    assert_refused(result, "$MMFED_CACHE_DIR", site / "keys", "that is a site's keys folder")
    assert snapshot(site) == before


def test_data_prepare_into_a_new_cache_still_works(tmp_path, monkeypatch):
    prepared = []

    def fake(name, data_dir=None, cache_dir=None, seed=0):
        from mmfed.data.scenarios import Scenario

        prepared.append(cache_dir)
        (tmp_path / "cache" / "site_0").mkdir(parents=True)
        return Scenario(name, [tmp_path / "cache" / "site_0"], ["0", "1"], ("image",))

    monkeypatch.setattr("mmfed.data.scenarios.prepare_scenario", fake)
    result = invoke("data", "prepare", "--scenario", "synthetic", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert prepared == [tmp_path / "cache"] and "site_0" in result.output
    assert (tmp_path / "cache" / "task.toml").is_file() and "task.toml" in result.output


# -- site init -------------------------------------------------------------------------------------


def test_site_init_through_links_into_another_site_is_refused(site, tmp_path):
    other = synthetic_site(tmp_path / "data", 1, samples=30, modalities="image")
    shutil.rmtree(other / "keys", ignore_errors=True)
    (other / "keys").symlink_to(site / "keys")  # the other site's key would be this site's
    before = snapshot(site)
    result = invoke("site", "init", "--dir", other)
    assert_refused(result, "--dir", other, f"it would write {other / site_keys.PRIVATE_KEY}")
    assert "a site's ledger signing key" in result.output and "nothing was written" in result.output
    assert snapshot(site) == before and not (other / "site.toml").exists()
    # a policy link into a site that has none yet: would create that site's site.toml
    fresh = synthetic_site(tmp_path / "data", 2, samples=30, modalities="image")
    (other / "keys").unlink()
    (other / "site.toml").symlink_to(fresh / "site.toml")
    result = invoke("site", "init", "--dir", other)
    assert_refused(result, "--dir", other, "a site's privacy policy")
    assert not (fresh / "site.toml").exists() and not (other / "keys").exists()


def test_site_init_inside_a_sites_state_is_refused(site):
    inner = site / "state" / "copy"
    inner.mkdir()
    shutil.copy(site / "manifest.csv", inner / "manifest.csv")
    before = snapshot(site)
    result = invoke("site", "init", "--dir", inner)
    assert_refused(result, "--dir", inner, "inside a site's privacy state folder")
    assert snapshot(site) == before


# -- certs -----------------------------------------------------------------------------------------


def test_certs_into_a_sites_keys_state_or_files_are_refused(site):
    before = snapshot(site)
    result = invoke("certs", "node", "--out", site / "keys", "--name", "site_a")
    assert_refused(result, "--out", site / "keys", "that is a site's keys folder")
    assert "choose another --out folder" in result.output
    result = invoke("certs", "node", "--out", site, "--name", "manifest.csv", "--force")
    assert_refused(
        result, "--out", site, f"it would write {site / 'manifest.csv'}: that is a site's manifest"
    )
    result = invoke("certs", "server", "--out", site / "state" / "certs", "--host", "localhost")
    assert_refused(result, "--out", site / "state" / "certs", "inside a site's privacy state folder")
    assert snapshot(site) == before


def test_certs_into_new_folders_still_work(tmp_path):
    result = invoke("certs", "node", "--out", tmp_path / "auth", "--name", "site_a")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "auth" / "site_a.pub").is_file()
    result = invoke("certs", "server", "--out", tmp_path / "certs", "--host", "localhost")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "certs" / "server.pem").is_file()

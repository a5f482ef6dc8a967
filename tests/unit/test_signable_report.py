"""The report a data-protection officer signs: every section, the plot embedded, empirical results."""

import base64
import re

import pytest
from typer.testing import CliRunner

from mmfed.audit.check import audit_ledger
from mmfed.audit.empirical import EmpiricalAudit
from mmfed.audit.signable import SIGNATURE_FIELDS, as_html, as_markdown
from mmfed.cli import app
from mmfed.privacy import site_keys
from mmfed.privacy.budget import LEDGER, Proposal, SiteBudget
from mmfed.privacy.policy import SitePolicy


def make_site(tmp_path, name="hospital-a", rounds=3, cap=20.0):
    home = tmp_path / name
    home.mkdir()
    (home / "site.toml").write_text(SitePolicy(max_epsilon=cap).template())
    site_keys.create_key(home)
    budget = SiteBudget(home, "sha256:" + "cd" * 32, site=name)
    offer = Proposal(noise_multiplier=1.1, target_epsilon=0.0, max_grad_norm=1.0, batch_size=50,
                     local_epochs=1, rounds=rounds, modalities=("image",))  # fmt: skip
    for rnd in range(1, rounds + 1):
        plan = budget.plan(offer, public_examples=400)
        after = [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
        budget.release(plan, after, run_id="run-1", round=rnd, extra={})
    return home


def empirical(site, lower=0.4, accounted=2.0, control=""):
    return EmpiricalAudit(
        site=site, mode="gradient", canaries=1000, included=497, epsilon_lower=lower, confidence=0.95,
        power=5.23, guesses=200, correct=150, grid=[10, 20, 50, 100, 200, 500, 1000],
        epsilon_accounted=accounted, delta=1e-5, rounds=3, steps=60, seconds=12.0, control=control,
    )  # fmt: skip


@pytest.mark.slow  # a plot and signed ledgers: several seconds on a loaded machine
def test_html_report_has_every_section_and_is_self_contained(tmp_path):
    audit = audit_ledger(make_site(tmp_path) / LEDGER, tmp_path / "hospital-a")
    page = as_html([audit], [empirical("hospital-a")])
    for section in ("Summary", "Site hospital-a", "Rounds", "ε per round", "Sign-off"):
        assert f">{section}</h2>" in page
    assert "Mechanism." in page and "noise σ = 1.1" in page and "clipping norm C = 1.0" in page
    assert "Findings." in page and "verified: hash chain and signatures of 3 ledger entries" in page
    assert "cap 20.000; spent ε" in page and "remaining" in page and "1 run(s), 3 round(s)" in page
    assert "Empirical audit." in page and "ε̂ = 0.400 at 95%" in page and "could show: 5.230" in page
    assert all(f"<th>{f}</th>" for f in SIGNATURE_FIELDS)
    png = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page).group(1)
    assert base64.b64decode(png).startswith(b"\x89PNG") and "src='http" not in page


@pytest.mark.slow
def test_markdown_report_and_the_cli(tmp_path):
    home = make_site(tmp_path)
    page = as_markdown([audit_ledger(home / LEDGER, home)])
    for section in ("## Summary", "## Site hospital-a", "## Rounds", "## ε per round", "## Sign-off"):
        assert section in page
    assert "![cumulative ε per site and round](data:image/png;base64," in page and "Signature: ___" in page
    result_file = tmp_path / "empirical.json"
    result_file.write_text(empirical("hospital-a").to_json())
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", str(home), "--format", "markdown", "--empirical", str(result_file)])
    assert ok.exit_code == 0 and "**Empirical audit.**" in ok.output and "no violation found" in ok.output
    # an empirical violation fails the audit, as a failed ledger check does
    result_file.write_text(empirical("hospital-a", lower=3.1, control="noise x0.2").to_json())
    bad = runner.invoke(
        app, ["audit", "ledgers", str(home), "--format", "html", "--empirical", str(result_file)]
    )
    assert bad.exit_code == 1 and "VIOLATION" in bad.output and "Positive control: noise x0.2" in bad.output
    as_json = runner.invoke(app, ["audit", str(home), "--format", "json", "--empirical", str(result_file)])
    assert as_json.exit_code == 1 and '"violation": true' in as_json.output
    (tmp_path / "junk.json").write_text("{}")
    junk = runner.invoke(app, ["audit", str(home), "--empirical", str(tmp_path / "junk.json")])
    assert junk.exit_code == 2 and "not an empirical audit result" in junk.output

"""The signed ledger and `mmfed audit`: every kind of tampering is named; honest ledgers verify."""

import json

import pytest
from typer.testing import CliRunner

from mmfed.audit.check import audit_ledger, find_ledgers
from mmfed.cli import app
from mmfed.errors import MMFedError
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.budget import LEDGER, Proposal, SiteBudget
from mmfed.privacy.policy import SitePolicy


def make_site(tmp_path, name="hospital-a", rounds=5, cap=20.0, sigma=1.1):
    """A site home with a policy, a key and `rounds` genuinely planned and released rounds."""
    home = tmp_path / name
    home.mkdir()
    (home / "site.toml").write_text(SitePolicy(max_epsilon=cap).template())
    site_keys.create_key(home)
    budget = SiteBudget(home, "sha256:" + "cd" * 32, site=name)
    offer = Proposal(
        noise_multiplier=sigma,
        target_epsilon=0.0,
        max_grad_norm=1.0,
        batch_size=50,
        local_epochs=1,
        rounds=rounds,
        modalities=("image",),
    )
    for rnd in range(1, rounds + 1):
        plan = budget.plan(offer, public_examples=400)
        after = [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
        budget.release(plan, after, run_id="run-1", round=rnd, extra={})
    return home


def lines_of(home):
    return (home / LEDGER).read_bytes().splitlines()


def write_lines(home, lines):
    (home / LEDGER).write_bytes(b"\n".join(lines) + b"\n")


def first_problem(home, **kw):
    result = audit_ledger(home / LEDGER, home, **kw)
    return result.problems[0] if result.problems else None


def test_untouched_ledger_verifies_and_recomputes(tmp_path):
    home = make_site(tmp_path)
    for thorough in (False, True):
        result = audit_ledger(home / LEDGER, home, thorough=thorough)
        assert result.ok, result.problems
        (budget,) = result.budgets
        assert budget.releases == 5 and budget.cap == 20.0
        assert budget.epsilon_prv == pytest.approx(budget.cap - budget.remaining)
        assert budget.checks["rdp_dp_accounting"] == pytest.approx(budget.epsilon_rdp, rel=0.01)
    assert budget.checks["prv_opacus"] == pytest.approx(budget.epsilon_prv, rel=1e-6)  # thorough
    assert budget.checks["pld_dp_accounting"] == pytest.approx(budget.epsilon_prv, rel=0.02)


def edit(line: bytes, **changes) -> bytes:
    entry = json.loads(line)
    entry.update(changes)
    return ledger.canonical(entry)


@pytest.mark.parametrize("where", [1, 4])  # a middle entry, and the last one
def test_edited_entry_is_named(tmp_path, where):
    home = make_site(tmp_path)
    lines = lines_of(home)
    lines[where] = edit(lines[where], epsilon_prv=0.01)
    write_lines(home, lines)
    problem = first_problem(home)
    assert f"line {where + 1}:" in problem and f"entry {where}" in problem and "edited" in problem


def test_deleted_entry_is_named(tmp_path):
    home = make_site(tmp_path)
    lines = lines_of(home)
    del lines[2]
    write_lines(home, lines)
    assert "entry 3 found where entry 2 belongs: an entry was deleted" in first_problem(home)


def test_reordered_entries_are_named(tmp_path):
    home = make_site(tmp_path)
    lines = lines_of(home)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(home, lines)
    assert "entry 2 found where entry 1 belongs: an entry was reordered" in first_problem(home)


def test_forged_entry_is_named(tmp_path):
    """Appended with a correct chain and index, claiming the site's key, but not signed by it."""
    home = make_site(tmp_path)
    lines = lines_of(home)
    forged = json.loads(lines[-1])
    forged.update(index=5, round=6, prev_hash=ledger.line_hash(lines[-1]), epsilon_prv=forged["epsilon_prv"])
    forged["signature"] = json.loads(lines[0])["signature"]
    write_lines(home, [*lines, ledger.canonical(forged)])
    problem = first_problem(home)
    assert "line 6" in problem and "entry 5" in problem and "forged" in problem


def test_entry_signed_with_another_key_is_named(tmp_path):
    home = make_site(tmp_path)
    other = make_site(tmp_path, name="intruder")
    lines = lines_of(home)
    intruder = site_keys.load_private_key(other)
    # re-sign entries 3 and 4 with the intruder's key, keeping the chain intact
    kept = lines[:3]
    for line in lines[3:]:
        entry = json.loads(line)
        entry = {k: v for k, v in entry.items() if k not in ("signature", "index", "prev_hash", "key_id")}
        (home / LEDGER).write_bytes(b"\n".join(kept) + b"\n")
        ledger.append(home / LEDGER, intruder, entry)
        kept = lines_of(home)
    problem = first_problem(home)
    assert (
        "line 4" in problem
        and "entry 3 is signed by key ed25519:" in problem
        and "not the site's key" in problem
    )


def test_wrong_public_key_fails_on_the_first_entry(tmp_path):
    home = make_site(tmp_path)
    other = make_site(tmp_path, name="other")
    result = audit_ledger(home / LEDGER, None, public_key=other / site_keys.PUBLIC_KEY)
    assert not result.ok and "line 1" in result.problems[0] and "not the site's key" in result.problems[0]


def test_signed_but_wrong_epsilon_is_flagged_by_recomputation(tmp_path):
    """A site that signs a wrong ε (a bug, or a lie) is caught by the independent accountants."""
    home = make_site(tmp_path, rounds=2)
    key = site_keys.load_private_key(home)
    last = json.loads(lines_of(home)[-1])
    fields = {k: v for k, v in last.items() if k not in ("signature", "index", "prev_hash", "key_id")}
    fields.update(round=3, epsilon_rdp=last["epsilon_rdp"] * 0.5, epsilon_prv=last["epsilon_prv"] * 0.5)
    ledger.append(home / LEDGER, key, fields)
    problems = audit_ledger(home / LEDGER, home).problems
    assert any("line 3" in p and "epsilon_rdp" in p and "recomputed" in p for p in problems), problems
    assert any("decreased" in p for p in problems)
    # the budget file never saw round 3: noted (a crash between ledger and state looks the same)
    assert any("past the site's saved state" in n for n in audit_ledger(home / LEDGER, home).notes)


def test_audit_cli_exit_codes_formats_and_plot(tmp_path):
    ok = make_site(tmp_path, name="ok-site", rounds=3)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(ok), "--format", "json", "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["sites"][0]["budgets"][0]["rounds"] == 3
    assert (tmp_path / "plots" / "epsilon_per_round.png").stat().st_size > 0
    # a site over its cap (the cap lowered after the fact) fails the audit
    (ok / "site.toml").write_text(SitePolicy(max_epsilon=0.5).template())
    result = runner.invoke(app, ["audit", str(ok), "--format", "md"])
    assert result.exit_code == 1 and "over its cap 0.500" in result.output and "OVER CAP" in result.output
    broken = make_site(tmp_path, name="broken", rounds=3)
    lines = lines_of(broken)
    write_lines(broken, [lines[0], lines[2]])
    result = runner.invoke(app, ["audit", str(tmp_path), "--format", "html"])  # a folder of site homes
    assert result.exit_code == 1 and "entry 2 found where entry 1 belongs" in result.output
    assert "<table>" in result.output
    assert len(find_ledgers([tmp_path])) == 2
    result = runner.invoke(app, ["audit", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2 and "no such ledger" in result.output


def test_epsilon_recorded_is_the_cumulative_one(tmp_path):
    home = make_site(tmp_path, rounds=4)
    entries = [json.loads(x) for x in lines_of(home)]
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
    assert entries[-1]["epsilon_prv"] == pytest.approx(accounting.epsilon_prv(history, 1e-5), abs=1e-9)
    assert entries[-1]["epsilon_prv"] > 1.5 * accounting.epsilon_prv(history[:1], 1e-5)


def test_a_site_that_changed_its_delta_still_verifies(tmp_path):
    home = make_site(tmp_path, rounds=2)
    (home / "site.toml").write_text(SitePolicy(max_epsilon=20.0, delta=1e-6).template())
    budget = SiteBudget(home, "sha256:" + "cd" * 32, site="hospital-a")
    offer = Proposal(
        noise_multiplier=1.1, target_epsilon=0.0, max_grad_norm=1.0, batch_size=50, local_epochs=1,
        rounds=3, modalities=("image",),
    )  # fmt: skip
    plan = budget.plan(offer, public_examples=400)
    budget.release(
        plan,
        [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)],
        run_id="r2",
        round=1,
        extra={},
    )
    result = audit_ledger(home / LEDGER, home, thorough=True)
    assert result.ok, result.problems
    assert any("different δ" in n for n in result.notes)


# -- a lost key is never replaced silently (the forged-history attack) --------------------------------
def test_a_site_that_lost_its_key_never_signs_again_with_a_new_one(tmp_path):
    home = make_site(tmp_path, rounds=2)
    public = (home / site_keys.PUBLIC_KEY).read_bytes()
    (home / site_keys.PRIVATE_KEY).unlink()  # the attacker (or an accident) deletes the signing key
    with pytest.raises(MMFedError, match="restore the private key"):
        site_keys.create_key(home)
    # a simulated site would make a key on first use: not while its ledger exists
    (home / site_keys.PUBLIC_KEY).unlink()
    with pytest.raises(MMFedError, match="restore the private key"):
        SiteBudget(home, "sha256:" + "cd" * 32, site="h", simulated_policy=SitePolicy(max_epsilon=20.0))
    assert not (home / site_keys.PRIVATE_KEY).exists()
    (home / site_keys.PUBLIC_KEY).write_bytes(public)
    # and `mmfed site init` after a lost key keeps the public key and says what to do
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.csv").write_text("id,label,split,image\n")
    (site / "keys").mkdir()
    (site / site_keys.PUBLIC_KEY).write_bytes(public)
    result = CliRunner().invoke(app, ["site", "init", "--dir", str(site)])
    assert result.exit_code == 2 and (site / site_keys.PUBLIC_KEY).read_bytes() == public
    assert not (site / site_keys.PRIVATE_KEY).exists()


def test_a_garbage_private_key_is_named_not_a_traceback(tmp_path):
    site_keys.create_key(tmp_path)
    (tmp_path / site_keys.PRIVATE_KEY).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(MMFedError, match="not a readable PEM private key"):
        site_keys.load_private_key(tmp_path)


def test_the_audit_flags_a_delta_not_below_one_over_the_public_size(tmp_path):
    home = make_site(tmp_path, rounds=2)
    lines = lines_of(home)
    key = site_keys.load_private_key(home)
    # an old entry written before the plan refused it: re-signed as the site would have
    entry = json.loads(lines[0])
    fields = {k: v for k, v in entry.items() if k not in ("index", "prev_hash", "key_id", "signature")}
    fields["public_examples"] = round(1 / entry["delta"])
    (home / LEDGER).unlink()
    ledger.append(home / LEDGER, key, fields)
    result = audit_ledger(home / LEDGER, None, public_key=home / site_keys.PUBLIC_KEY)
    assert not result.ok and any("is not below 1/100000" in p for p in result.problems)

"""One budget per site, rebuilt from its verified ledger: the attacks a site's own IT staff (or an
intruder on its machine) could try, replayed; the site refuses live, or the audit names what happened."""

import json
import shutil

import pytest

from mmfed.audit.check import audit_ledger
from mmfed.privacy import accounting, ledger, site_keys
from mmfed.privacy.budget import BUDGET, BUDGETS, LEDGER, LedgerRefusal, Proposal, Refusal, SiteBudget
from mmfed.privacy.policy import SitePolicy

OFFER = Proposal(1.0, 0.0, 1.0, 32, 1, 5, ("image",))


def site(tmp_path, fingerprint="a", cap=50.0) -> SiteBudget:
    home = tmp_path / "site"
    if not home.exists():
        home.mkdir()
        (home / "site.toml").write_text(SitePolicy(max_epsilon=cap, max_sample_rate=1.0).template())
        site_keys.create_key(home)
    return SiteBudget(home, "sha256:" + fingerprint * 64, site="hospital-a")


def release(budget: SiteBudget, rounds: int, run: str = "r1") -> None:
    for rnd in range(1, rounds + 1):
        with budget.exclusive():
            plan = budget.plan(OFFER, public_examples=400)
            after = [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
            budget.release(plan, after, run_id=run, round=rnd, extra={})


def test_editing_records_never_starts_a_fresh_budget(tmp_path):
    """Four data versions (each a record shorter), two rounds each: one history, one cap."""
    for version in "abcd":
        release(site(tmp_path, version), 2, run=f"run-{version}")
    budget = site(tmp_path, "e")
    assert sum(steps for *_, steps in budget.history()) == 8 * 13
    spent, _ = budget.spent()
    assert spent == pytest.approx(accounting.epsilon_prv([(1.0, 1 / 13, 8 * 13)], 1e-5))
    assert spent > accounting.epsilon_prv([(1.0, 1 / 13, 2 * 13)], 1e-5) + 1  # far above any version's
    entries = [json.loads(x) for x in ledger.read_lines(budget.ledger_path)]
    assert [e["epsilon_prv"] for e in entries] == sorted(e["epsilon_prv"] for e in entries)
    assert all(e["budget"] == "site" for e in entries)
    # the cap binds across versions
    (budget.home / "site.toml").write_text(
        SitePolicy(max_epsilon=spent + 0.01, max_sample_rate=1.0).template()
    )
    with pytest.raises(Refusal) as refused:
        site(tmp_path, "f").plan(OFFER, public_examples=400)
    assert refused.value.code == "budget"
    report = audit_ledger(budget.ledger_path, budget.home)
    assert report.ok and report.budgets[0].data_versions == 4 and report.budgets[0].releases == 8


def test_restoring_only_the_ledger_or_only_the_state_is_refused(tmp_path):
    budget = site(tmp_path)
    release(budget, 2)
    backup = tmp_path / "backup"
    shutil.copytree(budget.home / "state", backup)
    release(budget, 2, run="r2")
    # the ledger from the backup, the state from today: the ledger is behind the site's high-water mark
    shutil.copy(backup / "ledger.jsonl", budget.ledger_path)
    with pytest.raises(LedgerRefusal, match="truncated or rolled back"):
        budget.plan(OFFER, public_examples=400)
    assert "rolled back" in " ".join(audit_ledger(budget.ledger_path, budget.home).problems)


def test_an_emptied_ledger_or_a_replaced_accountant_state_is_refused_naming_both(tmp_path):
    budget = site(tmp_path)
    release(budget, 3)
    lines = budget.ledger_path.read_bytes()
    state = json.loads((budget.home / BUDGET).read_text())
    budget.ledger_path.write_bytes(b"")
    with pytest.raises(LedgerRefusal, match="missing or empty"):
        budget.plan(OFFER, public_examples=400)
    budget.ledger_path.write_bytes(lines)
    replaced = {**state, "accountant": {"mechanism": "prv", "history": []}, "ledger_head": None}
    (budget.home / BUDGET).write_text(json.dumps(replaced))
    with pytest.raises(LedgerRefusal, match="3 entries past the last release") as refused:
        budget.plan(OFFER, public_examples=400)
    assert refused.value.code == "ledger"
    edited = {**state, "accountant": {"mechanism": "prv", "history": [[1.0, 1 / 13, 13]]}}
    (budget.home / BUDGET).write_text(json.dumps(edited))
    with pytest.raises(LedgerRefusal, match="holds 13 steps") as refused:
        budget.plan(OFFER, public_examples=400)
    assert "holds 39 steps" in str(refused.value)


def test_an_edited_entry_is_refused_before_the_next_round(tmp_path):
    budget = site(tmp_path)
    release(budget, 2)
    lines = ledger.read_lines(budget.ledger_path)
    entry = json.loads(lines[0])
    entry["noise_multiplier"] = 50.0  # as if the first round had added far more noise
    budget.ledger_path.write_bytes(ledger.canonical(entry) + b"\n" + lines[1] + b"\n")
    with pytest.raises(LedgerRefusal, match="ledger"):
        budget.plan(OFFER, public_examples=400)


def test_a_crash_between_ledger_and_state_loses_nothing(tmp_path):
    budget = site(tmp_path)
    release(budget, 1)
    state = (budget.home / BUDGET).read_bytes()
    release(budget, 1, run="r2")
    (budget.home / BUDGET).write_bytes(state)  # the state write of round 2 never happened
    assert sum(steps for *_, steps in budget.history()) == 26  # the ledger's entry counts


def test_per_fingerprint_state_of_an_older_site_migrates_composed(tmp_path):
    """A site from before one budget per site: entries without `budget`, one accountant file per data."""
    home = tmp_path / "site"
    home.mkdir()
    (home / "site.toml").write_text(SitePolicy(max_epsilon=50.0, max_sample_rate=1.0).template())
    key = site_keys.create_key(home)
    (home / "state" / "budget").mkdir(parents=True)
    for fingerprint, rounds in (("a", 2), ("b", 3)):
        fp = "sha256:" + fingerprint * 64
        for k in range(1, rounds + 1):
            eps = accounting.epsilon_prv([(1.0, 1 / 13, 13 * k)], 1e-5)
            rdp = accounting.epsilon_rdp([(1.0, 1 / 13, 13 * k)], 1e-5)
            ledger.append(home / LEDGER, key, {
                "run_id": "old", "round": k, "time": "2026-11-30T00:00:00+00:00", "data_fingerprint": fp,
                "noise_multiplier": 1.0, "sample_rate": 1 / 13, "steps": 13, "max_grad_norm": 1.0,
                "delta": 1e-5, "epsilon_prv": eps, "epsilon_rdp": rdp,
            })  # fmt: skip
        (home / BUDGETS / f"{fp.replace(':', '-')}.json").write_text(
            json.dumps(
                {
                    "fingerprint": fp,
                    "accountant": {"mechanism": "prv", "history": [[1.0, 1 / 13, 13 * rounds]]},
                }
            )
        )
    # the old per-data audit passed both versions; the site-wide one sees 5 rounds against the cap
    report = audit_ledger(home / LEDGER, home)
    assert report.budgets[0].epsilon_prv == pytest.approx(accounting.epsilon_prv([(1.0, 1 / 13, 65)], 1e-5))
    larger_version = accounting.epsilon_prv([(1.0, 1 / 13, 39)], 1e-5)
    (home / "site.toml").write_text(
        SitePolicy(max_epsilon=larger_version + 0.01, max_sample_rate=1.0).template()
    )
    assert not audit_ledger(home / LEDGER, home).ok  # over its cap, site-wide
    (home / "site.toml").write_text(SitePolicy(max_epsilon=50.0, max_sample_rate=1.0).template())
    budget = SiteBudget(home, "sha256:" + "c" * 64, site="hospital-a")
    assert sum(steps for *_, steps in budget.history()) == 65  # composed, never dropped
    assert json.loads((home / BUDGET).read_text())["ledger_head"]["index"] == 4
    release(budget, 1, run="new")
    assert audit_ledger(home / LEDGER, home).ok
    # a legacy file missing is refused, never a fresh budget
    (home / BUDGET).unlink()
    next(iter((home / BUDGETS).iterdir())).unlink()
    with pytest.raises(LedgerRefusal, match="never reset"):
        SiteBudget(home, "sha256:" + "c" * 64, site="hospital-a").history()


# -- key rotation ---------------------------------------------------------------------------------------
def test_a_rotated_key_keeps_the_chain_of_trust_and_the_budget(tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app

    budget = site(tmp_path)
    release(budget, 2)
    original = site_keys.load_public_key(budget.home / site_keys.PUBLIC_KEY)
    done = CliRunner().invoke(app, ["site", "rotate-key", "--dir", str(budget.home)])
    assert done.exit_code == 0, done.output
    assert site_keys.key_id(
        site_keys.load_public_key(budget.home / site_keys.PUBLIC_KEY)
    ) != site_keys.key_id(original)
    assert list((budget.home / "keys" / "retired").glob("*.pub.pem"))
    again = site(tmp_path)  # the new key, and the history it inherits
    release(again, 1, run="r2")
    assert sum(steps for *_, steps in again.history()) == 39
    # the privacy officer's original key still verifies the whole ledger, rotation included
    (tmp_path / "original.pem").write_bytes(
        (
            budget.home / "keys" / "retired" / f"{site_keys.key_id(original).split(':')[1]}.pub.pem"
        ).read_bytes()
    )
    report = audit_ledger(budget.ledger_path, None, public_key=tmp_path / "original.pem")
    assert report.ok, report.problems
    assert any("rotated to" in n and "announced by the previous key" in n for n in report.notes)
    assert audit_ledger(budget.ledger_path, budget.home).ok  # the site dir: current + retired keys


def test_a_lost_key_is_replaced_only_by_a_recorded_rotation_every_audit_reports(tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app

    budget = site(tmp_path)
    release(budget, 1)
    (budget.home / site_keys.PRIVATE_KEY).unlink()
    plain = CliRunner().invoke(app, ["site", "rotate-key", "--dir", str(budget.home)])
    assert plain.exit_code == 2  # without --lost the old key must sign
    lost = CliRunner().invoke(app, ["site", "rotate-key", "--dir", str(budget.home), "--lost"])
    assert lost.exit_code == 0, lost.output
    release(site(tmp_path), 1, run="r2")
    report = audit_ledger(budget.ledger_path, budget.home)
    assert report.ok and any("LOST" in n for n in report.notes)
    # a forged history on a new key (the attack the rotation must not enable) still fails the audit
    lines = ledger.read_lines(budget.ledger_path)
    entry = json.loads(lines[0])
    entry["noise_multiplier"] = 50.0
    budget.ledger_path.write_bytes(b"\n".join([ledger.canonical(entry), *lines[1:]]) + b"\n")
    assert not audit_ledger(budget.ledger_path, budget.home).ok


def test_an_emptied_ledger_fails_the_audit_when_the_site_has_released(tmp_path):
    budget = site(tmp_path)
    release(budget, 2)
    budget.ledger_path.write_bytes(b"")
    report = audit_ledger(budget.ledger_path, budget.home)
    assert not report.ok and any("released up to entry 1" in p for p in report.problems)


def test_a_crash_during_the_first_release_recovers_but_a_deleted_state_does_not(tmp_path):
    budget = site(tmp_path)
    release(budget, 1)
    (budget.home / BUDGET).unlink()  # the first release's state write never happened
    assert sum(steps for *_, steps in site(tmp_path).history()) == 13
    release(budget, 1, run="r2")
    (budget.home / BUDGET).unlink()  # two releases, no state: deleted, not a crash
    with pytest.raises(LedgerRefusal, match="never reset"):
        site(tmp_path).history()

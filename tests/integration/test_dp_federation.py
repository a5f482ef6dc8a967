"""DP federations on the real ServerApp/ClientApp (in-process grid): ε composes across rounds and runs,
a site's policy is enforced by the site, and the server reports what the sites spent."""

import json
import shutil

import pytest
from localgrid import run_federation as run

from mmfed.audit.check import audit_ledger
from mmfed.errors import MMFedError
from mmfed.federation.run_task import run_scenario, run_task
from mmfed.privacy import accounting
from mmfed.privacy.budget import LEDGER, dp_geometry
from mmfed.privacy.geometry import rounded_size
from mmfed.privacy.policy import SitePolicy
from mmfed.site import sitelog
from mmfed.site.loading import site_samples


@pytest.fixture
def cfg(small_federation, tmp_path):
    return small_federation(
        rounds=3, batch_size=8, noise_multiplier=1.2, max_grad_norm=1.0, run_dir=str(tmp_path / "run1")
    )


def ledger_entries(cfg, site):
    path = f"{cfg.state_dir}/{site}/{LEDGER}"
    return [json.loads(x) for x in open(path).read().splitlines()]


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_epsilon_composes_across_rounds_and_runs(cfg, tmp_path):
    first = run(cfg)
    # a second run on the same sites' data and state dir, with other noise: the budget continues
    second_cfg = cfg.replace(rounds=2, noise_multiplier=2.0, run_dir=str(tmp_path / "run2"))
    second = run(second_cfg)
    assert first["rounds_completed"] == 3 and second["rounds_completed"] == 2
    site = "site_00000"
    entries = ledger_entries(cfg, site)
    assert [(e["run_id"] == entries[0]["run_id"], e["round"]) for e in entries] == [
        (True, 1),
        (True, 2),
        (True, 3),
        (False, 1),
        (False, 2),
    ]
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
    assert {h[0] for h in history} == {1.2, 2.0}
    whole = accounting.epsilon_prv(history, 1e-5)
    reported = second["site_epsilon"][site]["epsilon_prv"]
    assert abs(reported - whole) <= 1e-6
    assert second["site_epsilon"][site]["epsilon_rdp"] == pytest.approx(accounting.epsilon_rdp(history, 1e-5))
    assert all(reported > accounting.epsilon_prv([h], 1e-5) for h in history)
    assert reported > first["site_epsilon"][site]["epsilon_prv"]
    assert second["epsilon_prv_max"] == max(e["epsilon_prv"] for e in second["site_epsilon"].values())
    # per-round metrics carry the sites' cumulative ε; the ledger verifies end to end
    rows = [json.loads(x) for x in open(f"{second_cfg.run_dir}/metrics.jsonl").read().splitlines()]
    glob = [r for r in rows if r["kind"] == "global"]
    assert glob[-1]["epsilon_prv_max"] == pytest.approx(second["epsilon_prv_max"])
    assert set(glob[-1]["site_epsilon_prv"]) == {"site_00000", "site_00001", "site_00002"}
    home = tmp_path / "state" / site
    assert audit_ledger(home / LEDGER, home, thorough=True).ok


def test_site_over_its_cap_refuses_and_the_run_goes_on(cfg, tmp_path):
    scenario = run_scenario(cfg, run_task(cfg))
    _, samples = site_samples(cfg, scenario, 1, cfg.sites)
    train = sum(s.split == "train" for s in samples)
    q, steps = dp_geometry(rounded_size(train), cfg.batch_size, cfg.local_epochs)
    one, two = (accounting.epsilon_prv([(1.2, q, steps * k)], 1e-5) for k in (1, 2))
    home = tmp_path / "state" / "site_00001"
    home.mkdir(parents=True)
    (home / "site.toml").write_text(SitePolicy(max_epsilon=(one + two) / 2, max_sample_rate=1.0).template())
    summary = run(cfg)
    assert summary["rounds_completed"] == 3 and summary["stopped"] is None
    rows = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl").read().splitlines()]
    status = {(r["round"], r["site"]): r["status"] for r in rows if r["kind"] == "fit"}
    assert status[(1, "site_00001")] == "accepted"
    assert status[(2, "site_00001")] == status[(3, "site_00001")] == "refused"
    assert all(status[(r, s)] == "accepted" for r in (1, 2, 3) for s in ("site_00000", "site_00002"))
    refusal = next(r for r in rows if r.get("status") == "refused")
    assert "max_epsilon" in refusal["reason"] and "site_00001" in refusal["reason"]
    glob = [r for r in rows if r["kind"] == "global"]
    assert [g["sites_refused"] for g in glob] == [0, 1, 1]
    assert [g["sites_accepted"] for g in glob] == [3, 2, 2]
    assert "site_00001" in summary["sites_refused"]
    assert len(ledger_entries(cfg, "site_00001")) == 1  # no entry for the refused rounds
    assert len(ledger_entries(cfg, "site_00000")) == 3
    assert summary["site_epsilon"]["site_00001"]["epsilon_prv"] == pytest.approx(one, abs=1e-9)


@pytest.mark.slow  # two DP rounds, ~10 s (minutes on a loaded machine)
def test_site_max_epsilon_caps_the_simulated_sites_that_have_no_policy_of_their_own(cfg, tmp_path):
    scenario = run_scenario(cfg, run_task(cfg))
    spent = []
    for index in (0, 1):
        _, samples = site_samples(cfg, scenario, index, cfg.sites)
        q, steps = dp_geometry(
            rounded_size(sum(s.split == "train" for s in samples)), cfg.batch_size, cfg.local_epochs
        )
        spent.append([accounting.epsilon_prv([(1.2, q, steps * k)], 1e-5) for k in (1, 2)])
    cap = (max(one for one, _ in spent) + min(two for _, two in spent)) / 2
    own = tmp_path / "state" / "site_00002"
    own.mkdir(parents=True)
    (own / "site.toml").write_text(SitePolicy(max_epsilon=100.0, max_sample_rate=1.0).template())
    summary = run(cfg.replace(rounds=2, min_sites=1, site_max_epsilon=cap))
    rows = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl").read().splitlines()]
    status = {(r["round"], r["site"]): r for r in rows if r["kind"] == "fit"}
    assert all(status[(1, f"site_0000{i}")]["status"] == "accepted" for i in range(3))
    for site in ("site_00000", "site_00001"):  # the default policy's cap: round 2 would pass it
        assert status[(2, site)]["status"] == "refused" and "(budget)" in status[(2, site)]["reason"]
        (entry,) = ledger_entries(cfg, site)
        assert entry["max_epsilon"] == pytest.approx(cap)  # signed into the ledger, so the audit sees it
        home = tmp_path / "state" / site
        (budget,) = audit_ledger(home / LEDGER, home).budgets
        assert budget.cap == pytest.approx(cap) and not budget.over_cap
    assert status[(2, "site_00002")]["status"] == "accepted"  # its own site.toml wins
    assert summary["rounds_completed"] == 2


def test_non_private_run_leaves_no_privacy_state_but_a_site_policy_refuses_it(cfg, tmp_path):
    plain = cfg.replace(noise_multiplier=0.0, rounds=1)
    home = tmp_path / "state" / "site_00002"
    home.mkdir(parents=True)
    (home / "site.toml").write_text(SitePolicy().template())
    summary = run(plain)
    assert summary["private"] is False and summary["site_epsilon"] == {}
    assert "no differential privacy" in summary["sites_refused"]["site_00002"]
    assert not (tmp_path / "state" / "site_00000").exists()  # no policy, no DP: nothing recorded


def test_initial_model_with_frozen_encoders_trains_only_fusion(cfg, tmp_path):
    import torch
    from safetensors.numpy import load_file

    from mmfed.checkpoint import save_checkpoint
    from mmfed.errors import MMFedError
    from mmfed.models import build_model

    torch.manual_seed(123)
    public = build_model(run_task(cfg).model_config())
    save_checkpoint(public, tmp_path / "public.safetensors", {"note": "public data"})
    tuned = cfg.replace(rounds=1, initial_model=str(tmp_path / "public.safetensors"), freeze_encoders=True)
    assert run(tuned)["rounds_completed"] == 1
    after = load_file(f"{cfg.run_dir}/checkpoints/round_0001.safetensors")
    start = {k: v.numpy() for k, v in public.state_dict().items()}
    encoders = [k for k in start if k.startswith("encoders.")]
    assert encoders and all((after[k] == start[k]).all() for k in encoders)
    assert any((after[k] != start[k]).any() for k in start if k.startswith("fusion."))
    # weights that do not fit the run's model are refused, naming the file
    other = build_model(run_task(cfg.replace(fusion="late")).model_config())
    save_checkpoint(other, tmp_path / "other.safetensors", {})
    wanted = r"other.safetensors: these weights are of another model \(.*missing"
    with pytest.raises(MMFedError, match=wanted):
        run(cfg.replace(run_dir=str(tmp_path / "run3"), initial_model=str(tmp_path / "other.safetensors")))


def test_deployed_sites_keep_budget_and_ledger_in_their_own_directory(cfg, tmp_path):
    from mmfed.data.scenarios.synthetic import synthetic_site
    from mmfed.privacy import site_keys

    sites = [synthetic_site(tmp_path / "hospital", i, samples=40, modalities="image,audio") for i in range(3)]
    for site in sites[:2]:  # `mmfed site init` done at two sites; the third never set up its privacy
        policy = SitePolicy(
            max_epsilon=50.0, max_sample_rate=1.0, public_examples=30, held_modalities=("image", "audio")
        )
        (site / "site.toml").write_text(policy.template())
        site_keys.create_key(site)
    run(cfg.replace(rounds=1), node_configs=[{"site-dir": str(s)} for s in sites])
    rows = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl").read().splitlines()]
    fits = {r["site"]: r for r in rows if r["kind"] == "fit"}
    assert fits[sites[0].name]["status"] == fits[sites[1].name]["status"] == "accepted"
    # the server learns a code and a generic sentence; the site's own log says what to do
    assert fits[sites[2].name]["status"] == "failed" and fits[sites[2].name]["code"] == "setup"
    assert str(sites[2]) not in fits[sites[2].name]["reason"]
    assert "mmfed site init" in (sites[2] / sitelog.LOG).read_text()
    for site in sites[:2]:
        (entry,) = [json.loads(x) for x in (site / LEDGER).read_text().splitlines()]
        assert entry["max_epsilon"] == 50.0 and entry["round"] == 1
        assert audit_ledger(site / LEDGER, site).ok
    assert not (tmp_path / "state").exists()  # deployed sites never use the simulation state dir


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_a_site_restored_from_backup_is_caught_by_the_servers_anchors(cfg, tmp_path):
    """Backup after round 1, two more rounds, the backup put back (ledger and state together, which the
    site alone cannot tell): the resumed run hands the site its anchored head, and it refuses; the audit
    with --anchors names the site and round whose head is gone."""
    from typer.testing import CliRunner

    from mmfed.cli import app

    run(cfg.replace(rounds=1))
    home = tmp_path / "state" / "site_00001"
    shutil.copytree(home / "state", tmp_path / "backup")
    run(cfg.replace(rounds=3, resume=True))
    anchors = [json.loads(x) for x in open(f"{cfg.run_dir}/anchors.jsonl")]
    assert {(a["site"], a["round"]) for a in anchors} == {
        (f"site_0000{i}", r) for i in range(3) for r in (1, 2, 3)
    }
    shutil.rmtree(home / "state")
    shutil.copytree(tmp_path / "backup", home / "state")
    run(cfg.replace(rounds=4, resume=True))
    rows = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl")]
    (row,) = [r for r in rows if r["kind"] == "fit" and r["round"] == 4 and r["site"] == "site_00001"]
    assert row["status"] == "refused" and row["code"] == "ledger"
    assert "rolled back" in (home / sitelog.LOG).read_text()
    assert len(ledger_entries(cfg, "site_00001")) == 1  # nothing released on the restored ledger
    # emptying both the ledger and the state (which the site alone cannot tell from a new site)
    other = tmp_path / "state" / "site_00002" / "state"
    (other / "ledger.jsonl").write_bytes(b"")
    (other / "budget.json").unlink()
    with pytest.raises(MMFedError, match="only 1 usable"):  # two of three sites refuse: the run stops
        run(cfg.replace(rounds=5, resume=True))
    rows = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl")]
    (row,) = [r for r in rows if r["kind"] == "fit" and r["round"] == 5 and r["site"] == "site_00002"]
    assert row["status"] == "refused" and row["code"] == "ledger"
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "state"), "--anchors", cfg.run_dir])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "the server anchored entry 2" in text and "round 3" in text
    # the same check passes the untouched sites
    report = CliRunner().invoke(
        app, ["audit", str(tmp_path / "state"), "--anchors", cfg.run_dir, "--format", "json"]
    )
    verdicts = {s["site"]: s["ok"] for s in json.loads(report.stdout)["sites"]}
    assert verdicts == {"site_00000": True, "site_00001": False, "site_00002": False}


def test_a_shared_anchor_file_catches_a_rollback_between_runs(cfg, tmp_path):
    shared = str(tmp_path / "server" / "anchors.jsonl")
    first = cfg.replace(rounds=1, anchor_file=shared)
    run(first)
    home = tmp_path / "state" / "site_00000"
    shutil.copytree(home / "state", tmp_path / "backup")
    run(first.replace(rounds=1, run_dir=str(tmp_path / "run2")))
    shutil.rmtree(home / "state")
    shutil.copytree(tmp_path / "backup", home / "state")  # a consistent pair from before run 2
    run(first.replace(rounds=1, run_dir=str(tmp_path / "run3")))  # a new run: only the shared file knows
    rows = [json.loads(x) for x in open(tmp_path / "run3" / "metrics.jsonl")]
    (row,) = [r for r in rows if r["kind"] == "fit" and r["site"] == "site_00000"]
    assert row["status"] == "refused" and row["code"] == "ledger"
    assert len(open(shared).read().splitlines()) == 3 + 3 + 2  # every run appended its heads

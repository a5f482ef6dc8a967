"""SecAgg+ on the real ServerApp/ClientApp (in-process grid): the server only sees the sum, the sum is
FedAvg's, dropouts after key sharing are survived, and an update that does not fit is never clipped."""

import json

import numpy as np
import pytest
from localgrid import run_federation as run
from safetensors.numpy import load_file

import mmfed.server.secure as secure_mod
import mmfed.site.runtime as site_mod
from mmfed.errors import MMFedError
from mmfed.federation.secagg import shares


@pytest.fixture
def cfg(small_federation):
    return small_federation(samples_per_site=60)


def spy_sites(monkeypatch, fail: set[str] = frozenset()):
    """Record every site's (delta, examples); sites in `fail` raise after training (i.e. after SecAgg+'s
    key sharing, since fit runs in its masking stage)."""
    seen: dict[str, tuple[list[np.ndarray], int]] = {}
    real_fit = site_mod.SiteRuntime.fit

    def fit(self, weights, c, server_round, run_id="", **kwargs):
        update, n, metrics = real_fit(self, weights, c, server_round, run_id, **kwargs)
        if self.name in fail:
            raise RuntimeError(f"site {self.name}: lost power after key sharing")
        seen[self.name] = ([u.copy() for u in update], n)
        return update, n, metrics

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", fit)
    return seen


def fedavg(seen, names) -> list[np.ndarray]:
    total = sum(seen[n][1] for n in names)
    count = len(seen[names[0]][0])
    return [sum(seen[n][0][i].astype(np.float64) * seen[n][1] for n in names) / total for i in range(count)]


def global_step(cfg) -> list[np.ndarray]:
    """Round 1's change of the global model, in state_dict order (the server's initial model is seeded)."""
    from mmfed.federation.run_task import run_task
    from mmfed.models import build_model
    from mmfed.train.loop import seed_everything

    seed_everything(cfg.seed)
    state = build_model(run_task(cfg).model_config()).state_dict()
    after = load_file(f"{cfg.run_dir}/checkpoints/round_0001.safetensors")
    return [after[k].astype(np.float64) - v.numpy().astype(np.float64) for k, v in state.items()]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True) if x.size)


def test_share_settings_work_from_3_to_1000_sites():
    assert shares(3) == (1.0, 0.5) and shares(20) == (1.0, 0.5)
    assert shares(100) == (15, 8) and shares(1000) == (21, 11)


def test_secure_aggregate_equals_fedavg_and_the_strategy_never_sees_one_site(cfg, monkeypatch):
    seen = spy_sites(monkeypatch)
    received = []
    real = secure_mod.SecAggPlusFedAvg.aggregate_fit

    def spy(self, server_round, results, failures):
        received.extend(secure_mod.parameters_to_ndarrays(r.parameters) for _, r in results)
        return real(self, server_round, results, failures)

    monkeypatch.setattr(secure_mod.SecAggPlusFedAvg, "aggregate_fit", spy)
    secure = cfg.replace(secure_aggregation=True)
    assert run(secure)["rounds_completed"] == 1
    assert max_diff(global_step(secure), fedavg(seen, sorted(seen))) <= 1e-4
    # every result that reached the strategy holds the same aggregate, which is no site's own update
    assert len(received) == 3
    for arrays in received[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(arrays, received[0], strict=True))
    for name, (update, _) in seen.items():  # (the last two: summed coverage and evaluation sums)
        assert max_diff(received[0][:-2], update) > 1e-3, name
    rows = [json.loads(x) for x in open(f"{secure.run_dir}/metrics.jsonl").read().splitlines()]
    fits = [r for r in rows if r["kind"] == "fit"]
    assert {r["site"] for r in fits} == set(seen) and all(
        r["secure"] and "update_norm" not in r for r in fits
    )


def test_ten_sites_three_dropping_after_key_sharing_still_aggregate_the_survivors(cfg, monkeypatch):
    ten = cfg.replace(sites=10, samples_per_site=30, modalities="image", fusion="late", min_sites=5)
    dropped = {"site_00002", "site_00005", "site_00007"}
    seen = spy_sites(monkeypatch, fail=dropped)
    summary = run(ten.replace(secure_aggregation=True))
    assert summary["rounds_completed"] == 1 and summary["stopped"] is None
    assert sorted(seen) == sorted(f"site_{i:05d}" for i in range(10) if f"site_{i:05d}" not in dropped)
    assert max_diff(global_step(ten), fedavg(seen, sorted(seen))) <= 1e-4
    rows = [json.loads(x) for x in open(f"{ten.run_dir}/metrics.jsonl").read().splitlines()]
    failed = {r["site"] for r in rows if r["kind"] == "fit" and r["status"] == "failed"}
    assert failed == dropped  # named from the reason each dropped site sent
    (glob,) = [r for r in rows if r["kind"] == "global"]
    assert glob["sites_accepted"] == 7 and glob["sites_failed"] == 3


def test_an_update_outside_the_secagg_range_is_never_clipped_silently(cfg, tmp_path):
    tight = cfg.replace(secure_aggregation=True, secagg_clipping_range=1e-9)
    with pytest.raises(MMFedError, match="only 0 usable"):
        run(tight)
    rows = [json.loads(x) for x in open(f"{tight.run_dir}/metrics.jsonl").read().splitlines()]
    reasons = [r["reason"] for r in rows if r["kind"] == "fit"]
    assert reasons and all("secagg-clipping-range" in r for r in reasons)
    # the site's numbers stay in its own log
    assert all("largest update value" not in r for r in reasons)
    small = cfg.replace(secure_aggregation=True, secagg_max_examples=5, run_dir=str(tmp_path / "r2"))
    with pytest.raises(MMFedError):
        run(small)
    rows = [json.loads(x) for x in open(f"{small.run_dir}/metrics.jsonl").read().splitlines()]
    fits = [r for r in rows if r["kind"] == "fit"]
    assert fits and all(r["code"] == "secagg-weight" and "secagg-max-examples" in r["reason"] for r in fits)


def test_dp_and_secure_aggregation_together_keep_ledgers_and_epsilon(cfg):
    from mmfed.audit.check import audit_ledger
    from mmfed.privacy.budget import LEDGER
    from mmfed.privacy.policy import SitePolicy

    both = cfg.replace(secure_aggregation=True, noise_multiplier=1.0, rounds=2)
    home = f"{cfg.state_dir}/site_00001"
    import pathlib

    pathlib.Path(home).mkdir(parents=True)
    pathlib.Path(home, "site.toml").write_text(SitePolicy(max_epsilon=0.1, max_sample_rate=1.0).template())
    summary = run(both)
    assert summary["rounds_completed"] == 2
    assert set(summary["site_epsilon"]) == {"site_00000", "site_00002"}  # site_00001's cap: it refused
    assert "max_epsilon" in summary["sites_refused"]["site_00001"]
    for site in ("site_00000", "site_00002"):
        path = pathlib.Path(cfg.state_dir, site)
        assert len((path / LEDGER).read_text().splitlines()) == 2 and audit_ledger(path / LEDGER, path).ok

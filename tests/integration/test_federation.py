"""The real ServerApp and ClientApp on an in-process grid (tests/localgrid.py): no Ray, seconds."""

import json
from pathlib import Path

import numpy as np
import pytest
from localgrid import run_federation as run
from safetensors.numpy import load_file

import mmfed.site.runtime as site_mod
from mmfed.errors import ConfigError, MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.federation.params import check_update
from mmfed.site.sitelog import LOG

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "fed-cache"
    return FederationConfig(
        scenario="synthetic",
        sites=3,
        modalities="image,audio",
        rounds=2,
        batch_size=16,
        augment=False,
        cache_dir=str(cache),
        run_dir=str(tmp_path_factory.mktemp("run") / "run"),
        min_sites=2,
        site_wait_s=2,
    )


def rows(cfg, **match):
    lines = cfg.run_dir + "/metrics.jsonl"
    out = [json.loads(x) for x in open(lines).read().splitlines()]
    return [r for r in out if all(r.get(k) == v for k, v in match.items())]


def final_weights(cfg, round_):
    return load_file(f"{cfg.run_dir}/checkpoints/round_{round_:04d}.safetensors")


def test_federated_run_writes_metrics_checkpoints_summary_and_plots(cfg):
    summary = run(cfg)
    assert summary["rounds_completed"] == 2 and summary["stopped"] is None
    fits = rows(cfg, kind="fit")
    assert {(r["round"], r["site"], r["status"]) for r in fits} == {
        (rnd, f"site_{i:05d}", "accepted") for rnd in (1, 2) for i in range(3)
    }
    glob = rows(cfg, kind="global")
    assert [g["round"] for g in glob] == [1, 2] and all(g["sites_accepted"] == 3 for g in glob)
    assert glob[-1]["accuracy"] == summary["global_accuracy"]
    assert len(rows(cfg, kind="evaluate")) == 6
    # federated evaluation weights sites by examples: the global accuracy is the pooled accuracy
    ev = rows(cfg, kind="evaluate", round=2)
    pooled = sum(r["accuracy"] * r["examples"] for r in ev) / sum(r["examples"] for r in ev)
    assert abs(pooled - glob[-1]["accuracy"]) < 1e-9
    for name in ("config.json", "summary.json", "global_metrics.png", "site_accuracy.png"):
        assert (cfg.run_dir + "/" + name) and __import__("os").path.getsize(f"{cfg.run_dir}/{name}") > 0
    meta = json.load(open(f"{cfg.run_dir}/checkpoints/round_0002.json"))
    assert meta["round"] == 2 and meta["sites_accepted"] == 3 and meta["config_hash"]
    assert json.load(open(f"{cfg.run_dir}/checkpoints/latest.json"))["round"] == 2
    a, b = final_weights(cfg, 1), final_weights(cfg, 2)
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # the model moved


def corrupt(monkeypatch, site_name, how):
    real_fit = site_mod.SiteRuntime.fit

    def fit(self, weights, cfg, server_round, run_id="", **kwargs):
        update, n, metrics = real_fit(self, weights, cfg, server_round, run_id, **kwargs)
        if self.name == site_name:
            if how == "nan":
                update[0] = update[0] * np.nan
            elif how == "shape":
                update[1] = np.zeros((3, 3), np.float32)
            elif how == "oversized":
                update = [u + 50.0 for u in update]
            elif how == "raise":
                raise RuntimeError("disk full at the hospital")
        return update, n, metrics

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", fit)


@pytest.mark.parametrize(
    "how, status, needle",
    [
        ("nan", "rejected", "NaN"),
        ("shape", "rejected", "shape"),
        ("oversized", "rejected", "L2 norm"),
        ("raise", "failed", "failed (internal): internal error at the site"),
    ],
)
def test_bad_update_or_failing_site_is_named_and_round_completes(cfg, monkeypatch, how, status, needle):
    corrupt(monkeypatch, "site_00001", how)
    summary = run(cfg)
    assert summary["rounds_completed"] == 2 and summary["stopped"] is None
    bad = rows(cfg, kind="fit", site="site_00001")
    assert [r["status"] for r in bad] == [status, status] and needle in bad[0]["reason"]
    assert all(g["sites_accepted"] == 2 for g in rows(cfg, kind="global"))
    assert all(r["status"] == "accepted" for r in rows(cfg, kind="fit") if r["site"] != "site_00001")
    if how == "raise":  # the server gets the code; the site's own log keeps the exception and traceback
        assert "disk full" not in bad[0]["reason"]
        assert (
            "RuntimeError: disk full at the hospital" in open(f"{cfg.run_dir}/sites/site_00001/{LOG}").read()
        )


def test_aggregate_is_example_weighted_mean_of_accepted_deltas(cfg, monkeypatch):
    """Round 1 by hand: global + sum(n_i * delta_i) / sum(n_i) over the sites that were not rejected."""
    corrupt(monkeypatch, "site_00002", "nan")
    seen = {}
    real_fit = site_mod.SiteRuntime.fit

    def spy(self, weights, c, server_round, run_id="", **kwargs):
        out = real_fit(self, weights, c, server_round, run_id, **kwargs)
        if server_round == 1:
            seen[self.name] = (weights, out[0], out[1])
        return out

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", spy)
    run(cfg.replace(rounds=1))
    global0 = seen["site_00000"][0]
    good = [seen[s] for s in ("site_00000", "site_00001")]
    total = sum(n for _, _, n in good)
    expected = [g + sum(n * d[i] for _, d, n in good) / total for i, g in enumerate(global0)]
    from mmfed.federation.run_task import run_task
    from mmfed.models import build_model

    keys = list(build_model(run_task(cfg).model_config()).state_dict())
    saved = final_weights(cfg, 1)
    assert all(np.allclose(e, saved[k], atol=1e-6) for e, k in zip(expected, keys, strict=True))


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_resume_after_a_crash_gives_the_same_model_as_an_uninterrupted_run(cfg, monkeypatch, tmp_path):
    full = cfg.replace(rounds=3, run_dir=str(tmp_path / "full"))
    run(full)
    crashed = cfg.replace(rounds=3, run_dir=str(tmp_path / "crashed"))
    from mmfed.server.fedavg import DeltaFedAvg

    real = DeltaFedAvg.aggregate_evaluate

    def killed_in_round_3(self, server_round, results, failures):
        if self.round_of(server_round) == 3:
            raise KeyboardInterrupt("server killed")  # after round 3's fit rows were logged
        return real(self, server_round, results, failures)

    monkeypatch.setattr(DeltaFedAvg, "aggregate_evaluate", killed_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        run(crashed)
    monkeypatch.setattr(DeltaFedAvg, "aggregate_evaluate", real)
    # the crash came after round 3's checkpoint; drop it to resume from a mid-run state (round 2)
    import os

    os.remove(f"{crashed.run_dir}/checkpoints/round_0003.safetensors")
    with open(f"{crashed.run_dir}/checkpoints/latest.json", "w") as fh:
        json.dump({"round": 2, "file": "round_0002.safetensors"}, fh)
    with pytest.raises(MMFedError, match="--resume"):
        run(crashed)
    summary = run(crashed.replace(resume=True))
    assert summary["rounds_completed"] == 3
    a, b = final_weights(full, 3), final_weights(crashed, 3)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    assert [r["round"] for r in rows(crashed, kind="global")] == [1, 2, 3]  # no duplicated round rows
    assert len(rows(crashed, kind="fit", round=3)) == 3
    cfg_json = json.load(open(f"{crashed.run_dir}/config.json"))
    assert cfg_json["resumed"][0]["from_round"] == 2


def test_static_message_config_reaches_every_site_in_fit_and_evaluate(cfg, monkeypatch):
    import mmfed.server.run as run_mod
    from mmfed.site.client import SiteClient

    real_build = run_mod.build_strategy
    static = {"static-note": "T1 x-ray", "server-round": "x"}

    def build(*args, **kwargs):
        return real_build(*args, **{**kwargs, "message_config": {**kwargs["message_config"], **static}})

    monkeypatch.setattr(run_mod, "build_strategy", build)
    seen: list[tuple[str, dict]] = []
    for kind in ("fit", "evaluate"):
        real = getattr(SiteClient, kind)

        def spy(self, parameters, config, kind=kind, real=real):
            seen.append((kind, dict(config)))
            return real(self, parameters, config)

        monkeypatch.setattr(SiteClient, kind, spy)
    run(cfg.replace(rounds=1))
    assert sorted(k for k, _ in seen) == ["evaluate"] * 3 + ["fit"] * 3
    assert all(c["static-note"] == "T1 x-ray" for _, c in seen)
    from mmfed.federation.run_task import run_task
    from mmfed.task import Task

    assert all(Task.from_json(c["task"]) == run_task(cfg) for _, c in seen)  # every message: the task
    assert all(c["server-round"] == 1 and c["run-id"] for _, c in seen)  # the round's own keys win
    assert all("ledger-heads" in c for k, c in seen if k == "fit")


def test_resume_with_other_settings_is_refused(cfg):
    run(cfg.replace(rounds=1))
    with pytest.raises(MMFedError, match="fusion"):
        run(cfg.replace(rounds=2, resume=True, fusion="late"))


def test_fewer_sites_than_minimum_fails_clearly(cfg):
    with pytest.raises(MMFedError, match=r"only 1 site\(s\) connected .* min-sites=2"):
        run(cfg.replace(site_wait_s=0.5), nodes=1)


def test_too_few_usable_updates_stops_the_run_keeping_checkpoints(cfg, monkeypatch):
    calls = {"n": 0}
    real_fit = site_mod.SiteRuntime.fit

    def failing_from_round_2(self, weights, c, server_round, run_id="", **kwargs):
        if server_round >= 2 and self.name != "site_00000":
            raise RuntimeError("GPU fell off the bus")
        calls["n"] += 1
        return real_fit(self, weights, c, server_round, run_id, **kwargs)

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", failing_from_round_2)
    with pytest.raises(MMFedError, match="round 2: only 1 usable site update"):
        run(cfg.replace(rounds=3))
    summary = json.load(open(f"{cfg.run_dir}/summary.json"))
    assert summary["rounds_completed"] == 1 and "min-sites" in summary["stopped"]
    assert json.load(open(f"{cfg.run_dir}/checkpoints/latest.json"))["round"] == 1


def test_iid_and_dirichlet_partitions_give_disjoint_sites(cfg):
    from mmfed.federation.run_task import run_scenario, run_task
    from mmfed.site.loading import site_samples

    for how in ("iid", "dirichlet:0.5"):
        c = cfg.replace(partition=how)
        scenario = run_scenario(c, run_task(c))
        parts = [site_samples(c, scenario, i, 3)[1] for i in range(3)]
        ids = [s.id for p in parts for s in p]
        assert len(ids) == len(set(ids)) == 150
    with pytest.raises(ConfigError, match="3 natural sites but the federation has 4"):
        site_samples(cfg, run_scenario(cfg, run_task(cfg)), 0, 4)


def test_check_update_names_each_problem():
    ref = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    assert check_update([np.ones((2, 2), np.float32), np.ones(3, np.float32)], ref, 10).ok
    assert "1 arrays, the model has 2" in check_update(ref[:1], ref, 10).reason
    assert "dtype int64" in check_update([np.zeros((2, 2), np.int64), ref[1]], ref, 10).reason
    assert "NaN" in check_update([np.full((2, 2), np.inf, np.float32), ref[1]], ref, 10).reason
    assert "exceeds" in check_update([np.full((2, 2), 9, np.float32), ref[1]], ref, 10).reason


def test_run_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="'locl-epochs'"):
        FederationConfig.from_mapping({"locl-epochs": 2})
    with pytest.raises(ConfigError, match="'num-server-rounds'"):
        FederationConfig.from_mapping({"num-server-rounds": "many"})
    with pytest.raises(ConfigError, match="min-sites"):
        FederationConfig.from_mapping({"sites": 2, "min-sites": 3})
    cfg = FederationConfig.from_mapping({"num-server-rounds": 4, "augment": "false", "lr": "0.01"})
    assert (cfg.rounds, cfg.augment, cfg.lr) == (4, False, 0.01)
    assert FederationConfig.from_mapping(cfg.to_run_config()) == cfg


def test_round_learning_rate_decays_from_lr_to_a_tenth():
    cfg = FederationConfig(rounds=5, lr=0.01)
    lrs = [cfg.round_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert cfg.replace(lr_schedule="constant").round_lr(5) == 0.01
    with pytest.raises(ConfigError, match="lr-schedule"):
        FederationConfig(lr_schedule="step").validate()


@pytest.mark.parametrize("path", sorted(REPO.glob("simulations/*.toml")), ids=lambda p: p.stem)
def test_every_scenario_file_is_a_valid_run_config(path):
    cfg = FederationConfig.from_toml(path)
    scenario = path.stem.removesuffix("-plain").removesuffix("-private")
    assert cfg.scenario == scenario or path.stem == "synthetic-scale"


def test_the_default_run_is_private_and_secure_and_the_plain_one_is_neither():
    """`make run`: public pretraining, DP at every site (ε ≤ 3), SecAgg+; `make run-plain`: none of it."""
    default = FederationConfig.from_toml(REPO / "simulations/digits-av.toml")
    assert (
        default.private
        and 0 < default.target_epsilon <= 3
        and default.site_max_epsilon == default.target_epsilon
    )
    assert default.secure_aggregation and default.freeze_encoders
    assert default.initial_model == "pretrained:digits-public"
    plain = FederationConfig.from_toml(REPO / "simulations/digits-av-plain.toml")
    assert not plain.private and not plain.secure_aggregation and not plain.initial_model
    same = ("scenario", "sites", "partition", "fusion", "rounds", "local_epochs", "batch_size", "min_sites")
    assert all(getattr(plain, k) == getattr(default, k) for k in same)
    makefile = (REPO / "Makefile").read_text()
    assert "simulate --config simulations/digits-av.toml" in makefile
    assert "simulate --config simulations/digits-av-plain.toml" in makefile

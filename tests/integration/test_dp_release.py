"""What a DP site releases, tried as the server would: its noise is fresh and secret, and nothing else it
sends depends on the records (neighbouring datasets N and N-1 send identical values besides the update)."""

import json
import math
import os
import shutil
import stat

import numpy as np
import pytest
import torch

import mmfed.site.client as client_mod
from mmfed.federation.params import get_weights
from mmfed.federation.run_task import run_task
from mmfed.models import build_model
from mmfed.privacy import site_keys
from mmfed.privacy.budget import LEDGER, Proposal, Refusal, SiteBudget
from mmfed.privacy.geometry import Geometry, rounded_size
from mmfed.privacy.policy import SitePolicy
from mmfed.privacy.randomness import ChaChaRandomness, TorchRandomness, fresh_randomness
from mmfed.site import sitelog
from mmfed.site.client import SiteClient
from mmfed.train.dp import SecretPoissonBatches

DP_KEYS = {"site", "epsilon_prv", "epsilon_rdp", "delta", "noise_multiplier", "sample_rate", "steps",
           "max_epsilon", "ledger_index", "ledger_hash", "ledger_signature"}  # fmt: skip
# the ledger head: a hash and signature of the entry, whose only data-dependent field is keyed by a
# secret of the site (so pseudorandom to the server); everything else must be identical for D and D'
ANCHOR_KEYS = {"ledger_hash", "ledger_signature"}


@pytest.fixture
def cfg(small_federation):
    return small_federation(
        rounds=3, batch_size=8, optimizer="sgd", noise_multiplier=1.0, max_grad_norm=1.0, state_dir=""
    )


@pytest.fixture
def weights(cfg):
    torch.manual_seed(0)
    return get_weights(build_model(run_task(cfg).model_config()))


def deployed_site(tmp_path, where: str, drop_rows: int = 0, audio_rows: int | None = None, **policy) -> str:
    """A copy of one synthetic site under tmp_path/where/hospital (every copy has the same name), set up
    as `mmfed site init` would; `drop_rows` training rows removed from its manifest; with `audio_rows`,
    only the last that many training rows keep their audio."""
    from mmfed.data.scenarios.synthetic import synthetic_site

    source = synthetic_site(tmp_path / "generated", 0, samples=40, modalities="image,audio")
    site = tmp_path / where / "hospital"
    shutil.copytree(source, site)
    if drop_rows:
        lines = (site / "manifest.csv").read_text().splitlines()
        train = [i for i, line in enumerate(lines) if ",train," in line]
        for i in reversed(train[-drop_rows:]):
            del lines[i]
        (site / "manifest.csv").write_text("\n".join(lines) + "\n")
    if audio_rows is not None:
        lines = (site / "manifest.csv").read_text().splitlines()
        train = [i for i, line in enumerate(lines) if ",train," in line]
        for i in train[: len(train) - audio_rows]:
            cells = lines[i].split(",")
            cells[4] = ""  # id,label,split,image,audio,...
            lines[i] = ",".join(cells)
        (site / "manifest.csv").write_text("\n".join(lines) + "\n")
    values = {"max_epsilon": 50.0, "max_sample_rate": 1.0, "public_examples": 30,
              "held_modalities": ("image", "audio"), **policy}  # fmt: skip
    (site / "site.toml").write_text(SitePolicy(**values).template())
    site_keys.create_key(site)
    return str(site)


def fit(cfg, site: str, weights, round_=1, run_id="run-a"):
    """What the site's ClientApp returns for a train message (inside SecAgg+'s mod when the run is secure:
    the masking itself is Flower's; what matters here is what goes into it, and beside it)."""
    token = client_mod._MASKED.set(cfg.secure_aggregation)
    try:
        return SiteClient(cfg, {"site-dir": site}).fit(weights, {"server-round": round_, "run-id": run_id})
    finally:
        client_mod._MASKED.reset(token)


def evaluate(cfg, site: str, weights, round_=1, run_id="run-a"):
    return SiteClient(cfg, {"site-dir": site}).evaluate(weights, {"server-round": round_, "run-id": run_id})


def train_rows(site: str) -> int:
    return sum(",train," in line for line in open(f"{site}/manifest.csv"))


# -- secret, fresh randomness ------------------------------------------------------------------------
def test_the_same_dp_round_twice_gives_different_updates_and_the_server_cannot_replay_it(
    cfg, weights, tmp_path
):
    released, n, _ = fit(cfg, deployed_site(tmp_path, "site"), weights)
    assert n == 30
    # the server's replay: same run config (seed), same records, same code, same round, same site name
    replay, _, _ = fit(cfg, deployed_site(tmp_path, "server-replay"), weights)
    again, _, _ = fit(cfg, deployed_site(tmp_path, "site-again"), weights)
    for other in (replay, again):
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(released[:-1], other[:-1], strict=True)]
        assert max(diffs) > 1e-3  # not a rounding difference: the noise itself differs


def test_two_sites_with_the_same_name_and_size_draw_independent_noise(cfg, weights, tmp_path):
    one, _, _ = fit(cfg, deployed_site(tmp_path, "a"), weights)
    two, _, _ = fit(cfg, deployed_site(tmp_path, "b"), weights)
    model = build_model(run_task(cfg).model_config())
    trained = [p.requires_grad for p in model.state_dict(keep_vars=True).values()]
    noised = [(a, b) for (a, b), t in zip(zip(one[:-1], two[:-1], strict=True), trained, strict=True) if t]
    assert noised and not any(np.array_equal(a, b) for a, b in noised)  # before: all 230 were identical


def test_fresh_randomness_never_repeats_and_chacha_noise_is_gaussian():
    cpu = torch.device("cpu")
    for secure in (False, True):
        a, b = fresh_randomness(secure, cpu), fresh_randomness(secure, cpu)
        assert not torch.equal(
            a.normal(1000, 1.0, cpu, torch.float32), b.normal(1000, 1.0, cpu, torch.float32)
        )
        assert a.poisson_indices(1000, 0.5) != b.poisson_indices(1000, 0.5)
    torch.manual_seed(0)  # the global generator (which the server can seed) plays no part
    x = TorchRandomness(cpu).normal(10, 1.0, cpu, torch.float32)
    torch.manual_seed(0)
    assert not torch.equal(x, TorchRandomness(cpu).normal(10, 1.0, cpu, torch.float32))

    source = ChaChaRandomness(cpu)
    noise = source.normal(400_000, 2.5, cpu, torch.float32).double()
    assert noise.dtype == torch.float64 and noise.numel() == 400_000
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 2.5) < 0.02
    # shape: the share within 1σ / 2σ / 3σ of a normal (±0.3 points at this size)
    for k, share in ((1, 0.6827), (2, 0.9545), (3, 0.9973)):
        assert abs(float((noise.abs() < k * 2.5).double().mean()) - share) < 0.003
    # 4th moment of a normal is 3σ^4 (a sum of uniforms or a wrong sum would miss it)
    assert abs(float((noise / 2.5).pow(4).mean()) - 3.0) < 0.08
    uniform = source.uniform(200_000)
    assert float(uniform.min()) > 0 and float(uniform.max()) < 1 and abs(float(uniform.mean()) - 0.5) < 0.005
    drawn = [len(source.poisson_indices(1000, 0.1)) for _ in range(200)]
    assert abs(np.mean(drawn) - 100) < 2.5


def test_the_site_policy_chooses_the_secure_source_and_the_ledger_records_it(cfg, weights, tmp_path):
    secure_site = deployed_site(tmp_path, "secure")  # site.toml: secure_rng = true (the default)
    fast_site = deployed_site(tmp_path, "fast", secure_rng=False)
    for site, name in ((secure_site, "chacha20"), (fast_site, "torch")):
        fit(cfg, site, weights)
        entry = [line for line in open(f"{site}/{LEDGER}")][-1]
        assert f'"randomness":"{name}"' in entry.replace(" ", "")


# -- nothing data-dependent leaves the site ----------------------------------------------------------
@pytest.mark.parametrize(
    "secure, audio_rows",
    [(False, None), (True, None), (False, 1)],
    ids=["plain", "secagg", "the-only-audio-record"],
)
def test_neighbouring_datasets_send_identical_values_besides_the_update(
    cfg, weights, tmp_path, secure, audio_rows
):
    """D' = D less one record. With audio_rows=1 that record is the only one with audio: the audio encoder
    must still train (on noise) and keep its weight, or its presence would show."""
    cfg = cfg.replace(secure_aggregation=secure, secagg_clipping_range=8.0)
    full = deployed_site(tmp_path, "D", audio_rows=audio_rows)
    smaller = deployed_site(tmp_path, "D-minus-one", drop_rows=1, audio_rows=0 if audio_rows else None)
    assert train_rows(full) == train_rows(smaller) + 1
    sent = {}
    for name, site in (("D", full), ("D'", smaller)):
        update, examples, metrics = fit(cfg, site, weights)
        sent[name] = ([u.shape for u in update], update[-2 if secure else -1], examples, metrics)
        assert set(metrics) == DP_KEYS  # the exact set of keys a DP site sends
        assert len(update) == len(weights) + (2 if secure else 1)  # + coverage (+ evaluation sums)
    shapes, coverage, examples, metrics = sent["D"]
    assert shapes == sent["D'"][0] and examples == sent["D'"][2] == 30
    assert np.array_equal(coverage, sent["D'"][1]) and coverage.tolist() == [1.0, 1.0, 1.0]
    same = {k: v for k, v in metrics.items() if k not in ANCHOR_KEYS}
    assert same == {k: v for k, v in sent["D'"][3].items() if k not in ANCHOR_KEYS}  # ε too: public size
    for site in (full, smaller):  # the one data-dependent field of the anchored entry is keyed
        entry = json.loads(open(f"{site}/{LEDGER}").read().splitlines()[-1])
        assert entry["data_fingerprint"].startswith("hmac-sha256:")
    # evaluation of the same weights: the test records are the same, the values are rounded
    if not secure:
        scores = [evaluate(cfg, site, weights) for site in (full, smaller)]
        assert scores[0] == scores[1] and scores[0][1] == rounded_size(scores[0][1])


def test_the_geometry_is_identical_for_n_and_n_minus_one_and_matches_opacus_for_every_size():
    for n in (450, 451, 452, 1234, 99_999):
        assert Geometry(rounded_size(n), 64, 2) == Geometry(rounded_size(n - 1), 64, 2)
    assert [rounded_size(n) for n in (1, 44, 449, 1234, 0)] == [1, 44, 450, 1200, 1]
    # the plan's steps are the sampler's: Opacus takes q = 1/len(loader) and one step per batch drawn
    from torch.utils.data import DataLoader

    for public in [*range(1, 200, 7), 744, 1000, 4097, 200_000]:
        for batch in (1, 7, 8, 32, 64, 1000):
            geometry = Geometry(public, batch, 3)
            sampler = SecretPoissonBatches(
                5, geometry.sample_rate, geometry.batches_per_epoch, TorchRandomness(torch.device("cpu"))
            )
            loader = DataLoader(range(5), batch_sampler=sampler)
            assert 1 / len(loader) == geometry.sample_rate
            assert len(loader) * 3 == geometry.steps
            assert geometry.expected_batch_size == pytest.approx(public * geometry.sample_rate)


def test_a_dp_round_takes_exactly_the_planned_steps_for_sizes_where_the_old_plan_did_not(
    cfg, weights, tmp_path
):
    """N = 744, B = 8 planned 93 steps and Opacus took 92: every release was withheld."""
    site = deployed_site(tmp_path, "s", public_examples=744, delta=1e-6)
    update, examples, metrics = fit(cfg.replace(local_epochs=1), site, weights)
    assert update and examples == 744 and metrics["steps"] == 93 and metrics["sample_rate"] == 1 / 93


def test_errors_reach_the_server_as_a_code_and_the_site_log_keeps_the_detail(
    cfg, weights, tmp_path, monkeypatch, caplog
):
    from mmfed.site import runtime as site_mod

    secret = "PATIENT Jane Doe, born 1957-03-02, MRN 0042"

    def crash(self, *args, **kwargs):
        note = secret  # a local holding a record, as a real crash would
        raise ValueError(f"could not tokenise note {note!r}")

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", crash)
    site = deployed_site(tmp_path, "crash")
    update, examples, metrics = fit(cfg, site, weights)
    assert update == [] and examples == 0 and metrics["code"] == "internal"
    assert "Jane" not in str(metrics) and site not in str(metrics)
    assert "Jane" not in caplog.text  # the site's console: the type and where the details are
    log_path = f"{site}/{sitelog.LOG}"
    assert "Jane Doe" in open(log_path).read()  # the site's own log has it all
    assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600


def test_refusals_say_which_rule_without_the_sites_numbers(cfg, weights, tmp_path):
    site = deployed_site(tmp_path, "r", max_epsilon=0.5)
    _, examples, metrics = fit(cfg, site, weights)
    assert examples == 0 and metrics["outcome"] == "refused" and metrics["code"] == "budget"
    assert "max_epsilon" in metrics["reason"] and "0.5" not in metrics["reason"]
    assert "0.5" in open(f"{site}/{sitelog.LOG}").read()


# -- evaluation ---------------------------------------------------------------------------------------
def test_a_dp_site_evaluates_once_per_round_it_released_and_only_when_its_policy_allows(
    cfg, weights, tmp_path
):
    site = deployed_site(tmp_path, "e")
    loss, n, metrics = evaluate(cfg, site, weights)
    assert n == 0 and metrics["code"] == "evaluation"  # no release in this run and round yet
    fit(cfg, site, weights, run_id="run-a")
    loss, n, metrics = evaluate(cfg, site, weights)
    assert n > 0 and math.isfinite(loss) and set(metrics) == {"site", "accuracy"}
    assert loss == round(loss, 3) and metrics["accuracy"] == round(metrics["accuracy"], 3)
    # once per release: probing the test set again with other weights, run ids or rounds is refused
    for again in (dict(), dict(run_id="another-run"), dict(round_=2)):
        assert evaluate(cfg, site, weights, **again)[2]["code"] == "evaluation"
    closed = deployed_site(tmp_path, "closed", allow_evaluation=False)
    fit(cfg, closed, weights, run_id="run-a")
    _, n, metrics = evaluate(cfg, closed, weights)
    assert n == 0 and metrics["code"] == "evaluation"


def test_a_site_out_of_budget_stops_evaluating(cfg, weights, tmp_path):
    from mmfed.privacy import accounting

    geometry = Geometry(30, cfg.batch_size, cfg.local_epochs)
    one, two = (
        accounting.epsilon_prv([(1.0, geometry.sample_rate, geometry.steps * k)], 1e-5) for k in (1, 2)
    )
    site = deployed_site(tmp_path, "cap", max_epsilon=(one + two) / 2)
    assert fit(cfg, site, weights, round_=1)[1] == 30
    assert evaluate(cfg, site, weights, round_=1)[1] > 0
    assert fit(cfg, site, weights, round_=2)[2]["code"] == "budget"
    assert evaluate(cfg, site, weights, round_=2)[2]["code"] == "evaluation"


def test_the_server_announcing_secagg_but_sending_plain_messages_gets_nothing(cfg, weights, tmp_path):
    site = deployed_site(tmp_path, "s")
    reply = SiteClient(cfg.replace(secure_aggregation=True), {"site-dir": site}).fit(
        weights, {"server-round": 1, "run-id": "run-a"}
    )
    assert reply[:2] == ([], 0) and reply[2]["code"] == "secure-aggregation"
    assert not os.path.exists(f"{site}/{LEDGER}")  # nothing trained, nothing spent


# -- data-dependent failures never abort a DP round ----------------------------------------------------
def test_a_record_that_fails_to_load_or_gives_nan_contributes_nothing_instead_of_failing(
    cfg, weights, tmp_path
):
    from mmfed.site import loading

    site = deployed_site(tmp_path, "bad", public_examples=30)
    runtime = loading.load_site(cfg, {"site-dir": site})
    real = type(runtime.train).__getitem__
    broken = runtime.train.samples[0].id
    poisoned = runtime.train.samples[1].id

    def getitem(self, index):
        sample = self.samples[index]
        if sample.id == broken:
            raise ValueError("unreadable file")  # e.g. a truncated PNG
        item = real(self, index)
        if sample.id == poisoned and "image" in item:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item

    type(runtime.train).__getitem__ = getitem
    try:
        update, examples, metrics = fit(cfg.replace(local_epochs=8), site, weights)  # both get sampled
    finally:
        type(runtime.train).__getitem__ = real
    assert examples == 30 and "code" not in metrics
    assert all(np.all(np.isfinite(u)) for u in update)
    (released,) = [e for e in sitelog.entries(site) if e["event"] == "released"]
    assert released["records_failed"] == [broken]


def test_a_dp_site_with_no_records_still_takes_its_noise_only_steps(cfg, weights, tmp_path):
    site = deployed_site(tmp_path, "none", drop_rows=32)
    assert train_rows(site) == 0
    update, examples, metrics = fit(cfg, site, weights)
    assert examples == 30 and "code" not in metrics and metrics["steps"] == Geometry(30, 8, 1).steps


# -- the plan ----------------------------------------------------------------------------------------
def test_the_plan_refuses_a_delta_not_below_one_over_the_public_size_and_nonfinite_proposals(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "site.toml").write_text(SitePolicy(delta=1e-3, max_sample_rate=1.0).template())
    site_keys.create_key(home)
    budget = SiteBudget(home, "fp", site="h")
    offer = Proposal(1.0, 0.0, 1.0, 8, 1, 3, ("image",))
    assert budget.plan(offer, public_examples=999).geometry.public_examples == 999
    with pytest.raises(Refusal) as refused:
        budget.plan(offer, public_examples=1000)
    assert refused.value.code == "delta"
    for bad in (
        dict(noise_multiplier=math.nan),
        dict(noise_multiplier=math.inf),
        dict(max_grad_norm=math.nan),
    ):
        values = {**offer.__dict__, **bad}
        with pytest.raises(Refusal) as refused:
            budget.plan(Proposal(**values), public_examples=100)
        assert refused.value.code == "setting"


@pytest.mark.parametrize(
    "missing, code",
    [({"public_examples": 0}, "public-size"), ({"held_modalities": ()}, "held-modalities")],
    ids=["public-size", "held-modalities"],
)
def test_a_deployed_site_must_declare_what_it_discloses_to_train_under_dp(
    cfg, weights, tmp_path, missing, code
):
    site = deployed_site(tmp_path, "undeclared", **missing)
    _, examples, metrics = fit(cfg, site, weights)
    assert examples == 0 and metrics["code"] == code
    assert not os.path.exists(f"{site}/{LEDGER}")


# -- the site's policy owns what concerns the site -----------------------------------------------------
def test_the_server_cannot_switch_off_scrubbing_a_site_requires(cfg, tmp_path):
    from mmfed.site import loading

    lax = cfg.replace(deidentify=False, mask_diagnosis=False)
    strict = deployed_site(tmp_path, "strict", mask_diagnosis=True)  # deidentify = true: the template's
    runtime = loading.load_site(lax, {"site-dir": strict})
    spec = runtime.train.processors.spec.text
    assert spec.deidentify and spec.mask_diagnosis
    relaxed = deployed_site(tmp_path, "relaxed", deidentify=False)
    spec = loading.load_site(lax, {"site-dir": relaxed}).train.processors.spec.text
    assert not spec.deidentify and not spec.mask_diagnosis  # the site's own choice
    spec = loading.load_site(cfg, {"site-dir": relaxed}).train.processors.spec.text
    assert spec.deidentify  # ... and a run can always add protection


def test_features_of_a_deployed_sites_records_stay_in_its_own_home(cfg, weights, tmp_path):
    server_chosen = tmp_path / "server-chosen-cache"
    site = deployed_site(tmp_path, "home")
    fit(cfg.replace(cache_dir=str(server_chosen)), site, weights)
    assert any((tmp_path / "home" / "hospital" / "cache" / "features").rglob("*"))
    assert not (server_chosen / "features").exists()


def test_a_site_requiring_secure_aggregation_refuses_plain_messages(cfg, weights, tmp_path):
    site = deployed_site(tmp_path, "secagg-only", require_secure_aggregation=True)
    _, examples, metrics = fit(cfg, site, weights)
    assert examples == 0 and metrics["code"] == "secure-aggregation"
    assert not os.path.exists(f"{site}/{LEDGER}")
    update, examples, _ = fit(cfg.replace(secure_aggregation=True, secagg_clipping_range=8.0), site, weights)
    assert update and examples == 30


def test_a_site_trains_only_models_it_approved(cfg, weights, tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app

    site = deployed_site(tmp_path, "approver", approved_models=("0123456789abcdef",))
    _, examples, metrics = fit(cfg, site, weights)
    assert examples == 0 and metrics["code"] == "model"
    run_toml = tmp_path / "run.toml"
    values = {k: v for k, v in cfg.to_run_config().items() if v != ""}
    run_toml.write_text("[federation]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    shown = CliRunner().invoke(app, ["site", "approve", "--dir", site, "--config", str(run_toml)])
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and "approval hash" in text and "not approved yet" in text
    assert "parameters" in text and "labels" in text
    approved = CliRunner().invoke(
        app, ["site", "approve", "--dir", site, "--config", str(run_toml), "--write"]
    )
    assert approved.exit_code == 0, approved.output
    update, examples, _ = fit(cfg, site, weights)
    assert update and examples == 30

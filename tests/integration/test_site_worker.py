"""The site's warm worker (`mmfed site serve`): a ClientApp that hands its messages to the worker gets what
it would have computed in-process — the same refusals, the same release keys, the same ledger — and a
worker that dies mid-request is the site's failure with a reason code, its ledger consistent. Files are
read again only when they changed."""

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfed.site.client as client_mod
from mmfed.data import file_identity, file_probe
from mmfed.data.manifest import load_manifest
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.federation.params import get_weights
from mmfed.federation.run_task import run_task
from mmfed.models import build_model
from mmfed.privacy import fingerprint, ledger, site_keys
from mmfed.privacy.budget import LEDGER, SiteBudget
from mmfed.privacy.policy import SitePolicy
from mmfed.site import sitelog, wire
from mmfed.site.client import SiteClient, SiteDropout
from mmfed.site.worker import Worker, ping

# what differs between two copies of a site by design: when, and what is keyed or signed by its own key
OWN = {"time", "signature", "key_id", "data_fingerprint", "prev_hash"}
ANCHOR = {"ledger_hash", "ledger_signature"}
POLICY = {"max_epsilon": 50.0, "max_sample_rate": 1.0, "public_examples": 30,
          "held_modalities": ("image", "audio")}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from mmfed.data.scenarios.synthetic import synthetic_site

    return synthetic_site(tmp_path_factory.mktemp("generated"), 0, samples=40, modalities="image,audio")


@pytest.fixture
def cfg(tmp_path):
    return FederationConfig(scenario="synthetic", sites=3, samples_per_site=40, modalities="image,audio",
                            rounds=3, batch_size=8, optimizer="sgd", noise_multiplier=1.0,
                            max_grad_norm=1.0, augment=False, min_sites=2, site_wait_s=2,
                            run_dir=str(tmp_path / "run"))  # fmt: skip


@pytest.fixture
def weights(cfg):
    torch.manual_seed(0)
    return get_weights(build_model(run_task(cfg).model_config()))


def make_site(source: Path, tmp_path: Path, where: str, **policy) -> Path:
    site = tmp_path / where / "hospital"  # every copy has the same name
    shutil.copytree(source, site)
    (site / "site.toml").write_text(SitePolicy(**{**POLICY, **policy}).template())
    site_keys.create_key(site)
    return site


@contextlib.contextmanager
def serving(site: Path):
    worker = Worker(site)
    worker.open()
    thread = threading.Thread(target=worker.serve_forever, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.close()
        thread.join(timeout=10)


def fit(cfg, site, weights, round_, masked=False):
    token = client_mod._MASKED.set(masked)
    try:
        return SiteClient(cfg, {"site-dir": str(site)}).fit(weights, message(round_))
    finally:
        client_mod._MASKED.reset(token)


def evaluate(cfg, site, weights, round_):
    return SiteClient(cfg, {"site-dir": str(site)}).evaluate(weights, message(round_))


def message(round_: int) -> dict:
    return {"server-round": round_, "run-id": "run-a"}


def entries(site: Path) -> list[dict]:
    return [json.loads(line) for line in ledger.read_lines(site / LEDGER)]


def test_the_worker_answers_as_the_site_does_in_process(cfg, weights, source, tmp_path, monkeypatch, caplog):
    warm, cold = make_site(source, tmp_path, "warm"), make_site(source, tmp_path, "cold")
    caplog.set_level("INFO", logger="mmfed.site")
    replies: dict[Path, list] = {}
    reads: list = []
    secure = cfg.replace(secure_aggregation=True, secagg_clipping_range=8.0)
    unapproved = SitePolicy(**POLICY, approved_models=("not-this-one",)).template()
    with serving(warm) as worker:
        for site in (warm, cold):
            out = [fit(cfg, site, weights, 1), evaluate(cfg, site, weights, 1)]
            out.append(evaluate(cfg, site, weights, 1))
            if site == warm:  # from here on the worker reads no file again: its runtime is warm
                monkeypatch.setattr(fingerprint, "file_digest", lambda p: reads.append(p) or "x")
            # the site stops approving this model: the worker sees its policy change (and builds again)
            (site / "site.toml").write_text(unapproved)
            out.append(fit(cfg, site, weights, 2))
            with pytest.raises(SiteDropout) as dropped:  # SecAgg+: the refusal is the dropout's text
                fit(secure, site, weights, 3, masked=True)
            replies[site] = [*out, str(dropped.value)]
            monkeypatch.undo()
        assert worker.messages == 5 and not reads
    (w_fit, w_eval, w_again, w_refused, w_dropped), (c_fit, c_eval, c_again, c_refused, c_dropped) = (
        replies[warm], replies[cold])  # fmt: skip
    # the release: same size, same keys, same DP values (the noise and the site's own signature differ)
    assert w_fit[1] == c_fit[1] == 30 and set(w_fit[2]) == set(c_fit[2]) and "epsilon_prv" in w_fit[2]
    assert {k: v for k, v in w_fit[2].items() if k not in ANCHOR} == {k: v for k, v in c_fit[2].items()
                                                                       if k not in ANCHOR}  # fmt: skip
    assert [(a.shape, a.dtype) for a in w_fit[0]] == [(a.shape, a.dtype) for a in c_fit[0]]
    assert any(not np.array_equal(a, b) for a, b in zip(w_fit[0], c_fit[0], strict=True))
    # evaluation once per released round, then refused; the model refused; SecAgg+ drops out alike
    assert w_eval == c_eval and w_eval[1] > 0
    assert w_again == c_again and w_again[2]["code"] == "evaluation"
    assert w_refused == c_refused and w_refused[:2] == ([], 0) and w_refused[2]["code"] == "model"
    assert w_dropped == c_dropped and "refused (model)" in w_dropped
    # the same ledger entries
    assert [{k: v for k, v in e.items() if k not in OWN} for e in entries(warm)] == [
        {k: v for k, v in e.items() if k not in OWN} for e in entries(cold)]  # fmt: skip
    # one line per message in the site's log and on the console: round, what it did, ε after
    done = [e for e in sitelog.entries(warm) if e["event"] == "worker"]
    assert [(e["op"], e["round"], e["result"]) for e in done] == [
        ("fit", 1, "released (DP)"), ("evaluate", 1, "evaluated"), ("evaluate", 1, "refused (evaluation)"),
        ("fit", 2, "refused (model)"), ("fit", 3, "refused (model)")]  # fmt: skip
    assert all(e["epsilon_prv"] == w_fit[2]["epsilon_prv"] for e in done)
    assert "its files changed" in caplog.text and "round 1 fit: released (DP); ε" in caplog.text
    assert not [e for e in sitelog.entries(cold) if e["event"] == "worker"]


def test_the_socket_is_the_sites_alone_and_served_by_one_worker(source, tmp_path):
    site = make_site(source, tmp_path, "s")
    path = wire.socket_path(site)
    path.parent.mkdir(mode=0o700, parents=True)
    stale = socket.socket(socket.AF_UNIX)
    with wire.Address(path) as address:  # a worker that died: its socket is left behind
        stale.bind(address)
    stale.close()
    assert ping(site) is None
    with serving(site):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with pytest.raises(MMFedError, match="already serves"):
            Worker(site).open()
        status = ping(site)
        assert status["records"] == len(load_manifest(site).samples)
        assert status["modalities"] == ["image", "audio"]
        assert status["epsilon"] == 0.0 and status["max_epsilon"] == 50.0 and status["messages"] == 0
        os.chmod(path.parent, 0o755)  # a folder others may enter: the ClientApp does not use it
        assert ping(site) is None
        os.chmod(path.parent, 0o700)
    assert not path.exists() and ping(site) is None


KILLED = """
import os, sys
from mmfed.privacy.budget import SiteBudget
from mmfed.site.worker import Worker
release = SiteBudget.release
def release_then_die(self, *args, **kwargs):  # the ledger entry is written: killed before the reply
    release(self, *args, **kwargs)
    os._exit(9)
SiteBudget.release = release_then_die
worker = Worker(sys.argv[1])
worker.open()
worker.serve_forever()
"""


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_a_worker_killed_mid_request_is_the_sites_failure_its_ledger_holds(cfg, weights, source, tmp_path):
    site = make_site(source, tmp_path, "k")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(site)])
    try:
        end = time.monotonic() + 120
        while ping(site) is None:
            assert proc.poll() is None and time.monotonic() < end, "the worker did not start"
            time.sleep(0.2)
        update, examples, metrics = fit(cfg, site, weights, 1)
        assert proc.wait(timeout=60) == 9
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (update, examples) == ([], 0) and metrics["outcome"] == "failed" and metrics["code"] == "worker"
    assert str(site) not in metrics["reason"]
    (failed,) = [e for e in sitelog.entries(site) if e["event"] == "failed"]
    assert failed["code"] == "worker" and failed["round"] == 1
    # recorded before it would have left: the budget holds it, the chain verifies, the next round goes on
    assert len(entries(site)) == 1
    update, examples, metrics = fit(cfg, site, weights, 2)  # the stale socket: in this process
    assert examples == 30 and metrics["ledger_index"] == 1
    budget = SiteBudget(site, "sha256:x", site="hospital")
    assert len(budget.history()) >= 1 and budget.spent()[0] == pytest.approx(metrics["epsilon_prv"])


def test_files_are_read_again_only_when_they_changed(source, tmp_path, monkeypatch):
    site = make_site(source, tmp_path, "f")
    train = load_manifest(site).split("train")
    reads, probes = [], []
    real_digest, real_verify = fingerprint.file_digest, file_probe._verify
    monkeypatch.setattr(fingerprint, "file_digest", lambda p: reads.append(p) or real_digest(p))
    monkeypatch.setattr(file_probe, "_verify", lambda p, *a: probes.append(p) or real_verify(p, *a))

    def another_process() -> None:  # what a process remembers by itself goes with it
        monkeypatch.setattr(file_probe, "_VERIFIED", {})
        reads.clear()
        probes.clear()

    plain = fingerprint.data_fingerprint(train)
    files = len(reads)
    store = site / file_identity.STATE_FILE
    another_process()
    with file_identity.using(store):
        load_manifest(site)
        assert fingerprint.data_fingerprint(train) == plain
    assert len(reads) == files and probes and stat.S_IMODE(store.stat().st_mode) == 0o600
    another_process()
    with file_identity.using(store):  # nothing unchanged is read again
        load_manifest(site)
        assert fingerprint.data_fingerprint(train) == plain
    assert reads == [] and probes == []
    changed = train[0].image
    changed.write_bytes(next(s.image for s in train if s.image != changed).read_bytes())
    another_process()
    with file_identity.using(store):
        load_manifest(site)
        assert fingerprint.data_fingerprint(train) != plain
    assert reads == [changed] and probes == [changed]

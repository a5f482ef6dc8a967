"""Faults on the real ServerApp and ClientApp (in-process grid): a site's process dying mid-round, the
server crashing at each point of a round and resumed, a full disk at each write, and run directories
left inconsistent — refused, saying what to do. (The same faults on Ray, as a user meets them:
benchmarks/reliability_cases/faults.py and resume.py.)"""

import errno
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message
from localgrid import LocalGrid, server_context
from safetensors.numpy import load_file

import mmfed.files as files
import mmfed.site.runtime as site_mod
from mmfed.errors import MMFedError
from mmfed.federation.config import FederationConfig
from mmfed.server.apps import make_client_app, make_server_app
from mmfed.server.recorder import RunRecorder
from mmfed.server.rundir import RunDir

ROUNDS = 3


class Crash(BaseException):
    """The server process dying: nothing catches it, nothing after it runs."""


class WorkerDied(BaseException):
    """A site's process killed (SIGKILL): nothing of the site answers."""


class DyingGrid(LocalGrid):
    """The simulation engine's answer for a site worker that died: an error naming neither site nor node."""

    def push_messages(self, messages):
        ids = []
        for message in messages:
            try:
                ids += super().push_messages([message])
            except WorkerDied:
                reason = "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly.'>"
                self._replies[message.metadata.message_id] = Message(
                    Error(code=0, reason=reason), reply_to=message
                )
                ids.append(message.metadata.message_id)
        return ids


def run(cfg: FederationConfig, grid_type=LocalGrid) -> dict:
    result: dict = {}
    grid = grid_type(make_client_app(cfg), cfg.sites)
    try:
        make_server_app(cfg, result=result)(grid, server_context())
    finally:
        grid.close()
    return result


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The runs here are tiny: one thread each keeps them fast on a busy machine (threads fight there)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("faults-cache"))


@pytest.fixture
def cfg(tmp_path, cache):
    return FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=8, modalities="image", rounds=ROUNDS, batch_size=8,
        augment=False, min_sites=2, site_wait_s=2, cache_dir=cache, run_dir=str(tmp_path / "run"),
        state_dir=str(tmp_path / "state"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """Round 3's model of the uninterrupted run (a run's model does not depend on where it is)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=8, modalities="image", rounds=ROUNDS, batch_size=8,
        augment=False, min_sites=2, site_wait_s=2, cache_dir=cache, run_dir=str(root / "run"),
        state_dir=str(root / "state"),
    )  # fmt: skip
    run(cfg)
    return load_file(f"{cfg.run_dir}/checkpoints/round_{ROUNDS:04d}.safetensors")


def rows(cfg, **match):
    found = [json.loads(x) for x in Path(cfg.run_dir, "metrics.jsonl").read_text().splitlines()]
    return [r for r in found if all(r.get(k) == v for k, v in match.items())]


def files_of(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()
    }


# -- a site's process killed mid-round ---------------------------------------------------------------------
def _kill_site_in(monkeypatch, site: str, server_round: int) -> None:
    real = site_mod.SiteRuntime.fit

    def fit(self, weights, c, rnd, *args, **kwargs):
        if self.name == site and rnd == server_round:
            raise WorkerDied()
        return real(self, weights, c, rnd, *args, **kwargs)

    monkeypatch.setattr(site_mod.SiteRuntime, "fit", fit)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg+"])
def test_a_site_killed_mid_round_is_named_and_the_round_goes_on_without_it(cfg, monkeypatch, secure):
    cfg = cfg.replace(sites=3, secure_aggregation=secure)
    _kill_site_in(monkeypatch, "site_00001", 2)
    summary = run(cfg, DyingGrid)
    assert summary["rounds_completed"] == ROUNDS and summary["stopped"] is None
    fits = {(r["site"], r["status"], r.get("code")) for r in rows(cfg, kind="fit", round=2)}
    assert fits == {("site_00000", "accepted", None), ("site_00002", "accepted", None),
                    ("site_00001", "failed", "worker")}  # fmt: skip
    assert [g["sites_accepted"] for g in rows(cfg, kind="global")] == [3, 2, 3]


def test_a_site_killed_when_every_site_is_needed_stops_the_run_keeping_its_rounds(cfg, monkeypatch):
    _kill_site_in(monkeypatch, "site_00001", 2)
    with pytest.raises(MMFedError, match="min-sites=2"):
        run(cfg, DyingGrid)
    assert json.loads(Path(cfg.run_dir, "checkpoints", "latest.json").read_text())["round"] == 1


# -- the server killed at each point of a round, then resumed -------------------------------------------
def _crash_at(monkeypatch, point: str) -> None:
    target = 2
    if point in ("aggregate", "evaluate"):
        name = f"aggregate_{'fit' if point == 'aggregate' else 'evaluate'}"
        real = getattr(RunRecorder, name)

        def stage(self, server_round, results, failures):
            if self.round_of(server_round) == target:
                raise Crash(point)
            return real(self, server_round, results, failures)

        monkeypatch.setattr(RunRecorder, name, stage)
    elif point == "metrics":  # half of round 2's first rows on disk
        import mmfed.server.rundir as rundir

        real_append = rundir.append

        def append(path, data, *args, **kwargs):
            if path.name == "metrics.jsonl" and f'"round": {target},' in data:
                with open(path, "a") as fh:
                    fh.write(data[: len(data) // 2])
                raise Crash(point)
            return real_append(path, data, *args, **kwargs)

        monkeypatch.setattr(rundir, "append", append)
    elif point == "checkpoint":  # the temporary file written, not yet renamed
        import mmfed.checkpoint as checkpoint

        real_write = checkpoint.write_atomic

        def write_atomic(path, data, *args, **kwargs):
            if path.name == f"round_{target:04d}.safetensors":
                Path(
                    tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")[1]
                ).write_bytes(data)
                raise Crash(point)
            return real_write(path, data, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "write_atomic", write_atomic)
    else:  # commit: before latest.json names round 2; committed: just after; summary: after the last round
        real_commit, real_summary = RunDir.commit, RunDir.write_summary

        def commit(self):
            pending = self._pending
            if point == "commit" and pending == target:
                raise Crash(point)
            real_commit(self)
            if point == "committed" and pending == target:
                raise Crash(point)

        def write_summary(self, summary):
            if point == "summary":
                raise Crash(point)
            real_summary(self, summary)

        monkeypatch.setattr(RunDir, "commit", commit)
        monkeypatch.setattr(RunDir, "write_summary", write_summary)


@pytest.mark.parametrize(
    "point", ["aggregate", "metrics", "checkpoint", "commit", "evaluate", "committed", "summary"]
)
def test_a_server_killed_at_any_point_resumes_to_the_uninterrupted_model(
    cfg, monkeypatch, uninterrupted, point
):
    with monkeypatch.context() as patch:
        _crash_at(patch, point)
        with pytest.raises(Crash):
            run(cfg)
    summary = run(cfg.replace(resume=True))
    assert summary["rounds_completed"] == ROUNDS
    final = load_file(f"{cfg.run_dir}/checkpoints/round_{ROUNDS:04d}.safetensors")
    assert all(np.array_equal(final[k], uninterrupted[k]) for k in uninterrupted)  # bit for bit
    assert [r["round"] for r in rows(cfg, kind="global")] == [1, 2, 3]  # every round's rows once
    fits = [(r["round"], r["site"]) for r in rows(cfg, kind="fit")]
    assert len(fits) == len(set(fits)) == 2 * ROUNDS
    assert not list(Path(cfg.run_dir).rglob("*.tmp"))


# -- a full disk at each write ------------------------------------------------------------------------------
class FullDisk:
    """The os module, but a write to a file whose path contains `name` stops half-way: no space left."""

    def __init__(self, name: str):
        self.name = name
        self.hits = 0

    def __getattr__(self, attr):
        return getattr(os, attr)

    def write(self, fd, data):
        if self.name in os.readlink(f"/proc/self/fd/{fd}"):
            self.hits += 1
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


@pytest.mark.parametrize(
    "target, setting",
    [("round_0003.safetensors", {}), ("metrics.jsonl", {}), ("config.json", {}),
     ("ledger.jsonl", {"noise_multiplier": 1.2}), ("budget.json", {"noise_multiplier": 1.2})],
)  # fmt: skip
def test_a_full_disk_at_any_write_keeps_every_file_and_the_run_resumes(cfg, monkeypatch, target, setting):
    cfg = cfg.replace(rounds=2, max_grad_norm=1.0, **setting)
    run(cfg)
    before = {**files_of(cfg.run_dir), **{f"state/{k}": v for k, v in files_of(cfg.state_dir).items()}}
    disk = FullDisk(target)
    more = cfg.replace(rounds=3, resume=True)
    with monkeypatch.context() as patch:
        patch.setattr(files, "os", disk)
        if target in ("ledger.jsonl", "budget.json"):  # a site's write: the site fails, the run stops
            with pytest.raises(MMFedError, match="min-sites"):
                run(more)
            logs = "".join(p.read_text() for p in Path(cfg.state_dir).rglob("site-log.jsonl"))
            assert f"{target}: could not be written (No space left on device)" in logs
        else:
            with pytest.raises(
                MMFedError, match=f"{target}: could not be written .No space left on device."
            ) as err:
                run(more)
            if target != "config.json":
                assert "the run keeps round 2" in str(err.value) and "--resume" in str(err.value)
    assert disk.hits
    after = {**files_of(cfg.run_dir), **{f"state/{k}": v for k, v in files_of(cfg.state_dir).items()}}
    kept = {
        "checkpoints/round_0001.safetensors",
        "checkpoints/round_0002.safetensors",
        "checkpoints/latest.json",
    }
    kept |= {k for k in before if k.endswith(("ledger.jsonl", "budget.json"))}
    assert {k: after.get(k) for k in kept} == {k: before[k] for k in kept}  # the previous state intact
    assert not [k for k in after if k.endswith(".tmp")]
    assert all(json.loads(x) for x in Path(cfg.run_dir, "metrics.jsonl").read_text().splitlines())
    assert run(more)["rounds_completed"] == 3  # space again: the run goes on


def test_a_file_size_limit_during_a_checkpoint_write_is_a_clear_error(cfg):
    """A real failing write (RLIMIT_FSIZE: EFBIG), not a mocked one."""
    run(cfg.replace(rounds=2))
    latest = Path(cfg.run_dir, "checkpoints", "latest.json").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # metrics and config fit; a checkpoint not
    try:
        with pytest.raises(MMFedError, match="round_0003.safetensors: could not be written .File too large"):
            run(cfg.replace(resume=True))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert Path(cfg.run_dir, "checkpoints", "latest.json").read_bytes() == latest
    assert not Path(cfg.run_dir, "checkpoints", "round_0003.safetensors").exists()


# -- inconsistent run directories: refused before anything is written ---------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("finished")
    cfg = FederationConfig(
        scenario="synthetic", sites=2, samples_per_site=8, modalities="image", rounds=2, batch_size=8,
        augment=False, min_sites=2, site_wait_s=2, cache_dir=cache, run_dir=str(root / "run"),
        state_dir=str(root / "state"),
    )  # fmt: skip
    run(cfg)
    return cfg


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:500])


def _edit_config(path: Path) -> None:
    data = json.loads(path.read_text())
    data["federation"]["local-epochs"] = 7
    path.write_text(json.dumps(data))


BREAKS = {
    "latest names a missing checkpoint": ("checkpoints/round_0002.safetensors", Path.unlink, "round_0002"),
    "truncated checkpoint": ("checkpoints/round_0002.safetensors", _truncate, "not a readable checkpoint"),
    "latest.json garbage": (
        "checkpoints/latest.json",
        lambda p: p.write_text("{"),
        "latest.json: unreadable",
    ),
    "config.json missing": ("config.json", Path.unlink, "config.json: missing"),
    "config.json garbage": ("config.json", lambda p: p.write_text("{x"), "config.json: unreadable"),
    "config.json edited": ("config.json", _edit_config, "edited since the run started"),
    "metrics.jsonl missing": ("metrics.jsonl", Path.unlink, "no rows of round.s. 1-2"),
    "metrics garbage line": ("metrics.jsonl", lambda p: p.write_text("x\n" + p.read_text()), "line 1"),
    "checkpoints deleted": ("checkpoints", shutil.rmtree, "their checkpoints are missing"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_an_inconsistent_run_directory_is_refused_and_left_as_it_is(finished_run, tmp_path, name):
    where, damage, message = BREAKS[name]
    cfg = finished_run.replace(run_dir=str(tmp_path / "run"), rounds=3, resume=True)
    shutil.copytree(finished_run.run_dir, cfg.run_dir)
    damage(Path(cfg.run_dir, where))
    before = files_of(cfg.run_dir)
    with pytest.raises(MMFedError, match=message):
        run(cfg)
    assert files_of(cfg.run_dir) == before


def test_resume_of_nothing_or_of_a_finished_run_is_refused_saying_what_to_do(finished_run, tmp_path):
    with pytest.raises(MMFedError, match="does not exist.*leave out --resume"):
        run(finished_run.replace(run_dir=str(tmp_path / "never"), resume=True))
    assert not (tmp_path / "never").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(MMFedError, match="a file, not a run directory"):
        run(finished_run.replace(run_dir=str(tmp_path / "file"), resume=True))
    with pytest.raises(MMFedError, match="already completed its 2 rounds.*--rounds"):
        run(finished_run.replace(resume=True))


def test_a_cut_last_row_and_a_missing_latest_json_are_recovered_exactly(finished_run, tmp_path):
    cfg = finished_run.replace(run_dir=str(tmp_path / "run"), rounds=ROUNDS, resume=True)
    shutil.copytree(finished_run.run_dir, cfg.run_dir)
    Path(cfg.run_dir, "checkpoints", "latest.json").unlink()
    with open(Path(cfg.run_dir, "metrics.jsonl"), "a") as fh:
        fh.write('{"round": 3, "site": "site_0')
    assert run(cfg)["rounds_completed"] == ROUNDS
    assert [r["round"] for r in rows(cfg, kind="global")] == [1, 2, 3]
    config = json.loads(Path(cfg.run_dir, "config.json").read_text())
    assert (
        config["resumed"][-1]["from_round"] == 2
        and "latest.json was missing" in config["resumed"][-1]["recovered"]
    )


def test_a_resumed_run_with_a_server_test_set_scores_each_model_once(cfg, tmp_path):
    from mmfed.data.scenarios.synthetic import synthetic_site

    test_dir = synthetic_site(tmp_path / "server-test", 0, samples=12, num_classes=2, modalities="image")
    cfg = cfg.replace(server_test_dir=str(test_dir), rounds=2)
    run(cfg)
    run(cfg.replace(rounds=3, resume=True))
    assert [r["round"] for r in rows(cfg, kind="server")] == [0, 1, 2, 3]


# -- on Ray, as users run it -----------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_of_mmfed_simulate_leaves_no_process_running_and_the_run_resumes(tmp_path):
    import subprocess
    import sys
    import time

    import psutil

    run_dir = tmp_path / "run"
    args = [str(Path(sys.executable).parent / "mmfed"), "simulate", "--scenario", "synthetic", "--sites", "2",
            "--samples-per-site", "8", "--modalities", "image", "--rounds", "3", "--run-dir", str(run_dir),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and '"kind": "global"' in metrics.read_text()):  # round 1 is done
        assert process.poll() is None and time.monotonic() < deadline
        seen.update({c.pid: c.create_time() for c in psutil.Process(process.pid).children(recursive=True)})
        time.sleep(0.1)
    process.kill()
    process.wait()

    def running() -> list[str]:
        alive = []
        for pid, created in seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.name())
            except psutil.Error:
                pass
        return alive

    until = time.monotonic() + 15
    while running() and time.monotonic() < until:
        time.sleep(0.2)
    assert len(seen) > 3 and not running(), running()  # Ray's processes were there, and are gone
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    glob = [json.loads(x)["round"] for x in metrics.read_text().splitlines() if '"kind": "global"' in x]
    assert glob == [1, 2, 3]


def test_a_second_run_in_a_run_directory_in_use_is_refused(finished_run, tmp_path):
    from mmfed.server.rundir import held

    cfg = finished_run.replace(run_dir=str(tmp_path / "run"), rounds=3, resume=True)
    shutil.copytree(finished_run.run_dir, cfg.run_dir)
    before = files_of(cfg.run_dir)
    with held(Path(cfg.run_dir)):  # another server is running it
        with pytest.raises(MMFedError, match="another mmfed run is using this run directory"):
            run(cfg)
    assert files_of(cfg.run_dir) == before
    assert run(cfg)["rounds_completed"] == 3  # once it is done

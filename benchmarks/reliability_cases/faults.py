"""Faults while a run is under way: a site's process killed mid-round, the server killed (in-process at a
chosen point, or from outside with kill -9 / Ctrl-C at a random moment) and resumed, a full disk.

How the faults are made:
- killed processes: SIGKILL. At a chosen point (MMFED_FAULT, by the injector below that every Python process
  of the case imports through PYTHONPATH as `sitecustomize`: Ray's site workers too), or from outside
  after round 1's global row, at a random moment of the rounds after (the delay is printed).
- a full disk: a small tmpfs mounted under the case's directory, filled before the resume (real ENOSPC);
  where only one process may be limited, RLIMIT_FSIZE set with prlimit on the running server or site
  workers once Ray is up (real EFBIG; Ray itself does not start under a file-size limit).
A resumed run must end as the uninterrupted run of the same settings: the same final model bit for bit,
every round's rows once. Every process the run started must be gone 10 s after it ends (psutil).
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from reliability import Case, Run, mmfed

from reliability_cases.resume import ARGS, RUN, base, finished, model_problem, rows
from reliability_cases.sites import run_config

INJECTOR = '''"""Fault injection for the reliability campaign: MMFED_FAULT="POINT:ROUND[:SITE]" kills this process
(SIGKILL) at POINT of round ROUND. Without MMFED_FAULT it does nothing."""

import os
import sys


def _install(fault):
    import importlib.abc
    import importlib.util
    import signal
    import tempfile

    point, _, rest = fault.partition(":")
    number, _, site = rest.partition(":")
    target = int(number or 0)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def site_runtime(module):  # the site, mid-round: in its training
        real = module.SiteRuntime.fit

        def fit(self, weights, cfg, server_round, *args, **kwargs):
            if point == "site" and self.name == site and server_round == target:
                die()
            return real(self, weights, cfg, server_round, *args, **kwargs)

        module.SiteRuntime.fit = fit

    def recorder(module):  # the server: aggregating, or evaluating
        fit, evaluate = module.RunRecorder.aggregate_fit, module.RunRecorder.aggregate_evaluate

        def aggregate_fit(self, server_round, results, failures):
            if point == "aggregate" and self.round_of(server_round) == target:
                die()
            return fit(self, server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            if point == "evaluate" and self.round_of(server_round) == target:
                die()
            return evaluate(self, server_round, results, failures)

        module.RunRecorder.aggregate_fit = aggregate_fit
        module.RunRecorder.aggregate_evaluate = aggregate_evaluate

    def rundir(module):  # the server's writes: a metrics row, the commit, the summary
        append, commit, summary = module.append, module.RunDir.commit, module.RunDir.write_summary

        def cut_append(path, data, *args, **kwargs):
            if point == "metrics" and path.name == "metrics.jsonl" and f'"round": {target},' in data:
                with open(path, "ab") as fh:
                    fh.write(data.encode()[: len(data) // 2])
                die()
            return append(path, data, *args, **kwargs)

        def cut_commit(self):
            if point == "commit" and self._pending == target:
                die()
            pending = self._pending
            commit(self)
            if point == "committed" and pending == target:
                die()

        def cut_summary(self, data):
            if point == "summary":
                die()
            return summary(self, data)

        module.append, module.RunDir.commit, module.RunDir.write_summary = cut_append, cut_commit, cut_summary

    def checkpoint(module):  # the checkpoint write: the temporary file written, not yet renamed
        real = module.write_atomic

        def write_atomic(path, data, *args, **kwargs):
            if point == "checkpoint" and path.name == f"round_{target:04d}.safetensors":
                fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.write(fd, data)
                os.fsync(fd)
                die()
            return real(path, data, *args, **kwargs)

        module.write_atomic = write_atomic

    hooks = {
        "mmfed.site.runtime": site_runtime,
        "mmfed.server.recorder": recorder,
        "mmfed.server.rundir": rundir,
        "mmfed.checkpoint": checkpoint,
    }

    class After(importlib.abc.MetaPathFinder):
        """Patches a module once it is imported."""

        def find_spec(self, name, path=None, target_module=None):
            hook = hooks.pop(name, None)
            if hook is None:
                return None
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            real = spec.loader.exec_module

            def exec_module(module):
                real(module)
                hook(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, After())


if os.environ.get("MMFED_FAULT"):
    _install(os.environ["MMFED_FAULT"])
'''

NOTES: dict[str, dict] = {}  # per case directory: what its run saw, for its check
_REFERENCES: dict[tuple[str, ...], Path] = {}
_REFERENCE_ROOT = Path(tempfile.mkdtemp(prefix="mmfed-reliability-ref-"))
atexit.register(shutil.rmtree, _REFERENCE_ROOT, True)


def reference(args: list[str]) -> Path:
    """The run directory of the uninterrupted run of `args` (made once per campaign)."""
    key = tuple(args)
    if key not in _REFERENCES:
        work = Path(tempfile.mkdtemp(dir=_REFERENCE_ROOT))
        (work / "home").mkdir()
        run_config(work, "")
        done = mmfed(work, args)
        if done.code != 0:
            raise RuntimeError(f"the uninterrupted run failed: {done.output.strip()[-300:]}")
        _REFERENCES[key] = work / RUN
    return _REFERENCES[key]


# -- running a case's command, watching its processes ---------------------------------------------------
def _alive(seen: dict[int, float]) -> list[str]:
    out = []
    for pid, created in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {process.name()}")
        except psutil.Error:
            continue
    return out


def watched(
    work: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    trigger: Callable[[Path], bool] | None = None,
    action: Callable[[subprocess.Popen], None] | None = None,
    limit: Callable[[subprocess.Popen, dict[int, float]], bool] | None = None,
    timeout: float = 600,
) -> tuple[Run, list[str]]:
    """`mmfed ARGS` as reliability.mmfed runs it, in a session of its own; `action(process)` once
    `trigger(work)` holds, `limit(process, descendants)` until it returns True. Returns the run and its
    descendants still running 10 s after it ended."""
    exe = shutil.which("mmfed", path=str(Path(sys.executable).parent)) or "mmfed"
    environment = {
        **os.environ,
        "HOME": str(work / "home"),
        "MMFED_CACHE_DIR": str(work / "cache"),
        **(env or {}),
    }
    log = Path(tempfile.mkstemp(dir=work / "home", suffix=".out")[1])
    start = time.perf_counter()
    seen: dict[int, float] = {}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [exe, *args],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        fired = limited = False
        while process.poll() is None:
            try:
                seen.update(
                    {c.pid: c.create_time() for c in psutil.Process(process.pid).children(recursive=True)}
                )
            except psutil.Error:
                pass
            if action and not fired and trigger is not None and trigger(work):
                fired = True
                action(process)
            if limit and not limited:
                limited = limit(process, seen)
            if time.perf_counter() - start > timeout:
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    return Run(process.returncode, log.read_text(errors="replace"), seconds), _alive(seen)


def _global_row(number: int) -> Callable[[Path], bool]:
    def seen(work: Path) -> bool:
        path = work / RUN / "metrics.jsonl"
        return path.exists() and f'"round": {number}, "kind": "global"' in path.read_text()

    return seen


def _inject(work: Path) -> Path:
    folder = work / "inject"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(INJECTOR)
    return folder


def _fault_env(work: Path, fault: str) -> dict[str, str]:
    return {"PYTHONPATH": str(_inject(work)), "MMFED_FAULT": fault}


# -- a site killed mid-round ----------------------------------------------------------------------------
def _site_killed(extra: tuple[str, ...], fault: str = "site:2:site_00001"):
    def setup(work: Path) -> list[str]:
        run_config(work, "")
        _inject(work)
        return [*ARGS, "--rounds", "3", "--sites", "3", "--min-sites", "2", *extra]

    def run(work: Path, args: list[str]) -> Run:
        done, left = watched(work, args, _fault_env(work, fault))
        NOTES[str(work)] = {"left": left}
        return done

    return setup, run


def _site_killed_check(work: Path, run: Run) -> str | None:
    killed_round = 2
    problem = finished(run, work / RUN, 3)
    if problem:
        return problem
    fits = [r for r in rows(work / RUN) if r.get("kind") == "fit" and r["round"] == killed_round]
    failed = [r for r in fits if r["status"] == "failed"]
    if len(failed) != 1 or sum(r["status"] == "accepted" for r in fits) != 2:
        return (
            f"round {killed_round}: {[(r['site'], r['status']) for r in fits]}, expected 2 accepted, 1 failed"
        )
    if failed[0]["site"] != "site_00001":
        return f"the killed site is reported as {failed[0]['site']!r}, not site_00001"
    left = NOTES.get(str(work), {}).get("left")
    return f"left running: {left}" if left else None


# -- the server killed, then resumed --------------------------------------------------------------------
SERVER_ARGS = [*ARGS, "--rounds", "3"]


def _server_setup(work: Path) -> list[str]:
    run_config(work, "")
    _inject(work)
    reference(SERVER_ARGS)  # made before the case's clock starts
    return SERVER_ARGS


def _crash_and_resume(
    work: Path, args: list[str], crash: Callable[[Path, list[str]], tuple[Run, list[str]]]
) -> Run:
    crashed, left = crash(work, args)
    resumed, left_after = watched(work, [*args, "--resume"])
    NOTES[str(work)] = {"crashed": crashed, "left": left + left_after}
    return Run(resumed.code, crashed.output + "\n" + resumed.output, crashed.seconds + resumed.seconds)


def _killed_at(fault: str):
    def run(work: Path, args: list[str]) -> Run:
        return _crash_and_resume(work, args, lambda w, a: watched(w, a, _fault_env(w, fault)))

    return run


def _same_as_uninterrupted(work: Path, run: Run) -> str | None:
    notes = NOTES.get(str(work), {})
    crashed = notes.get("crashed")
    if crashed is not None and crashed.code not in (-signal.SIGKILL, -signal.SIGINT, 130):
        return f"the fault did not stop the first run (exit {crashed.code})"
    problem = finished(run, work / RUN, 3) or model_problem(work / RUN, reference(SERVER_ARGS), 3)
    if problem:
        return problem
    if notes.get("left"):
        return f"left running: {notes['left']}"
    return None


def _kill_from_outside(sig: int, seed: int):
    def run(work: Path, args: list[str]) -> Run:
        delay = random.Random(seed).uniform(0.0, 0.5)

        def act(process: subprocess.Popen) -> None:
            time.sleep(delay)
            if sig == signal.SIGINT:  # Ctrl-C: the terminal signals the whole foreground process group
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

        result = _crash_and_resume(work, args, lambda w, a: watched(w, a, trigger=_global_row(1), action=act))
        NOTES[str(work)]["delay"] = delay
        crashed = NOTES[str(work)]["crashed"]
        if crashed.code == 0:  # the signal came after the run had finished: nothing to resume
            NOTES[str(work)]["crashed"] = Run(-sig, crashed.output, crashed.seconds)
        return result

    return run


# -- a full disk -----------------------------------------------------------------------------------------
def _mount_small_disk(work: Path, size: str = "16m") -> Path:
    disk = work / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    return disk


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` until `leave` bytes are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(free - leave, 0))
            fh.flush()
        except OSError:
            pass


def _unmount_keeping_files(disk: Path) -> None:
    """Copy what the tmpfs holds beside it, unmount it, put the copy in its place: the campaign then
    compares the files as the run left them, in a plain folder."""
    keep = Path(tempfile.mkdtemp(dir=disk.parent))
    shutil.copytree(disk, keep / "copy", symlinks=True)
    subprocess.run(["umount", str(disk)], check=True)
    shutil.copytree(keep / "copy", disk, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(keep)


def _on_full_disk(leave: int):
    """A finished 2-round run on a small tmpfs, filled to `leave` free bytes, resumed for round 3."""

    def setup(work: Path) -> list[str]:
        disk = _mount_small_disk(work)
        run_config(work, "")
        base(work, run=f"{disk.name}/{RUN}")
        _fill(disk, leave)
        return [
            "simulate",
            "--config",
            "run.toml",
            "--run-dir",
            f"{disk.name}/{RUN}",
            "--resume",
            "--rounds",
            "3",
        ]

    def run(work: Path, args: list[str]) -> Run:
        try:
            return mmfed(work, args)
        finally:
            _unmount_keeping_files(work / "disk")

    return setup, run


def _ensure_unmounted(work: Path) -> None:
    if os.path.ismount(work / "disk"):
        subprocess.run(["umount", str(work / "disk")], check=False)


def _server_file_limit(work: Path) -> list[str]:
    run_config(work, "")
    base(work)
    return [*ARGS, "--resume", "--rounds", "3"]


def _limit_server_metrics(work: Path, args: list[str]) -> Run:
    """RLIMIT_FSIZE on the running server once Ray's site workers are up: just above metrics.jsonl."""
    metrics = work / RUN / "metrics.jsonl"
    size = metrics.stat().st_size + 16

    def limit(process: subprocess.Popen, seen: dict[int, float]) -> bool:
        if not _workers(seen):
            return False
        psutil.Process(process.pid).rlimit(psutil.RLIMIT_FSIZE, (size, size))
        return True

    done, left = watched(work, args, limit=limit)
    NOTES[str(work)] = {"left": left}
    return done


def _workers(seen: dict[int, float]) -> list[psutil.Process]:
    out = []
    for pid in seen:
        try:
            process = psutil.Process(pid)
            if "ClientAppActor" in " ".join(process.cmdline()):
                out.append(process)
        except psutil.Error:
            continue
    return out


DP = ("--target-epsilon", "8", "--max-grad-norm", "1.0", "--samples-per-site", "40")


def _site_ledger_limit(work: Path) -> list[str]:
    run_config(work, "")
    base(work, extra=DP)
    return [*ARGS, "--resume", "--rounds", "3", *DP]


def _limit_site_ledgers(work: Path, args: list[str]) -> Run:
    """RLIMIT_FSIZE on the site workers once they are up: just above the largest ledger."""
    ledgers = list((work / RUN / "sites").rglob("ledger.jsonl"))
    size = max(p.stat().st_size for p in ledgers) + 64
    NOTES[str(work)] = {"ledgers": {str(p): p.read_bytes() for p in ledgers}}

    def limit(process: subprocess.Popen, seen: dict[int, float]) -> bool:
        workers = _workers(seen)
        for worker in workers:
            worker.rlimit(psutil.RLIMIT_FSIZE, (size, size))
        return len(workers) >= 2

    done, _ = watched(work, args, limit=limit)
    return done


def _unmounted(run: Callable[[Path, list[str]], Run]):
    def wrapped(work: Path, args: list[str]) -> Run:
        try:
            return run(work, args)
        finally:
            _ensure_unmounted(work)

    return wrapped


def _second_server_setup(work: Path) -> list[str]:
    base(work)
    return [*ARGS, "--resume", "--rounds", "6"]


def _second_server(work: Path, args: list[str]) -> Run:
    """A second `mmfed simulate --resume` of the run directory while the first is running it."""
    import fcntl

    def locked(_: Path) -> bool:  # the first run's server holds the run directory
        fd = os.open(work / RUN, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    second: list[Run] = []
    first, left = watched(work, args, trigger=locked, action=lambda _: second.append(mmfed(work, args)))
    NOTES[str(work)] = {"first": first, "left": left}
    if not second:
        return Run(first.code, first.output + "\n[the first run never held the directory]", first.seconds)
    return Run(0 if second[0].code == 2 else 3, first.output + "\n" + second[0].output, first.seconds)


def _second_server_check(work: Path, run: Run) -> str | None:
    notes = NOTES.get(str(work), {})
    if "another mmfed run is using this run directory" not in run.output or run.code != 0:
        return f"the second run was not refused: {run.output.strip()[-200:]}"
    return finished(notes["first"], work / RUN, 6) or (
        f"left running: {notes['left']}" if notes["left"] else None
    )


CHECKPOINT_FULL = _on_full_disk(leave=128 * 1024)
CONFIG_FULL = _on_full_disk(leave=0)
PLAIN_KILL = _site_killed(())
SECURE_KILL = _site_killed(("--secure-aggregation",))
ALL_NEEDED = _site_killed(("--min-sites", "3"))
FIRST_ROUND = _site_killed((), fault="site:1:site_00001")


def _first_round_check(work: Path, run: Run) -> str | None:
    problem = finished(run, work / RUN, 3)
    if problem:
        return problem
    failed = [r for r in rows(work / RUN) if r.get("kind") == "fit" and r["status"] == "failed"]
    if [r["round"] for r in failed] != [1]:
        return f"failed rows: {[(r['round'], r['site']) for r in failed]}, expected one in round 1"
    return None


def _killed(point: str, what: str) -> Case:
    return Case(
        f"server killed {what}, then resumed",
        _server_setup,
        expect="ok",
        run=_killed_at(point),
        check=_same_as_uninterrupted,
        mutable=(RUN, "home"),
    )


CASES = [
    Case(
        "site killed mid-round (plain)",
        PLAIN_KILL[0],
        expect="ok",
        run=PLAIN_KILL[1],
        check=_site_killed_check,
        mutable=(RUN,),
    ),
    Case(
        "site killed mid-round (SecAgg+)",
        SECURE_KILL[0],
        expect="ok",
        run=SECURE_KILL[1],
        check=_site_killed_check,
        mutable=(RUN,),
    ),
    Case(
        "site killed in round 1 (before the server knows it)",
        FIRST_ROUND[0],
        expect="ok",
        run=FIRST_ROUND[1],
        check=_first_round_check,
        mutable=(RUN,),
    ),
    Case(
        "site killed mid-round when every site is needed",
        ALL_NEEDED[0],
        run=ALL_NEEDED[1],
        wants="min-sites=3",
        mutable=(RUN,),
    ),
    _killed("aggregate:2", "while aggregating round 2"),
    _killed("metrics:2", "mid-write of a metrics row"),
    _killed("checkpoint:2", "mid-write of a checkpoint"),
    _killed("commit:2", "between a checkpoint and its commit"),
    _killed("evaluate:2", "while sites evaluate round 2"),
    _killed("committed:2", "right after a round's commit"),
    _killed("summary:0", "before the summary of the last round"),
    Case(
        "kill -9 of mmfed simulate at a random moment, then resumed",
        _server_setup,
        expect="ok",
        run=_kill_from_outside(signal.SIGKILL, 1),
        check=_same_as_uninterrupted,
        mutable=(RUN, "home"),
    ),
    Case(
        "kill -9 of mmfed simulate at another moment, then resumed",
        _server_setup,
        expect="ok",
        run=_kill_from_outside(signal.SIGKILL, 7),
        check=_same_as_uninterrupted,
        mutable=(RUN, "home"),
    ),
    Case(
        "Ctrl-C of mmfed simulate, then resumed",
        _server_setup,
        expect="ok",
        run=_kill_from_outside(signal.SIGINT, 3),
        check=_same_as_uninterrupted,
        mutable=(RUN, "home"),
    ),
    Case(
        "a second server resuming a run directory in use",
        _second_server_setup,
        expect="ok",
        run=_second_server,
        check=_second_server_check,
        mutable=(RUN, "home"),
    ),
    Case(
        "disk full during a checkpoint write (tmpfs)",
        CHECKPOINT_FULL[0],
        run=_unmounted(CHECKPOINT_FULL[1]),
        wants="round_0003.safetensors: could not be written",
        mutable=(f"disk/{RUN}/metrics.jsonl", f"disk/{RUN}/config.json", f"disk/{RUN}/sites"),
    ),
    Case(
        "disk full when the resume writes config.json (tmpfs)",
        CONFIG_FULL[0],
        run=_unmounted(CONFIG_FULL[1]),
        wants="config.json: could not be written",
    ),
    Case(
        "file-size limit during a metrics write (RLIMIT_FSIZE on the server)",
        _server_file_limit,
        run=_limit_server_metrics,
        wants="metrics.jsonl: could not be written",
        mutable=(f"{RUN}/config.json", f"{RUN}/sites"),
    ),
    Case(
        "file-size limit during the sites' ledger writes (RLIMIT_FSIZE on the site workers)",
        _site_ledger_limit,
        run=_limit_site_ledgers,
        wants="ledger.jsonl: could not be written (File too large)",
        mutable=(
            *(
                f"{RUN}/{name}"
                for name in ("config.json", "metrics.jsonl", "summary.json", "global_metrics.png")
            ),
            f"{RUN}/site_accuracy.png",
            *(f"{RUN}/sites/site_0000{i}/state/site-log.jsonl" for i in range(2)),
        ),
    ),
]

"""Resuming a run (`mmfed simulate --resume`) whose directory a crash, a full disk or a person left in
another state than the run did: refused, saying what to do, or continued exactly — never guessed at,
never a round logged twice, never a committed checkpoint overwritten.

Each case first runs a small federation (2 synthetic sites, 2 rounds: `base`), changes its directory, then
resumes it. A refusal must leave every file as it was (nothing is mutable); a recovery may write only the
run's outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from reliability import Case, Run, mmfed

from reliability_cases.sites import run_config, site

RUN = "run"
ARGS = ["simulate", "--config", "run.toml", "--run-dir", RUN]
# what a resumed run writes (its own outputs): everything else must stay as the case left it
OUTPUTS = (
    f"{RUN}/metrics.jsonl",
    f"{RUN}/summary.json",
    f"{RUN}/config.json",
    f"{RUN}/global_metrics.png",
    f"{RUN}/site_accuracy.png",
    f"{RUN}/checkpoints/latest.json",
    f"{RUN}/checkpoints/round_0003.safetensors",
    f"{RUN}/checkpoints/round_0003.json",
    f"{RUN}/sites",  # the simulated sites' logs
)


# -- shared with faults.py ------------------------------------------------------------------------------
def base(work: Path, rounds: int = 2, extra: tuple[str, ...] = (), config: str = "", run: str = RUN) -> Path:
    """A finished run of `rounds` rounds in work/run (the case fails if it does not finish)."""
    if not (work / "run.toml").exists():
        run_config(work, config)
    done = mmfed(
        work, ["simulate", "--config", "run.toml", "--run-dir", run, "--rounds", str(rounds), *extra]
    )
    if done.code != 0:
        raise RuntimeError(f"the base run failed: {done.output.strip()[-300:]}")
    return work / run


def resume(rounds: int = 3, *extra: str) -> list[str]:
    return [*ARGS, "--resume", "--rounds", str(rounds), *extra]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def rows_problem(run_dir: Path, rounds: int) -> str | None:
    """None when metrics.jsonl has each round's rows once: one global row per round 1..rounds, one fit row
    per site and round."""
    try:
        found = rows(run_dir)
    except ValueError as exc:
        return f"metrics.jsonl does not parse: {exc}"
    glob = [r["round"] for r in found if r.get("kind") == "global"]
    if glob != list(range(1, rounds + 1)):
        return f"global rows of rounds {glob}, expected 1..{rounds} once each"
    fits = [(r["round"], r["site"]) for r in found if r.get("kind") == "fit"]
    if len(fits) != len(set(fits)):
        return "a site's fit row is logged twice for a round"
    return None


def weights(run_dir: Path, number: int, folder: str = "checkpoints") -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / folder / f"round_{number:04d}.safetensors"))


def model_problem(a: Path, b: Path, number: int) -> str | None:
    """None when round `number`'s model is bit for bit the same in run dirs a and b."""
    try:
        x, y = weights(a, number), weights(b, number)
    except OSError as exc:
        return f"no round {number} checkpoint: {exc}"
    if sorted(x) != sorted(y) or any(not np.array_equal(x[k], y[k]) for k in x):
        return f"round {number}'s model differs from the uninterrupted run's"
    return None


def finished(run: Run, run_dir: Path, rounds: int) -> str | None:
    """The run ended well: exit 0, every round's rows once, summary says so."""
    if run.code != 0:
        return f"exit {run.code}: {run.output.strip()[-200:]}"
    problem = rows_problem(run_dir, rounds)
    if problem:
        return problem
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("rounds_completed") != rounds:
        return f"summary says {summary.get('rounds_completed')} rounds completed, not {rounds}"
    leftovers = [p.name for p in run_dir.rglob("*.tmp")]
    return f"temporary files left: {leftovers}" if leftovers else None


def _resumed(work: Path, run: Run, rounds: int = 3) -> str | None:
    return finished(run, work / RUN, rounds)


# -- the checkpoints -------------------------------------------------------------------------------------
def _latest_deleted(work: Path) -> list[str]:
    (base(work) / "checkpoints" / "latest.json").unlink()
    return resume()


def _latest_deleted_check(work: Path, run: Run) -> str | None:
    problem = _resumed(work, run)
    resumed = json.loads((work / RUN / "config.json").read_text()).get("resumed", [{}])[-1]
    return problem or (None if resumed.get("from_round") == 2 else f"resumed from {resumed}, not round 2")


def _checkpoint_missing(work: Path) -> list[str]:
    (base(work) / "checkpoints" / "round_0002.safetensors").unlink()
    return resume()


def _checkpoint_truncated(work: Path) -> list[str]:
    path = base(work) / "checkpoints" / "round_0002.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return resume()


def _checkpoint_garbage(work: Path) -> list[str]:
    path = base(work) / "checkpoints" / "round_0002.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    return resume()


def _other_shape(work: Path) -> list[str]:
    from safetensors.numpy import save_file

    run_dir = base(work)
    tensors = weights(run_dir, 2)
    first = next(iter(tensors))
    tensors[first] = np.zeros((*tensors[first].shape, 2), tensors[first].dtype)
    save_file(tensors, str(run_dir / "checkpoints" / "round_0002.safetensors"))
    return resume()


def _other_names(work: Path) -> list[str]:
    from safetensors.numpy import save_file

    run_dir = base(work)
    tensors = weights(run_dir, 2)
    first = next(iter(tensors))
    tensors["renamed." + first] = tensors.pop(first)
    save_file(tensors, str(run_dir / "checkpoints" / "round_0002.safetensors"))
    return resume()


def _latest_garbage(work: Path) -> list[str]:
    (base(work) / "checkpoints" / "latest.json").write_text('{"round": 2, "fi')
    return resume()


def _latest_names_future(work: Path) -> list[str]:
    latest = base(work) / "checkpoints" / "latest.json"
    latest.write_text(json.dumps({"round": 7, "file": "round_0007.safetensors"}))
    return resume(9)


def _commit_behind(work: Path) -> list[str]:
    """Killed after round 2's checkpoint and rows, before latest.json: round 2 is trained again."""
    run_dir = base(work)
    shutil.copy(run_dir / "checkpoints" / "round_0002.safetensors", work / "home" / "round_0002.safetensors")
    latest = {"round": 1, "file": "round_0001.safetensors"}
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps(latest))
    return resume(2)


def _commit_behind_check(work: Path, run: Run) -> str | None:
    """Round 2 trained again gives the model it gave before, bit for bit (the file's metadata differs:
    it records the round's timings)."""
    again = weights(work / RUN, 2)
    before = weights(work / "home", 2, folder="")
    same = sorted(again) == sorted(before) and all(np.array_equal(again[k], before[k]) for k in again)
    return _resumed(work, run, 2) or (None if same else "round 2 trained again gave another model")


def _stale_temporaries(work: Path) -> list[str]:
    checkpoints = base(work) / "checkpoints"
    (checkpoints / ".round_0003.safetensors.k1ll3d.tmp").write_bytes(b"\0" * 4096)
    (work / RUN / ".metrics.jsonl.k1ll3d.tmp").write_text('{"round": 3')
    return resume()


def _checkpoints_deleted(work: Path) -> list[str]:
    shutil.rmtree(base(work) / "checkpoints")
    return resume()


# -- metrics.jsonl ---------------------------------------------------------------------------------------
def _metrics_cut(work: Path) -> list[str]:
    """A killed write: half of round 3's first row, after round 2 was committed."""
    path = base(work) / "metrics.jsonl"
    path.write_text(path.read_text() + '{"round": 3, "site": "site_00000", "kind": "fi')
    return resume()


def _metrics_garbage_line(work: Path) -> list[str]:
    path = base(work) / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "\x00\x00 not json\n"
    path.write_text("".join(lines))
    return resume()


def _metrics_missing(work: Path) -> list[str]:
    (base(work) / "metrics.jsonl").unlink()
    return resume()


def _metrics_lost_rounds(work: Path) -> list[str]:
    path = base(work) / "metrics.jsonl"
    path.write_text("".join(x + "\n" for x in path.read_text().splitlines() if json.loads(x)["round"] == 1))
    return resume()


# -- config.json -----------------------------------------------------------------------------------------
def _config_missing(work: Path) -> list[str]:
    (base(work) / "config.json").unlink()
    return resume()


def _config_garbage(work: Path) -> list[str]:
    (base(work) / "config.json").write_bytes(b"\xff\xfe{garbage")
    return resume()


def _config_edited(work: Path) -> list[str]:
    path = base(work) / "config.json"
    data = json.loads(path.read_text())
    data["federation"]["local-epochs"] = 5
    path.write_text(json.dumps(data, indent=2))
    return resume()


def _config_not_object(work: Path) -> list[str]:
    (base(work) / "config.json").write_text("[]")
    return resume()


# -- the directory ---------------------------------------------------------------------------------------
def _never_existed(work: Path) -> list[str]:
    run_config(work, "")
    return resume()


def _empty_dir(work: Path) -> list[str]:
    run_config(work, "")
    (work / RUN).mkdir()
    return resume()


def _a_file(work: Path) -> list[str]:
    run_config(work, "")
    (work / RUN).write_text("results of another program\n")
    return resume()


def _a_file_new_run(work: Path) -> list[str]:
    run_config(work, "")
    (work / RUN).write_text("results of another program\n")
    return [*ARGS, "--rounds", "1"]


def _without_resume(work: Path) -> list[str]:
    base(work)
    return [*ARGS, "--rounds", "3"]


# -- what the resumed run is asked to do -----------------------------------------------------------------
def _changed_setting(work: Path) -> list[str]:
    base(work)
    return resume(3, "--fusion", "late")


TASK = """[task]
name = "clinic"
labels = ["0", "1"]
modalities = ["image"]

[columns]
id = "id"
label = "label"
split = "split"
image = "image"

[image]
size = 28
channels = 1
mean = 0.5
std = 0.5
"""


def _changed_task(work: Path) -> list[str]:
    for name in ("site_a", "site_b"):
        site(work, name, modalities="image")
    (work / "task.toml").write_text(TASK)
    (work / "run.toml").write_text(
        'task = "task.toml"\nsite-dirs = "site_a,site_b"\nsites = 2\nmin-sites = 2\n'
    )
    base(work)
    (work / "task.toml").write_text(TASK.replace("size = 28", "size = 32"))
    return resume()


def _all_done(work: Path) -> list[str]:
    base(work)
    return resume(2)


def _fewer_rounds(work: Path) -> list[str]:
    base(work)
    return resume(1)


def _summary_missing(work: Path) -> list[str]:
    """Killed after the last round's commit, before summary.json: the resume writes it."""
    (base(work) / "summary.json").unlink()
    return resume(2)


CASES = [
    Case("latest.json deleted", _latest_deleted, expect="ok", check=_latest_deleted_check, mutable=OUTPUTS),
    Case("latest.json names a missing checkpoint", _checkpoint_missing, wants="round_0002.safetensors"),
    Case("latest.json names a truncated checkpoint", _checkpoint_truncated, wants="round_0002.safetensors"),
    Case("the last checkpoint is garbage", _checkpoint_garbage, wants="round_0002.safetensors"),
    Case("a checkpoint of another model shape", _other_shape, wants="another model"),
    Case("a checkpoint with other tensor names", _other_names, wants="another model"),
    Case("latest.json cut in half", _latest_garbage, wants="latest.json"),
    Case("latest.json names a round never run", _latest_names_future, wants="round_0007"),
    Case(
        "latest.json one round behind (killed before the commit)",
        _commit_behind,
        expect="ok",
        check=_commit_behind_check,
        mutable=(*OUTPUTS, f"{RUN}/checkpoints/round_0002.safetensors", f"{RUN}/checkpoints/round_0002.json"),
    ),
    Case(
        "temporary files of killed writes",
        _stale_temporaries,
        expect="ok",
        check=_resumed,
        mutable=(
            *OUTPUTS,
            f"{RUN}/checkpoints/.round_0003.safetensors.k1ll3d.tmp",
            f"{RUN}/.metrics.jsonl.k1ll3d.tmp",
        ),
    ),
    Case("checkpoints/ deleted", _checkpoints_deleted, wants="checkpoints"),
    Case("metrics.jsonl ends in half a row", _metrics_cut, expect="ok", check=_resumed, mutable=OUTPUTS),
    Case("metrics.jsonl has a garbage line", _metrics_garbage_line, wants="metrics.jsonl: line 3"),
    Case("metrics.jsonl deleted", _metrics_missing, wants="metrics.jsonl"),
    Case("metrics.jsonl lost round 2's rows", _metrics_lost_rounds, wants="round(s) 2"),
    Case("config.json deleted", _config_missing, wants="config.json"),
    Case("config.json is garbage", _config_garbage, wants="config.json"),
    Case("config.json edited by hand", _config_edited, wants="edited"),
    Case("config.json is not an object", _config_not_object, wants="config.json"),
    Case("--resume on a directory that never existed", _never_existed, wants="leave out --resume"),
    Case("--resume on an empty directory", _empty_dir, wants="leave out --resume"),
    Case("--resume on a run dir that is a file", _a_file, wants="a file"),
    Case("a new run on a run dir that is a file", _a_file_new_run, wants="a file"),
    Case("an earlier run's directory without --resume", _without_resume, wants="--resume"),
    Case("resume with another setting", _changed_setting, wants="fusion"),
    Case("resume after the task file changed", _changed_task, wants="task changed"),
    Case("resume after all rounds are done", _all_done, wants="already completed"),
    Case("resume with fewer rounds than done", _fewer_rounds, wants="--rounds"),
    Case(
        "summary.json missing after the last round",
        _summary_missing,
        expect="ok",
        check=lambda work, run: _resumed(work, run, 2),
        mutable=OUTPUTS,
    ),
]

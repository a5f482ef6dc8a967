"""Paths as a hospital's IT types them: a file where a folder belongs, a folder that does not exist, the
wrong folder, a folder inside a site's keys. Every one must be refused naming the path (before Ray starts,
for `mmfed simulate`), and nothing the user had may change."""

from __future__ import annotations

from pathlib import Path

from reliability import Case, Run, mmfed

from reliability_cases.settings import before_ray
from reliability_cases.sites import run_config, site


def _sim(work: Path, *options: str) -> list[str]:
    run_config(work, "")
    return ["simulate", "--config", "run.toml", *options]


def _init_site(work: Path, name: str = "site_a") -> Path:
    """A site directory after `mmfed site init` (site.toml, keys/)."""
    root = site(work, name, samples=12, modalities="image")
    done = mmfed(work, ["site", "init", "--dir", name])
    if done.code != 0:
        raise RuntimeError(f"site init failed: {done.output[-300:]}")
    return root


# -- run directories ---------------------------------------------------------------------------------------


def _run_dir_is_file(work: Path) -> list[str]:
    (work / "out").write_text("not a folder\n")
    return _sim(work, "--run-dir", "out")


def _run_dir_under_file(work: Path) -> list[str]:
    (work / "out").write_text("not a folder\n")
    return _sim(work, "--run-dir", "out/run1")


def _run_dir_non_empty(work: Path) -> list[str]:
    (work / "out").mkdir()
    (work / "out" / "metrics.jsonl").write_text('{"round": 1}\n')
    return _sim(work, "--run-dir", "out")


def _run_dir_in_site_state(work: Path) -> list[str]:
    _init_site(work)
    (work / "site_a" / "state").mkdir(exist_ok=True)
    return _sim(work, "--run-dir", "site_a/state/run")


def _train_run_dir_is_file(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    (work / "out").write_text("not a folder\n")
    return ["train", "--site-dir", "site_a", "--run-dir", "out", "--epochs", "1"]


def _train_run_dir_non_empty(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    (work / "out").mkdir()
    (work / "out" / "model.safetensors").write_bytes(b"an earlier model")
    return ["train", "--site-dir", "site_a", "--run-dir", "out", "--epochs", "1"]


def _state_dir_is_file(work: Path) -> list[str]:
    (work / "state").write_text("not a folder\n")
    return _sim(work, "--run-dir", "out", "--state-dir", "state")


def _anchor_file_is_dir(work: Path) -> list[str]:
    (work / "anchors").mkdir()
    return _sim(work, "--run-dir", "out", "--anchor-file", "anchors")


# -- data, test and cache folders --------------------------------------------------------------------------


def _data_dir(kind: str, command: str = "simulate"):
    def setup(work: Path) -> list[str]:
        if kind == "file":
            (work / "data").write_text("not a folder\n")
        elif kind == "empty":
            (work / "data").mkdir()
        if command == "train":
            return ["train", "--scenario", "fsdd-mnist", "--data-dir", "data", "--run-dir", "out"]
        (work / "run.toml").write_text('scenario = "fsdd-mnist"\nrounds = 1\n')
        return ["simulate", "--config", "run.toml", "--run-dir", "out", "--data-dir", "data"]

    return setup


def _server_test_dir_no_manifest(work: Path) -> list[str]:
    (work / "test_site").mkdir()
    (work / "test_site" / "readme.txt").write_text("images go here\n")
    return _sim(work, "--run-dir", "out", "--server-test-dir", "test_site")


def _server_test_dir_missing(work: Path) -> list[str]:
    return _sim(work, "--run-dir", "out", "--server-test-dir", "test_site")


def _cache_in_keys(command: str):
    def setup(work: Path) -> list[str]:
        _init_site(work)
        if command == "train":
            return ["train", "--site-dir", "site_a", "--run-dir", "out", "--cache-dir", "site_a/keys/cache"]
        return _sim(work, "--run-dir", "out", "--cache-dir", "site_a/keys/cache")

    return setup


def _cache_is_file(work: Path) -> list[str]:
    (work / "cache_file").write_text("not a folder\n")
    return _sim(work, "--run-dir", "out", "--cache-dir", "cache_file")


def _site_dirs_missing(work: Path) -> list[str]:
    return ["simulate", "--run-dir", "out", "--site-dirs", "site_a,site_b", "--sites", "2"]


def _train_site_dir_missing(work: Path) -> list[str]:
    return ["train", "--site-dir", "site_a", "--run-dir", "out"]


def _task_missing(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    return ["simulate", "--run-dir", "out", "--site-dirs", "site_a", "--sites", "1", "--min-sites", "1",
            "--task", "task.toml"]  # fmt: skip


# -- the initial model ---------------------------------------------------------------------------------


def _initial_model(kind: str):
    def setup(work: Path) -> list[str]:
        path = work / "model.safetensors"
        if kind == "garbage":
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        elif kind == "dir":
            path.mkdir()
        elif kind == "json":
            path.write_text('{"weights": [1, 2, 3]}\n')
        elif kind == "other model":
            import numpy as np
            from safetensors.numpy import save_file

            save_file({"linear.weight": np.zeros((2, 2), dtype=np.float32)}, str(path))
        return _sim(work, "--run-dir", "out", "--initial-model", "model.safetensors")

    return setup


# -- audit ---------------------------------------------------------------------------------------------


def _audited_site(work: Path) -> Path:
    return _init_site(work)


def _audit_plots_is_file(work: Path) -> list[str]:
    _audited_site(work)
    (work / "plots").write_text("not a folder\n")
    return ["audit", "site_a", "--plots", "plots"]


def _audit_output_missing_folder(work: Path) -> list[str]:
    _audited_site(work)
    return ["audit", "site_a", "--format", "json", "--output", "reports/2025/audit.json"]


def _audit_output_under_file(work: Path) -> list[str]:
    _audited_site(work)
    (work / "notes.txt").write_text("mine\n")
    return ["audit", "site_a", "--format", "json", "--output", "notes.txt/audit.json"]


def _audit_output_is_dir(work: Path) -> list[str]:
    _audited_site(work)
    (work / "report").mkdir()
    return ["audit", "site_a", "--format", "md", "--output", "report"]


def _audit_no_ledger(work: Path) -> list[str]:
    (work / "empty").mkdir()
    (work / "empty" / "notes.txt").write_text("nothing here\n")
    return ["audit", "empty"]


def _audit_missing(work: Path) -> list[str]:
    return ["audit", "no_such_site"]


def _audit_anchors(kind: str):
    def setup(work: Path) -> list[str]:
        _audited_site(work)
        if kind == "empty":
            (work / "run").mkdir()
        elif kind == "file":
            (work / "run").write_text("not a run directory\n")
        return ["audit", "site_a", "--anchors", "run"]

    return setup


def _audit_plots_in_missing_folder(work: Path) -> list[str]:
    _audited_site(work)
    return ["audit", "site_a", "--plots", "plots/deep"]


# -- site and task commands ----------------------------------------------------------------------------


def _site_init_twice(work: Path) -> list[str]:
    _init_site(work)
    return ["site", "init", "--dir", "site_a", "--max-epsilon", "2"]


def _kept(work: Path, run: Run) -> str | None:
    if run.code != 0:
        return f"exit {run.code}: {run.output.strip()[-160:]}"
    return None if "kept existing" in run.output else "did not say it kept the existing policy and key"


def _site_init_no_manifest(work: Path) -> list[str]:
    (work / "site_a").mkdir()
    (work / "site_a" / "images").mkdir()
    return ["site", "init", "--dir", "site_a"]


def _site_init_missing(work: Path) -> list[str]:
    return ["site", "init", "--dir", "site_a"]


def _site_init_file(work: Path) -> list[str]:
    (work / "site_a").write_text("not a folder\n")
    return ["site", "init", "--dir", "site_a"]


def _site_check_missing(work: Path) -> list[str]:
    return ["site", "check", "--dir", "site_a"]


def _approve(kind: str):
    def setup(work: Path) -> list[str]:
        _init_site(work)
        if kind == "broken task":
            (work / "task.toml").write_text("[task\nname = 'x'\n")
        elif kind == "empty task":
            (work / "task.toml").write_text("")
        elif kind == "task dir":
            (work / "task.toml").mkdir()
        elif kind == "missing config":
            return ["site", "approve", "--dir", "site_a", "--config", "run.toml"]
        elif kind == "no policy":
            (work / "site_a" / "site.toml").unlink()
            run_config(work, "")
            return ["site", "approve", "--dir", "site_a", "--config", "run.toml"]
        return ["site", "approve", "--dir", "site_a", "--task", "task.toml"]

    return setup


def _task_init_exists(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    (work / "task.toml").write_text("# my reviewed task\n")
    return ["task", "init", "--from-site", "site_a", "--out", "task.toml"]


def _task_init_missing_folder(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    return ["task", "init", "--from-site", "site_a", "--out", "tasks/new/task.toml"]


def _task_init_out_dir(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    (work / "tasks").mkdir()
    return ["task", "init", "--from-site", "site_a", "--out", "tasks"]


def _task_init_no_site(work: Path) -> list[str]:
    return ["task", "init", "--from-site", "site_a", "--out", "task.toml"]


def _task_check_missing(work: Path) -> list[str]:
    site(work, samples=8, modalities="image")
    return ["task", "check", "task.toml", "site_a"]


CASES = [
    Case("simulate --run-dir is a file (before Ray)", _run_dir_is_file, run=before_ray, wants="out"),
    Case("simulate --run-dir under a file (before Ray)", _run_dir_under_file, run=before_ray, wants="out"),
    Case("simulate --run-dir not empty (before Ray)", _run_dir_non_empty, run=before_ray, wants="out"),
    Case("simulate --run-dir inside a site's state/", _run_dir_in_site_state, run=before_ray, wants="state"),
    Case("train --run-dir is a file", _train_run_dir_is_file, wants="out"),
    Case("train --run-dir not empty", _train_run_dir_non_empty, wants="out"),
    Case("--state-dir is a file (before Ray)", _state_dir_is_file, run=before_ray, wants="state"),
    Case("--anchor-file is a folder (before Ray)", _anchor_file_is_dir, run=before_ray, wants="anchors"),
    Case("--data-dir does not exist (before Ray)", _data_dir("missing"), run=before_ray, wants="data"),
    Case("--data-dir is a file (before Ray)", _data_dir("file"), run=before_ray, wants="data"),
    Case("--data-dir is empty (before Ray)", _data_dir("empty"), run=before_ray, wants="data"),
    Case("train --data-dir does not exist", _data_dir("missing", "train"), wants="data"),
    Case("train --data-dir is a file", _data_dir("file", "train"), wants="data"),
    Case(
        "--server-test-dir without a manifest",
        _server_test_dir_no_manifest,
        run=before_ray,
        wants="test_site",
    ),  # fmt: skip
    Case("--server-test-dir missing", _server_test_dir_missing, run=before_ray, wants="test_site"),
    Case(
        "simulate --cache-dir inside a site's keys/", _cache_in_keys("simulate"), run=before_ray, wants="keys"
    ),  # fmt: skip
    Case("train --cache-dir inside a site's keys/", _cache_in_keys("train"), wants="keys"),
    Case("--cache-dir is a file", _cache_is_file, run=before_ray, wants="cache_file"),
    Case("--site-dirs that do not exist", _site_dirs_missing, run=before_ray, wants="site_a"),
    Case("train --site-dir that does not exist", _train_site_dir_missing, wants="site_a"),
    Case("--task file missing", _task_missing, run=before_ray, wants="task.toml"),
    Case("--initial-model missing", _initial_model("missing"), run=before_ray, wants="model.safetensors"),
    Case(
        "--initial-model is garbage (before Ray)",
        _initial_model("garbage"),
        run=before_ray,
        wants="model.safetensors",
    ),  # fmt: skip
    Case(
        "--initial-model is JSON (before Ray)",
        _initial_model("json"),
        run=before_ray,
        wants="model.safetensors",
    ),  # fmt: skip
    Case("--initial-model is a folder", _initial_model("dir"), run=before_ray, wants="model.safetensors"),
    Case(
        "--initial-model of another model (before Ray)",
        _initial_model("other model"),
        run=before_ray,
        wants="model.safetensors",
    ),  # fmt: skip
    Case("audit --plots is a file", _audit_plots_is_file, wants="plots"),
    Case(
        "audit --plots in a missing folder", _audit_plots_in_missing_folder, expect="ok", mutable=("plots",)
    ),  # fmt: skip
    Case(
        "audit --output into a missing folder (created)",
        _audit_output_missing_folder,
        expect="ok",
        mutable=("reports",),
    ),  # fmt: skip
    Case("audit --output under a file", _audit_output_under_file, wants="notes.txt"),
    Case("audit --output is a folder", _audit_output_is_dir, wants="report"),
    Case("audit a folder holding no ledger", _audit_no_ledger, wants="empty"),
    Case("audit a path that does not exist", _audit_missing, wants="no_such_site"),
    Case("audit --anchors a dir without anchors", _audit_anchors("empty"), wants="anchors"),
    Case("audit --anchors a missing dir", _audit_anchors("missing"), wants="run"),
    Case("audit --anchors a file", _audit_anchors("file"), wants="run"),
    Case("site init twice (never overwrites)", _site_init_twice, expect="ok", check=_kept),
    Case("site init on a dir without a manifest", _site_init_no_manifest, wants="manifest.csv"),
    Case("site init on a missing dir", _site_init_missing, wants="site_a"),
    Case("site init --dir is a file", _site_init_file, wants="site_a"),
    Case("site check on a missing dir", _site_check_missing, wants="site_a"),
    Case("site approve with a missing task file", _approve("missing task"), wants="task.toml"),
    Case("site approve with a broken task file", _approve("broken task"), wants="task.toml"),
    Case("site approve with an empty task file", _approve("empty task"), wants="task.toml"),
    Case("site approve --task is a folder", _approve("task dir"), wants="task.toml"),
    Case("site approve with a missing run config", _approve("missing config"), wants="run.toml"),
    Case("site approve on a site without site.toml", _approve("no policy"), wants="site.toml"),
    Case("task init --out an existing file", _task_init_exists, wants="task.toml"),
    Case("task init --out into a missing folder", _task_init_missing_folder, expect="ok", mutable=("tasks",)),
    Case("task init --out is a folder", _task_init_out_dir, wants="tasks"),
    Case("task init --from-site missing", _task_init_no_site, wants="site_a"),
    Case("task check with a missing task file", _task_check_missing, wants="task.toml"),
]

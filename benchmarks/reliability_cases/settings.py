"""Run settings as a hospital's IT writes them: typos, wrong types, nan/inf, impossible counts, files that are
not TOML, options of `mmfed train` out of range. Every one must be refused before Ray or a training loop
starts, naming the setting or file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from reliability import Case, Run, mmfed

from reliability_cases.sites import run_config, site

# -- run wrappers shared by the settings, paths and keys_certs cases --------------------------------------

RAY_SECONDS = 20.0  # a refusal after this long has (most likely) let Ray start


def before_ray(work: Path, args: list[str]) -> Run:
    """The command, with Ray's temp folder redirected: a refusal only after Ray started (its session folder
    exists, or the refusal took too long) counts as silently accepted."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are limited
    try:
        run = mmfed(work, args, env={"RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)})
        started = any(ray_tmp.rglob("session_*")) or "ray" in run.output.lower().split()
        if run.code != 0 and (started or run.seconds > RAY_SECONDS):
            why = "Ray started" if started else f"it took {run.seconds:.0f}s"
            return Run(0, run.output + f"\n[refused only after Ray started ({why})]", run.seconds)
        return run
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def leaves_nothing(*rels: str):
    """A run wrapper: the refused command must leave none of `rels` (relative to work) behind."""

    def run(work: Path, args: list[str]) -> Run:
        done = mmfed(work, args)
        left = [r for r in rels if (work / r).exists()]
        if done.code != 0 and left:
            return Run(0, done.output + f"\n[refused, but left behind: {', '.join(left)}]", done.seconds)
        return done

    return run


# -- mmfed simulate: the settings of a run config -------------------------------------------------------


DEFAULTS = {
    "scenario": '"synthetic"',
    "sites": "2",
    "samples-per-site": "8",
    "modalities": '"image"',
    "rounds": "1",
}


def toml(text: str, *extra: str):
    """`mmfed simulate --config run.toml` on the tiny synthetic federation, `text` (TOML lines) over it."""

    def setup(work: Path) -> list[str]:
        given = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
        defaults = "".join(f"{k} = {v}\n" for k, v in DEFAULTS.items() if k not in given)
        (work / "run.toml").write_text(defaults + text)
        return ["simulate", "--config", "run.toml", "--run-dir", "out", *extra]

    return setup


def toml_raw(text: str):
    """A run config that is exactly `text` (no defaults)."""

    def setup(work: Path) -> list[str]:
        (work / "run.toml").write_text(text)
        return ["simulate", "--config", "run.toml", "--run-dir", "out"]

    return setup


def sim(*options: str):
    """`mmfed simulate` on the tiny synthetic federation, the setting given as options."""

    def setup(work: Path) -> list[str]:
        run_config(work, "")
        return ["simulate", "--config", "run.toml", "--run-dir", "out", *options]

    return setup


def _utf16(work: Path) -> list[str]:
    path = run_config(work, "")
    path.write_bytes(path.read_text().encode("utf-16"))
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _latin1(work: Path) -> list[str]:
    path = run_config(work, "")
    path.write_bytes(path.read_bytes() + "# Universitätsklinikum\n".encode("latin-1"))
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _csv_not_toml(work: Path) -> list[str]:
    (work / "run.toml").write_text("scenario,sites\nsynthetic,2\n")
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _config_dir(work: Path) -> list[str]:
    (work / "run.toml").mkdir()
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _config_missing(work: Path) -> list[str]:
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _config_empty(work: Path) -> list[str]:
    (work / "run.toml").write_bytes(b"\x00\x01\x02garbage\xff")
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _needs_data_dir(work: Path) -> list[str]:
    (work / "run.toml").write_text('scenario = "fsdd-mnist"\nrounds = 1\n')
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


def _non_empty_run_dir(work: Path) -> list[str]:
    run_config(work, "")
    (work / "out").mkdir()
    (work / "out" / "notes.txt").write_text("last week's results\n")
    return ["simulate", "--config", "run.toml", "--run-dir", "out"]


# -- mmfed train: its own options --------------------------------------------------------------------------


def train(*options: str):
    """`mmfed train` on a tiny site directory with `options`."""

    def setup(work: Path) -> list[str]:
        site(work, samples=8, modalities="image")
        return ["train", "--site-dir", "site_a", "--run-dir", "out", "--epochs", "1", *options]

    return setup


def _no_test_split(work: Path) -> Path:
    """A site whose every record is in the train split: `mmfed train` fails after claiming its run dir."""
    root = site(work, samples=8, modalities="image")
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    rows = [lines[0]] + [
        ",".join(c if i != 2 else "train" for i, c in enumerate(r.split(","))) for r in lines[1:]
    ]
    manifest.write_text("\n".join(rows) + "\n")
    return root


def _train_fails_late(work: Path) -> list[str]:
    _no_test_split(work)
    return ["train", "--site-dir", "site_a", "--run-dir", "runs/first", "--epochs", "1"]


def _train_fails_in_users_empty_dir(work: Path) -> list[str]:
    _no_test_split(work)
    (work / "mine").mkdir()
    return ["train", "--site-dir", "site_a", "--run-dir", "mine", "--epochs", "1"]


def twice(must_exist: str | None = None, must_not_exist: str | None = None):
    """Run the failing command twice: the second attempt must fail the same way (not be blocked by what the
    first left); the first must leave `must_not_exist` absent and `must_exist` present and empty."""

    def run(work: Path, args: list[str]) -> Run:
        first = mmfed(work, args)
        problems = []
        if must_not_exist and (work / must_not_exist).exists():
            problems.append(f"{must_not_exist} left behind")
        if must_exist and not (work / must_exist).is_dir():
            problems.append(f"the user's {must_exist} was removed")
        elif must_exist and any((work / must_exist).iterdir()):
            problems.append(f"{must_exist} not emptied")
        second = mmfed(work, args)
        if "not empty" in second.output:
            problems.append("the second attempt was blocked by the first one's run directory")
        if first.code != 0 and problems:
            return Run(0, second.output + f"\n[{'; '.join(problems)}]", first.seconds + second.seconds)
        return second if first.code != 0 else first

    return run


CASES = [
    # non-finite and out-of-range numbers
    Case("lr = nan", toml("lr = nan\n"), wants="lr"),
    Case("lr = inf", toml("lr = inf\n"), wants="lr"),
    Case("max-grad-norm = -inf", toml("max-grad-norm = -inf\n"), wants="max-grad-norm"),
    Case("target-epsilon = inf", toml("target-epsilon = inf\n"), wants="target-epsilon"),
    Case("noise-multiplier = nan", toml("noise-multiplier = nan\n"), wants="noise-multiplier"),
    Case("delta = 1", toml("delta = 1.0\n"), wants="delta"),
    Case("modality-dropout = 1.0", toml("modality-dropout = 1.0\n"), wants="modality-dropout"),
    Case("fraction-fit = 0", toml("fraction-fit = 0.0\n"), wants="fraction-fit"),
    Case("site-wait-s = -1", toml("site-wait-s = -1.0\n"), wants="site-wait-s"),
    Case("--lr nan on the command line", sim("--lr", "nan"), wants="lr"),
    Case(
        "--max-update-norm inf on the command line", sim("--max-update-norm", "inf"), wants="max-update-norm"
    ),
    # partitions
    Case('partition = "dirichlet:abc"', toml('partition = "dirichlet:abc"\n'), wants="partition"),
    Case('partition = "dirichlet:0"', toml('partition = "dirichlet:0"\n'), wants="partition"),
    Case('partition = "dirichlet:inf"', toml('partition = "dirichlet:inf"\n'), wants="partition"),
    Case('partition = "random"', toml('partition = "random"\n'), wants="partition"),
    # counts
    Case("samples-per-site = 0", toml("samples-per-site = 0\n"), wants="samples-per-site"),
    Case("sites = 0", toml("sites = 0\n"), wants="sites"),
    Case("rounds = -1", toml("rounds = -1\n"), wants="rounds"),
    Case("local-epochs = 0", toml("local-epochs = 0\n"), wants="local-epochs"),
    Case("batch-size = -8", toml("batch-size = -8\n"), wants="batch-size"),
    Case("secagg-max-examples = 0", toml("secagg-max-examples = 0\n"), wants="secagg-max-examples"),
    Case("min-sites = 5 > sites = 2", toml("min-sites = 5\n"), wants="min-sites"),
    Case("--sites 1 under the default min-sites 2", sim("--sites", "1"), wants="min-sites"),
    # wrong types and names
    Case("unknown key learning-rate", toml("learning-rate = 0.01\n"), wants="learning-rate"),
    Case(
        "unknown key in [federation]",
        toml_raw('[federation]\nscenario = "synthetic"\nround = 1\n'),
        wants="round",
    ),  # fmt: skip
    Case('sites = "two" (string for int)', toml('sites = "two"\n'), wants="sites"),
    Case("rounds = 1.5 (float for int)", toml("rounds = 1.5\n"), wants="rounds"),
    Case("lr = true (bool for float)", toml("lr = true\n"), wants="lr"),
    Case("sites = true (bool for int)", toml("sites = true\n"), wants="sites"),
    Case('secure-aggregation = "maybe"', toml('secure-aggregation = "maybe"\n'), wants="secure-aggregation"),
    Case("deidentify = 2 (int for bool)", toml("deidentify = 2\n"), wants="deidentify"),
    Case("scenario = 3 (int for string)", toml("scenario = 3\n"), wants="scenario"),
    Case("modalities = [list]", toml('modalities = ["image"]\n'), wants="modalities"),
    Case("seed = 1e30 (too big for an int)", toml("seed = 1e30\n"), wants="seed"),
    Case("seed = -1", toml("seed = -1\n"), wants="seed"),
    Case("train --seed -1", train("--seed", "-1"), wants="seed"),
    Case('scenario = "mnist" (unknown)', toml('scenario = "mnist"\n'), wants="scenario"),
    Case('fusion = "concat"', toml('fusion = "concat"\n'), wants="fusion"),
    Case('modalities = "image,xray"', toml('modalities = "image,xray"\n'), wants="xray"),
    Case('modalities = ","', toml('modalities = ","\n'), wants="modalities"),
    Case(
        "target-epsilon and noise-multiplier both",
        toml("target-epsilon = 4.0\nnoise-multiplier = 1.0\n"),
        wants="noise-multiplier",
    ),  # fmt: skip
    Case("--device tpu (refused before Ray)", sim("--device", "tpu"), run=before_ray, wants="device"),
    Case('device = "gpu" in the file (before Ray)', toml('device = "gpu"\n'), run=before_ray, wants="device"),
    Case(
        "--cpus-per-site 0 (before Ray)", sim("--cpus-per-site", "0"), run=before_ray, wants="cpus-per-site"
    ),
    Case(
        "--gpus-per-site -1 (before Ray)", sim("--gpus-per-site", "-1"), run=before_ray, wants="gpus-per-site"
    ),  # fmt: skip
    Case(
        "--cpus-per-site 4096 (more than the machine has)",
        sim("--cpus-per-site", "4096"),
        run=before_ray,
        wants="cpus-per-site",
    ),  # fmt: skip
    Case(
        "--gpus-per-site 64 (more GPUs than the machine has)",
        sim("--gpus-per-site", "64"),
        run=before_ray,
        wants="gpus-per-site",
    ),  # fmt: skip
    Case(
        "--cpus-per-site nan (before Ray)",
        sim("--cpus-per-site", "nan"),
        run=before_ray,
        wants="cpus-per-site",
    ),  # fmt: skip
    # the file itself
    Case("run config in UTF-16", _utf16, wants="UTF-8"),
    Case("run config in Latin-1", _latin1, wants="UTF-8"),
    Case("run config is a CSV, not TOML", _csv_not_toml, wants="TOML"),
    Case("run config is binary garbage", _config_empty, wants="run.toml"),
    Case("run config is a directory", _config_dir, wants="run.toml"),
    Case("run config missing", _config_missing, wants="run.toml"),
    Case("federation = 3 (not a table)", toml_raw("federation = 3\n"), wants="federation"),
    Case("scenario needs --data-dir, none given", _needs_data_dir, run=before_ray, wants="data-dir"),
    Case("simulate into a non-empty run dir (before Ray)", _non_empty_run_dir, run=before_ray, wants="out"),
    # mmfed train's own options
    Case("train --modality-dropout 1.5", train("--modality-dropout", "1.5"), wants="modality-dropout"),
    Case("train --modality-dropout nan", train("--modality-dropout", "nan"), wants="modality-dropout"),
    Case("train --lr nan", train("--lr", "nan"), wants="lr"),
    Case("train --lr inf", train("--lr", "inf"), wants="lr"),
    Case("train --epochs 0", train("--epochs", "0"), wants="epochs"),
    Case("train --batch-size 0", train("--batch-size", "0"), wants="batch-size"),
    Case("train --device tpu", train("--device", "tpu"), wants="device"),
    Case("train --device cudax", train("--device", "cudax"), wants="device"),
    Case("train --image-encoder vgg", train("--image-encoder", "vgg"), wants="image-encoder"),
    Case("train --text-encoder gpt", train("--text-encoder", "gpt"), wants="text-encoder"),
    Case("train --modalities xray", train("--modalities", "xray"), wants="xray"),
    Case("train --modalities audio (the site has none)", train("--modalities", "audio"), wants="audio"),
    Case(
        "train fails after creating its run dir; retry not blocked",
        _train_fails_late,
        run=twice(must_not_exist="runs"),
        wants="test",
    ),  # fmt: skip
    Case(
        "train fails in the user's empty run dir; the dir stays",
        _train_fails_in_users_empty_dir,
        run=twice(must_exist="mine"),
        wants="test",
    ),  # fmt: skip
]

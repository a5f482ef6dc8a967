"""A consortium's own task: declared in a task.toml, read by every site through its [columns], federated
with no code — labels, modalities and tabular features that no built-in scenario has."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from localgrid import run_federation as run
from PIL import Image

from mmfed.data.manifest import load_manifest
from mmfed.errors import ConfigError, ManifestError
from mmfed.federation.config import FederationConfig
from mmfed.federation.run_task import run_task
from mmfed.task import Task, load_task

LABELS = ("normal", "pneumonia", "effusion")
TASK_TOML = """
[task]
name = "chest-triage"
labels = ["normal", "pneumonia", "effusion"]
modalities = ["image", "text", "tabular"]

[columns]
id = "patient_id"
label = "finding"
image = "xray_file"
text = "note"
tabular = ["age", "sex", "smoker"]

[model]
fusion = "late"
hidden_dim = 32

[image]
size = 16

[text]
max_length = 24

[tabular]
numeric = { age = 100.0 }
categorical = { sex = ["F", "M"], smoker = ["yes", "no"] }
"""
NOTES = {
    "normal": "clear lungs, no acute findings",
    "pneumonia": "fever and cough, consolidation in the right lower lobe",
    "effusion": "blunted costophrenic angle, fluid on the left",
}


def write_site(root: Path, name: str, rows: int, seed: int) -> Path:
    """A hospital export: its own column names, one column per tabular feature, some cells empty."""
    site = root / name
    (site / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with (site / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["patient_id", "finding", "split", "xray_file", "note", "age", "sex", "smoker", "ward"])
        for i in range(rows):
            label = LABELS[i % 3]
            pixels = rng.integers(0, 60, (16, 16)).astype(np.uint8)
            pixels[:, : 5 * (i % 3 + 1)] += 150  # the label is in the image too
            Image.fromarray(pixels).save(site / "xrays" / f"{i}.png")
            out.writerow([
                f"{name}-{i}", label, "test" if i % 5 == 4 else "train", f"xrays/{i}.png",
                NOTES[label] if i % 4 else "", str(30 + i % 50) if i % 7 else "",
                "FM"[i % 2], ("yes", "no", "")[i % 3], "ward 3",
            ])  # fmt: skip
    return site


@pytest.fixture
def consortium(tmp_path):
    task_file = tmp_path / "task.toml"
    task_file.write_text(TASK_TOML)
    sites = [write_site(tmp_path / "sites", f"hospital_{c}", 30, seed) for seed, c in enumerate("abc")]
    return task_file, sites


def test_a_consortium_federates_its_own_task_from_a_task_file_and_site_directories(consortium, tmp_path):
    task_file, sites = consortium
    cfg = FederationConfig(
        task=str(task_file),
        site_dirs=",".join(map(str, sites)),
        sites=3,
        rounds=2,
        batch_size=8,
        min_sites=3,
        site_wait_s=2,
        run_dir=str(tmp_path / "run"),
    )
    summary = run(cfg)
    assert summary["rounds_completed"] == 2
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl").read().splitlines()]
    fits = [r for r in rows if r["kind"] == "fit"]
    assert {r["site"] for r in fits} == {"hospital_a", "hospital_b", "hospital_c"}
    assert {r["status"] for r in fits} == {"accepted"}
    # every encoder of the task was trained by all three sites' records
    last = [r for r in rows if r["kind"] == "global"][-1]
    assert set(last["examples_per_encoder"]) >= {"image", "text", "tabular"}
    assert all(last["examples_per_encoder"][m] > 0 for m in ("image", "text", "tabular"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["labels"] == list(LABELS) and saved["task"]["columns"]["image"] == "xray_file"
    assert saved["model"]["tabular_features"] == 2 + 2 + 2  # age (value, known) + sex + smoker one-hots


def test_deployed_sites_read_their_manifest_through_the_task_the_server_sends(consortium, tmp_path):
    from mmfed.privacy import site_keys
    from mmfed.privacy.policy import SitePolicy

    task_file, sites = consortium
    approval = load_task(task_file).approval()
    for site, approved in zip(sites, (approval, approval, "0123456789abcdef"), strict=True):
        policy = SitePolicy(
            max_epsilon=50.0, max_sample_rate=1.0, public_examples=24,
            held_modalities=("image", "text", "tabular"), approved_models=(approved,),
        )  # fmt: skip
        (site / "site.toml").write_text(policy.template())
        site_keys.create_key(site)
    cfg = FederationConfig(
        task=str(task_file), sites=3, rounds=1, batch_size=8, min_sites=2, site_wait_s=2,
        noise_multiplier=1.0, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    # a deployed site knows no scenario and no task path: only its own directory and what the server sends
    summary = run(cfg, node_configs=[{"site-dir": str(s)} for s in sites])
    assert summary["rounds_completed"] == 1
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl").read().splitlines()]
    fits = {r["site"]: r for r in rows if r["kind"] == "fit"}
    assert fits["hospital_a"]["status"] == fits["hospital_b"]["status"] == "accepted"
    # the third site approved another task: it refuses this one, whatever the server says
    assert (fits["hospital_c"]["status"], fits["hospital_c"]["code"]) == ("refused", "model")
    entry = json.loads((sites[0] / "state" / "ledger.jsonl").read_text().splitlines()[0])
    assert entry["task_hash"] == approval


def test_the_task_file_decides_the_model_and_the_run_config_cannot_also_say_it(consortium):
    task_file, _ = consortium
    task = run_task(FederationConfig(task=str(task_file)))
    assert task.labels == LABELS and task.model.fusion == "late" and task.data.image.size == 16
    with pytest.raises(ConfigError, match="'fusion'.*declares the model"):
        run_task(FederationConfig(task=str(task_file), fusion="early"))
    with pytest.raises(ConfigError, match="'site-dirs'.*task init"):
        run_task(FederationConfig(site_dirs="a,b"))


def test_a_task_round_trips_through_toml_and_json_with_one_hash(consortium, tmp_path):
    task = load_task(consortium[0])
    (tmp_path / "again.toml").write_text(task.to_toml())
    again = load_task(tmp_path / "again.toml")
    assert again == task and again.approval() == task.approval()
    assert Task.from_json(task.to_json()) == task
    other = load_task(consortium[0]).__class__(**{**task.__dict__, "labels": ("a", "b", "c")})
    assert other.approval() != task.approval()


@pytest.mark.parametrize(
    ("edit", "wanted"),
    [
        (("[task]\n", "[taks]\n"), r"\[taks\].*did you mean 'task'"),
        (('labels = ["normal", "pneumonia", "effusion"]', 'labels = ["normal"]'), "at least two labels"),
        (('labels = ["normal", "pneumonia", "effusion"]', 'labels = ["a", "a"]'), "'a' is listed twice"),
        (('"image", "text", "tabular"]', '"image", "smell"]'), "unknown modality 'smell'"),
        (('fusion = "late"', 'fusion = "sideways"'), r"model\.fusion.*not one of early, late, attention"),
        (("size = 16", "size = 0"), r"image\.size.*must be > 0"),
        (("size = 16", 'size = "big"'), r"image\.size.*must be a int"),
        (("max_length = 24", "max_length = 24\ndeidentify = false"), r"text\.deidentify.*unknown key"),
        (('"sex", "smoker"]', '"sex"]'), r"columns\.tabular.*declares the features"),
        (('note"', 'xray_file"'), "'xray_file' feeds two things"),
        (("[image]", "[video]\nframes = 4\n[image]"), r"\[video\].*not one of the task's modalities"),
        (("age = 100.0", "age = nan"), r"numeric\.age.*must be a number"),
    ],
)
def test_every_mistake_in_a_task_file_is_named_with_the_file_and_key(tmp_path, edit, wanted):
    path = tmp_path / "task.toml"
    path.write_text(TASK_TOML.replace(*edit))
    with pytest.raises(ConfigError, match=wanted) as info:
        load_task(path)
    assert str(path) in str(info.value)


def test_a_task_file_that_is_not_utf8_or_not_toml_is_named(tmp_path):
    path = tmp_path / "task.toml"
    path.write_bytes(TASK_TOML.encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_task(path)
    path.write_text("[task\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_task(path)
    with pytest.raises(ConfigError, match="not found; draft one"):
        load_task(tmp_path / "missing.toml")


def test_the_manifest_is_read_through_the_tasks_columns(consortium):
    task_file, sites = consortium
    task = load_task(task_file)
    manifest = load_manifest(sites[0], labels=list(task.labels), columns=task.columns)
    first = manifest.samples[0]
    assert first.id == "hospital_a-0" and first.image.name == "0.png" and first.text is None
    assert first.tabular == "sex=F;smoker=yes"  # age empty in row 0: unknown, not 0
    assert manifest.samples[1].tabular == "age=31;sex=M;smoker=no"
    assert manifest.extra_columns == ["ward"]


def test_manifest_problems_are_reported_under_the_sites_own_column_names(consortium):
    task_file, sites = consortium
    task = load_task(task_file)
    path = sites[0] / "manifest.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("normal", "unknown-finding").replace("xrays/0.png", "xrays/missing.png")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(sites[0], labels=list(task.labels), columns=task.columns)
    text = str(info.value)
    assert "column 'finding': unknown label 'unknown-finding'" in text
    assert "column 'xray_file': file 'xrays/missing.png' not found" in text
    path.write_text(path.read_text().replace("patient_id", "pid"))
    with pytest.raises(ManifestError, match="required column 'patient_id' is missing"):
        load_manifest(sites[0], labels=list(task.labels), columns=task.columns)


def test_a_tabular_value_that_would_break_the_inline_cell_is_refused(consortium):
    task_file, sites = consortium
    task = load_task(task_file)
    path = sites[0] / "manifest.csv"
    path.write_text(path.read_text().replace(",F,yes,", ",F;x=1,yes,", 1))
    with pytest.raises(ManifestError, match="column 'sex': value 'F;x=1' holds ';' or '='"):
        load_manifest(sites[0], labels=list(task.labels), columns=task.columns)


def test_builtin_scenarios_describe_their_task_the_same_way():
    task = run_task(FederationConfig(scenario="covid-cxr"))
    assert task.modalities == ("image", "text", "tabular") and task.data.image.size == 64
    assert task.columns.image == "image"
    assert run_task(FederationConfig(modalities="audio")).modalities == ("audio",)


def test_a_draft_from_one_sites_manifest_reads_every_site_and_notes_its_guesses(consortium, tmp_path):
    from mmfed.data.task_sites import check_sites, draft_task

    _, sites = consortium
    task, notes = draft_task(sites[0], "drafted")
    assert task.modalities == ("image", "text", "tabular")
    assert (task.columns.id, task.columns.label, task.columns.image, task.columns.text) == (
        "patient_id", "finding", "xray_file", "note",
    )  # fmt: skip
    assert task.columns.tabular == ("age", "sex", "smoker")  # 'ward' holds one value: left out
    assert dict(task.data.tabular.categorical) == {"sex": ("F", "M"), "smoker": ("no", "yes")}
    assert dict(task.data.tabular.numeric) == {"age": 100.0}
    assert any("'finding' is taken as the label" in n for n in notes)
    assert any("'ward' holds one value" in n for n in notes)
    (tmp_path / "drafted.toml").write_text(task.to_toml())
    assert load_task(tmp_path / "drafted.toml") == task
    assert [c.problems for c in check_sites(task, sites)] == [[], [], []]


def test_check_names_each_site_and_row_the_task_does_not_fit(consortium):
    from mmfed.data.task_sites import check_sites

    task_file, sites = consortium
    task = load_task(task_file)
    path = sites[2] / "manifest.csv"
    path.write_text(path.read_text().replace(",F,yes,", ",X,yes,", 1))
    (sites[1] / "labels.txt").write_text("normal\npneumonia\n")
    checks = check_sites(task, sites)
    assert checks[0].problems == [] and checks[0].records == {"train": 24, "test": 6}
    assert checks[0].modalities["text"] == 22  # every fourth note is empty
    assert "lists ['normal', 'pneumonia']" in checks[1].problems[0]
    assert checks[2].problems == ["row 1, tabular: sex='X' is not one of F, M; leave it empty when unknown"]


def test_task_init_and_check_on_the_command_line(consortium, tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app

    _, sites = consortium
    out = tmp_path / "drafted.toml"
    runner = CliRunner()
    done = runner.invoke(
        app, ["task", "init", "--from-site", str(sites[0]), "--out", str(out), "--name", "ct"]
    )
    assert done.exit_code == 0, done.output
    assert "'finding' is taken as the label" in " ".join(done.output.split())
    assert load_task(out).name == "ct" and out.read_text().startswith("# draft by mmfed task init")
    again = runner.invoke(app, ["task", "init", "--from-site", str(sites[0]), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output  # never overwritten
    into = runner.invoke(
        app, ["task", "init", "--from-site", str(sites[0]), "--out", str(sites[0] / "manifest.csv")]
    )
    assert into.exit_code == 2 and "Traceback" not in into.output
    checked = runner.invoke(app, ["task", "check", str(out), *map(str, sites)])
    assert checked.exit_code == 0, checked.output
    assert "every site fits ct" in checked.output
    (sites[1] / "manifest.csv").write_text(
        (sites[1] / "manifest.csv").read_text().replace("pneumonia", "pneumonitis", 1)
    )
    failed = runner.invoke(app, ["task", "check", str(out), *map(str, sites)])
    assert failed.exit_code == 1 and "unknown label 'pneumonitis'" in " ".join(failed.output.split())


def test_a_site_approves_a_task_file_and_then_refuses_any_other(consortium, tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app
    from mmfed.privacy.policy import SitePolicy, load_policy

    task_file, sites = consortium
    (sites[0] / "site.toml").write_text(SitePolicy(max_epsilon=8.0, delta=1e-5).template())
    runner = CliRunner()
    shown = runner.invoke(app, ["site", "approve", "--dir", str(sites[0]), "--task", str(task_file)])
    assert shown.exit_code == 0 and "not approved yet" in shown.output
    assert (
        "task chest-triage" in shown.output and "labels ['normal', 'pneumonia', 'effusion']" in shown.output
    )
    written = runner.invoke(
        app, ["site", "approve", "--dir", str(sites[0]), "--task", str(task_file), "--write"]
    )
    assert written.exit_code == 0, written.output
    assert load_policy(sites[0] / "site.toml").approved_models == (load_task(task_file).approval(),)
    neither = runner.invoke(app, ["site", "approve", "--dir", str(sites[0])])
    assert neither.exit_code == 2 and "give --config RUN.toml or --task" in neither.output


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_a_built_in_scenario_is_site_directories_plus_a_task_file(digits_av, tmp_path):
    from mmfed.data.scenarios import write_task_file

    task_file = write_task_file(digits_av)
    task = load_task(task_file)
    assert task == digits_av.task() and task.modalities == ("image", "audio")
    two = digits_av.sites[:2]
    cfg = FederationConfig(
        task=str(task_file), site_dirs=",".join(map(str, two)), sites=2, rounds=1, min_sites=2,
        site_wait_s=2, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    assert run(cfg)["rounds_completed"] == 1


def test_simulate_reads_the_task_and_its_sites_before_ray_with_absolute_paths(
    consortium, tmp_path, monkeypatch
):
    from mmfed.server.prepare import prepare_simulation

    task_file, sites = consortium
    monkeypatch.chdir(task_file.parent)  # relative paths, as a user types them
    cfg = prepare_simulation(
        None, {"task": "task.toml", "site_dirs": "sites/hospital_a,sites/hospital_b", "run_dir": "run"}
    )
    assert cfg.task == str(task_file.resolve()) and cfg.sites == 2
    assert cfg.site_dirs.split(",") == [str(s.resolve()) for s in sites[:2]]
    # a scenario's sites hold the scenario's task: a task file without its own sites is refused up front
    with pytest.raises(ConfigError, match="'site-dirs'.*needs its sites"):
        prepare_simulation(None, {"task": "task.toml", "run_dir": "run2"})
    (task_file.parent / "broken.toml").write_text(TASK_TOML.replace('fusion = "late"', "fusion = 3"))
    with pytest.raises(ConfigError, match=r"broken.toml: model.fusion"):
        prepare_simulation(None, {"task": "broken.toml", "site_dirs": "sites/hospital_a", "run_dir": "run3"})

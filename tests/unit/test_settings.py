"""Every run setting is declared once (its FederationConfig field); the `mmfed simulate` options, the
checks, pyproject.toml's Flower defaults and docs/reference/settings.md all follow from it."""

import dataclasses
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mmfed.cli import app
from mmfed.errors import ConfigError, MMFedError
from mmfed.federation import settings
from mmfed.federation.config import FederationConfig

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate it: .venv/bin/mmfed settings --markdown > docs/reference/settings.md"


def test_every_setting_is_declared_with_a_section_and_help():
    for f in dataclasses.fields(FederationConfig):
        assert f.metadata.get("section") in settings.SECTIONS, f.name
        assert f.metadata["help"].strip() and "\n" not in f.metadata["help"], f.name
    assert {s.section for s in settings.declared()} == set(settings.SECTIONS)


def test_pyproject_flower_defaults_equal_the_declared_defaults():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    declared = settings.flower_defaults()
    assert list(listed) == list(declared), "regenerate the table: .venv/bin/mmfed settings --flower"
    for key, value in declared.items():
        assert listed[key] == value and type(listed[key]) is type(value), (key, listed[key], value)
    assert FederationConfig.from_mapping(listed) == FederationConfig()


def test_the_settings_reference_is_current():
    assert (REPO / "docs/reference/settings.md").read_text() == settings.markdown(), REGENERATE


def test_mmfed_settings_prints_the_reference_and_the_flower_table():
    runner = CliRunner()
    assert runner.invoke(app, ["settings", "--markdown"]).output == settings.markdown()
    flower = runner.invoke(app, ["settings", "--flower"]).output
    assert tomllib.loads(flower)["tool"]["flwr"]["app"]["config"] == settings.flower_defaults()
    listing = runner.invoke(app, ["settings"])
    assert listing.exit_code == 0 and "secagg-clipping-range" in listing.output


def _simulate_options() -> dict:
    command = typer.main.get_command(app).commands["simulate"]
    return {opt: p for p in command.params for opt in p.opts}


def test_every_setting_is_an_option_of_simulate_that_defaults_to_not_given():
    options = _simulate_options()
    for s in settings.declared():
        option = options.get(f"--{s.key}")
        assert option is not None, f"mmfed simulate has no --{s.key}"
        assert option.default is None, s.key  # not given: the file's value (or the default) stands
        if s.kind == "bool":
            assert option.secondary_opts == [f"--no-{s.key}"], s.key
    for own in ("--config", "--cpus-per-site", "--gpus-per-site", "--ray-address", "--verbose"):
        assert own in options


@pytest.fixture
def simulated(monkeypatch):
    """The config `mmfed simulate` would run, without running it."""
    calls = []

    def fake(cfg, **kwargs):
        calls.append(cfg)
        return {"global_accuracy": 0.5, "rounds_completed": cfg.rounds}

    monkeypatch.setattr("mmfed.server.simulation.simulate", fake)
    return calls


def test_simulate_without_options_runs_the_declared_defaults(tmp_path, simulated, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["simulate"])
    assert result.exit_code == 0, result.output
    (cfg,) = simulated
    run_dir = Path(cfg.run_dir)
    assert run_dir.parent == tmp_path.resolve() / "runs" and run_dir.name.startswith("fed-digits-av-")
    assert cfg.state_dir == str(run_dir / "sites")
    assert cfg.replace(run_dir="", state_dir="") == FederationConfig()


def test_options_not_given_leave_the_config_file_alone(tmp_path, simulated):
    config = tmp_path / "run.toml"
    config.write_text(
        "[federation]\nscenario = 'synthetic'\nlocal-epochs = 2\naugment = false\nfusion = 'late'\n"
        "image_encoder = 'resnet18'\nrounds = 5\n"
    )
    args = ["simulate", "--config", str(config), "--rounds", "4", "--no-deidentify", "--augment"]
    result = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (cfg,) = simulated
    assert (cfg.local_epochs, cfg.fusion, cfg.image_encoder) == (2, "late", "resnet18")  # from the file
    assert (cfg.rounds, cfg.augment, cfg.deidentify) == (4, True, False)  # the options given


def test_new_settings_are_options_and_are_checked(tmp_path, simulated):
    base = ["simulate", "--scenario", "synthetic", "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*base, "--image-encoder", "vit"])
    assert result.exit_code == 2, result.output
    assert "setting 'image-encoder'" in result.output and "resnet18" in result.output
    assert not simulated and not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, [*base, "--image-encoder", "resnet18", "--fraction-fit", "0.5"])
    assert result.exit_code == 0, result.output
    assert (simulated[0].image_encoder, simulated[0].fraction_fit) == ("resnet18", 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [("fusion", "mid"), ("image_encoder", "vit"), ("text_encoder", "gpt"), ("optimizer", "adam"),
     ("lr_schedule", "step"), ("grad_sample_mode", "fast"), ("scenario", "mnist")],
)  # fmt: skip
def test_choices_come_from_the_declaration(name, value):
    with pytest.raises(ConfigError) as info:
        FederationConfig(**{name: value}).validate()
    assert info.value.setting == name.replace("_", "-") and "is not one of" in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [{"sites": 0}, {"rounds": 0}, {"secagg_max_examples": 0}, {"local_epochs": -1}, {"delta": 1.0},
     {"modality_dropout": 1.0}, {"lr": float("nan")}],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)  # fmt: skip
def test_ranges_come_from_the_declaration(changes):
    (name,) = changes
    with pytest.raises(ConfigError) as info:
        FederationConfig(**changes).validate()
    assert info.value.setting == name.replace("_", "-") and "must be" in str(info.value)


def test_values_of_the_wrong_type_are_refused_by_name():
    for changes in ({"sites": "3"}, {"augment": 1}, {"task": 3}, {"rounds": True}, {"lr": "0.1"}):
        (name,) = changes
        with pytest.raises(ConfigError, match=f"'{name.replace('_', '-')}'.*not a valid"):
            FederationConfig(**changes).validate()
    FederationConfig(lr=1, delta=1e-6).validate()  # an int is a float


def test_resumable_settings_are_declared():
    from mmfed.federation.config import RESUMABLE_SETTINGS

    assert set(RESUMABLE_SETTINGS) == {"rounds", "run_dir", "resume", "device", "site_wait_s", "anchor_file",
                                       "round_timeout_s"}  # fmt: skip


def test_image_encoder_reaches_the_model():
    from mmfed.federation.run_task import run_task

    cfg = FederationConfig(scenario="synthetic", image_encoder="resnet18")
    assert run_task(cfg).model_config().image_encoder == "resnet18"


def test_site_dirs_decide_the_site_count_when_sites_is_not_given(tmp_path):
    from mmfed.server.prepare import natural_sites

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    cfg = FederationConfig(site_dirs=",".join(str(tmp_path / n) for n in "abc"), min_sites=4, sites=5)
    assert (natural_sites(cfg, sites_given=False).sites, natural_sites(cfg, False).min_sites) == (3, 3)
    with pytest.raises(MMFedError, match="site-dirs names 3 natural sites: use --sites 3"):
        natural_sites(cfg)
    iid = cfg.replace(partition="iid")
    assert natural_sites(iid, sites_given=False) == iid  # a split of the pooled data: any count
    assert natural_sites(FederationConfig(scenario="synthetic", sites=7), sites_given=False).sites == 7


def test_run_directories_are_named_in_one_place(tmp_path, monkeypatch):
    from mmfed.runs import new_run_dir

    monkeypatch.chdir(tmp_path)
    path = new_run_dir("train", "sites")
    assert path.parent == tmp_path.resolve() / "runs" and path.name.startswith("train-sites-")


def test_a_setting_added_later_leaves_the_identity_of_older_runs_alone():
    """A run recorded before site-max-epsilon existed (its config.json lacks it) can still be resumed;
    a run that sets it is another run."""
    from mmfed.config import config_hash, to_jsonable
    from mmfed.federation.config import RESUMABLE_SETTINGS

    cfg = FederationConfig(target_epsilon=3.0)
    before = {
        k: v for k, v in to_jsonable(cfg).items() if k not in RESUMABLE_SETTINGS and k != "site_max_epsilon"
    }
    assert cfg.identity_hash() == config_hash(before)
    assert cfg.replace(site_max_epsilon=3.0).identity_hash() != cfg.identity_hash()

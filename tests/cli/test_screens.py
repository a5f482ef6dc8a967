"""No data on any screen: a crash is one line (its traceback, without locals, in a private log), bad
input is a message naming the file or setting, and privacy settings are refused before anything runs."""

import math
import re
import stat

import pytest
import typer
from typer.testing import CliRunner

from mmfed import cli
from mmfed.cli import app
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.errors import ConfigError
from mmfed.federation.config import FederationConfig

SECRET = "PATIENT-SECRET-Jane-Doe-1957"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Crash logs go to ~/.mmfed/logs: a fresh home per test."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def site(tmp_path):
    return synthetic_site(tmp_path / "data", 0, samples=20, modalities="image")


def crashing(*args, **kwargs):
    # held only in a local: must reach neither the screen nor the log
    date_of_birth = "-".join(["LOCAL", "ONLY", "1957", "03", "04"])
    raise ValueError(f"cannot decode note {SECRET!r} ({len(date_of_birth)})")


def assert_crash_reported(output: str, home, command: str):
    assert SECRET not in output and "LOCAL-ONLY" not in output and "Traceback" not in output
    match = re.search(
        rf"mmfed: internal error \(ValueError\) in {command}; details were written to (\S+)", output
    )
    assert match, output
    log = home / ".mmfed" / "logs" / match[1].rsplit("/", 1)[-1]
    assert str(log) == match[1] and log.is_file()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in crashing" in text and SECRET in text
    assert "LOCAL-ONLY-1957-03-04" not in text  # no locals in the log either


def test_crash_through_the_console_entry_point_is_one_line_and_a_private_log(site, home, monkeypatch, capsys):
    monkeypatch.setattr("mmfed.data.manifest.load_manifest", crashing)
    with pytest.raises(SystemExit) as exit_:
        app(args=["data", "check", str(site)], prog_name="mmfed")  # what the `mmfed` script calls
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert_crash_reported(out + err, home, "data check")


def test_crash_in_train_is_one_line_and_creates_a_private_log(site, home, tmp_path, monkeypatch):
    monkeypatch.setattr("mmfed.train.centralized.train_centralized", crashing)
    args = ["train", "--site-dir", str(site), "--epochs", "1", "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert_crash_reported(result.output, home, "train")


def test_crash_outside_any_command_is_caught_by_the_entry_point(home, monkeypatch, capsys):
    def broken(self, *args, **kwargs):
        crashing()

    monkeypatch.setattr(typer.Typer, "__call__", broken)
    monkeypatch.setattr("sys.argv", ["mmfed", "audit"])
    with pytest.raises(SystemExit) as exit_:
        app()
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert_crash_reported(out + err, home, "audit")


def test_without_a_usable_home_the_log_is_a_private_temp_file(site, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr("mmfed.data.manifest.load_manifest", crashing)
    result = CliRunner().invoke(app, ["data", "check", str(site)])
    assert result.exit_code == 1 and SECRET not in result.output
    (log,) = tmp_path.glob("mmfed-crash-*.log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and str(log) in result.output
    assert not (tmp_path / "no-such-home").exists()


def test_ctrl_c_says_interrupted_without_traceback(site, home, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mmfed.data.manifest.load_manifest", interrupted)
    result = CliRunner().invoke(app, ["data", "check", str(site)])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "Traceback" not in result.output


def test_no_app_shows_locals_in_a_traceback():
    for typer_app in (cli.app, cli.data_app, cli.site_app, cli.certs_app):
        assert typer_app.pretty_exceptions_show_locals is False


def _long_note(site):
    note = f"{SECRET} coughs at night. " * 40_000  # ~1.4 MB in one cell
    (site / "manifest.csv").write_text(f'id,label,split,text\np1,a,train,"{note}"\np2,b,train,ok\n')
    return "line 2: a cell is longer than"


def _utf16(site):
    body = f"id,label,split,text\np1,a,train,{SECRET} coughs\np2,b,train,ok\n"
    (site / "manifest.csv").write_text(body, encoding="utf-16")
    return "line 1: not UTF-8 text; it is UTF-16"


def _latin1_byte(site):
    body = f"id,label,split,text\np1,a,train,{SECRET} caf\xe9\np2,b,train,ok\n".encode("latin-1")
    (site / "manifest.csv").write_bytes(body)
    return "line 2: not UTF-8 text"


def _utf16_labels(site):
    (site / "manifest.csv").write_text("id,label,split,text\np1,a,train,hi\np2,b,train,ok\n")
    (site / "labels.txt").write_text(f"a\nb\n{SECRET}\n", encoding="utf-16")
    return "labels.txt, line 1: not UTF-8 text"


@pytest.mark.parametrize("bad", [_long_note, _utf16, _latin1_byte, _utf16_labels])
@pytest.mark.parametrize(
    "command",
    [["data", "check"], ["data", "deid"], ["site", "check", "--dir"], ["train", "--site-dir"]],
    ids=lambda c: " ".join(c),
)
def test_unreadable_manifest_is_a_message_naming_the_file_not_its_content(tmp_path, home, bad, command):
    site = tmp_path / "site"
    site.mkdir()
    expected = bad(site)
    run_dir = tmp_path / "run"
    extra = ["--run-dir", str(run_dir)] if command[0] == "train" else []
    result = CliRunner().invoke(app, [*command, str(site), *extra])
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output and "coughs" not in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert str(site) in result.output and expected in result.output
    assert not run_dir.exists()
    assert not (home / ".mmfed").exists()  # a user's mistake is no crash


def test_unwritable_report_path_names_the_path(site, home, tmp_path):
    with (site / "manifest.csv").open("a") as fh:
        fh.write("bad,0,train,,,,\n")  # no modality: skipped, so a report is written
    (tmp_path / "file").write_text("")
    report = tmp_path / "file" / "report.csv"
    result = CliRunner().invoke(
        app, ["data", "check", str(site), "--on-bad-row", "skip", "--report", str(report)]
    )
    assert result.exit_code == 2 and str(tmp_path / "file") in result.output, result.output
    assert "Traceback" not in result.output


# -- settings validated before anything starts -------------------------------------------------------
PRIVACY = ["target_epsilon", "noise_multiplier", "max_grad_norm", "delta"]
OTHER_FLOATS = [
    "lr",
    "fraction_fit",
    "max_update_norm",
    "modality_dropout",
    "missing_modality_rate",
    "secagg_clipping_range",
    "site_wait_s",
]


def refused(**settings) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        FederationConfig.from_mapping({"scenario": "synthetic", **settings})
    return info.value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0], ids=["nan", "inf", "-inf", "-1"])
@pytest.mark.parametrize("name", PRIVACY + OTHER_FLOATS)
def test_non_finite_or_negative_settings_are_refused_by_name(name, value):
    dashed = name.replace("_", "-")
    error = refused(**{name: value})
    assert error.setting == dashed
    assert str(error).startswith(f"setting '{dashed}': must be a finite number")
    assert str(value) in str(error)


@pytest.mark.parametrize(
    "settings",
    [
        {"delta": 0.0},
        {"delta": 1.0},
        {"max_grad_norm": 0.0},
        {"fraction_fit": 0.0},
        {"fraction_fit": 1.5},
        {"modality_dropout": 1.0},
        {"missing_modality_rate": 1.5},
        {"max_update_norm": 0.0},
        {"secagg_clipping_range": 0.0},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_out_of_range_settings_are_refused_by_name(settings):
    (name,) = settings
    assert refused(**settings).setting == name.replace("_", "-")


def test_edge_values_that_are_valid_are_accepted():
    cfg = FederationConfig.from_mapping(
        {
            "scenario": "synthetic",
            "target_epsilon": 0.0,
            "noise_multiplier": 0.0,
            "lr": 0.0,
            "fraction_fit": 1.0,
            "modality_dropout": 0.0,
            "missing_modality_rate": 1.0,
            "site_wait_s": 0.0,
            "delta": 1e-9,
        }
    )
    assert not cfg.private
    assert FederationConfig.from_mapping({"scenario": "synthetic", "target-epsilon": "8"}).private


def test_nan_in_a_toml_file_is_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[federation]\nscenario = 'synthetic'\ntarget-epsilon = nan\n")
    with pytest.raises(ConfigError, match="target-epsilon.*nan"):
        FederationConfig.from_toml(path)
    path.write_text("[federation]\nscenario = 'synthetic'\nnoise-multiplier = inf\n")
    with pytest.raises(ConfigError, match="noise-multiplier.*inf"):
        FederationConfig.from_toml(path)


def test_unreadable_toml_is_a_config_error(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(f"scenario = 'synthetic'  # {SECRET}\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        FederationConfig.from_toml(path)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        FederationConfig.from_toml(tmp_path)  # a directory


@pytest.mark.parametrize(
    "partition",
    ["dirichlet:abc", "dirichlet:-1", "dirichlet:nan", "dirichlet:inf", "dirichlet:0", "dirichlet:", "iid:3",
     "random", "natural:"],
)  # fmt: skip
def test_bad_partitions_are_refused(partition):
    assert refused(partition=partition).setting == "partition"


@pytest.mark.parametrize("partition", ["natural", "natural:speaker", "iid", "dirichlet:0.5"])
def test_good_partitions_are_accepted(partition):
    assert (
        FederationConfig.from_mapping({"scenario": "synthetic", "partition": partition}).partition
        == partition
    )


def test_samples_per_site_and_device_are_checked():
    assert refused(samples_per_site=0).setting == "samples-per-site"
    for device in ("tpu", "cuda:x", "gpu", "cuda:"):
        assert refused(device=device).setting == "device"
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert FederationConfig.from_mapping({"scenario": "synthetic", "device": device}).device == device


@pytest.fixture
def no_simulation(monkeypatch):
    """A refused setting must stop `mmfed simulate` before Ray (or anything else) starts."""

    def started(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr("mmfed.server.simulation.simulate", started)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_simulate_refuses_a_bad_target_epsilon_before_starting(tmp_path, home, no_simulation, value):
    run_dir = tmp_path / "run"
    args = ["simulate", "--scenario", "synthetic", f"--target-epsilon={value}", "--run-dir", str(run_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "setting 'target-epsilon': must be a finite number >= 0" in result.output
    assert "Traceback" not in result.output
    assert not run_dir.exists() and not (home / ".mmfed").exists()


def test_simulate_refuses_nan_from_a_toml_file_before_starting(tmp_path, home, no_simulation):
    config = tmp_path / "run.toml"
    run_dir = tmp_path / "run"
    config.write_text(f"[federation]\nscenario = 'synthetic'\ntarget-epsilon = nan\nrun-dir = '{run_dir}'\n")
    result = CliRunner().invoke(app, ["simulate", "--config", str(config)])
    assert result.exit_code == 2 and "target-epsilon" in result.output and "nan" in result.output
    assert "Traceback" not in result.output and not run_dir.exists()


def test_simulate_checks_the_files_it_needs_before_starting(tmp_path, home, no_simulation):
    base = ["simulate", "--scenario", "synthetic", "--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*base, "--initial-model", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 2 and "none.safetensors" in result.output, result.output
    result = CliRunner().invoke(app, [*base, "--server-test-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.csv" in result.output, result.output
    assert not (tmp_path / "run").exists()

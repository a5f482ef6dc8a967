import json

import pytest
import torch
from typer.testing import CliRunner

from mmfed.checkpoint import load_checkpoint
from mmfed.cli import app
from mmfed.config import ModelConfig, TrainConfig
from mmfed.data.scenarios import from_site_dirs, prepare_scenario
from mmfed.errors import MMFedError
from mmfed.models import build_model
from mmfed.train.centralized import train_centralized


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    scenario = prepare_scenario(
        "synthetic", cache_dir=tmp_path_factory.mktemp("c"), num_sites=2, samples_per_site=40
    )
    for index in range(len(scenario.sites)):  # synthetic sites are written when first used
        scenario.site(index)
    return scenario


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_run_dir_contents_and_checkpoint_round_trip(tiny, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=1)
    summary = train_centralized(
        tiny, tmp_path / "run", modalities="image,audio", train=cfg, model_options={"fusion": "late"}
    )
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "model.safetensors",
        "model.json",
    }
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_accuracy"] == summary["test_accuracy"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["modalities"] == ["image", "audio"] and config["examples"]["train"] == 64
    # the checkpoint rebuilds the same model from its own metadata
    meta = json.loads((run / "model.json").read_text())
    model = build_model(ModelConfig(**{**meta["model"], "modalities": tuple(meta["model"]["modalities"])}))
    assert load_checkpoint(model, run / "model.safetensors")["labels"] == tiny.labels
    with pytest.raises(MMFedError, match="not empty"):
        train_centralized(tiny, run, train=cfg)
    assert json.loads((run / "summary.json").read_text()) == summary  # nothing overwritten


def test_same_seed_same_model(tiny, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, seed=3)
    train_centralized(tiny, tmp_path / "a", modalities="image,text", train=cfg)
    train_centralized(tiny, tmp_path / "b", modalities="image,text", train=cfg)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_modality_the_data_lacks_is_refused(tiny, tmp_path):
    with pytest.raises(MMFedError, match="no video"):
        train_centralized(tiny, tmp_path / "r", modalities="video")


def test_cli_train_on_own_site_dirs_with_skip(tiny, tmp_path):
    site = tiny.sites[0]
    bad = tmp_path / "site"
    import shutil

    shutil.copytree(site, bad)
    with (bad / "manifest.csv").open("a") as fh:
        fh.write("extra1,7,train,image/missing.png,,,\n")
    runner = CliRunner()
    args = ["train", "--site-dir", str(bad), "--site-dir", str(tiny.sites[1]), "--modalities", "image,audio"]
    args += ["--epochs", "1", "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "row 41" in result.output and "missing.png" in result.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    result = runner.invoke(app, [*args, "--on-bad-row", "skip"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and str(tmp_path / "run") in result.output
    report = (tmp_path / "run" / "skipped_rows_site.csv").read_text()
    assert "extra1" in report and "missing.png" in report


def test_cli_data_check(tiny, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(tiny.sites[0])])
    assert result.exit_code == 0 and "no problems found" in result.output
    (tmp_path / "manifest.csv").write_text("id,label,split,image\n1,a,train,x.png\n2,b,train,\n")
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 2
    assert "row 1" in result.output and "x.png" in result.output and "row 2" in result.output


def test_site_dirs_scenario(tiny):
    assert from_site_dirs(tiny.sites).modalities == ("image", "audio", "text")


@pytest.mark.slow
def test_default_job_trains_digits_av_end_to_end(digits_av, tmp_path):
    """What `make run` does, shortened to 2 epochs: the embedded scenario learns well above chance."""
    result = CliRunner().invoke(app, ["train", "--epochs", "2", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8 and summary["test_examples"] > 300
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["scenario"] == "digits-av" and config["model"]["fusion"] == "attention"
    assert config["sites"] == [str(s) for s in digits_av.sites]


def test_central_dp_spends_its_target_over_the_whole_training(tiny, tmp_path):
    """`mmfed train --target-epsilon`: σ from the target over every epoch's steps, one history never reset
    between epochs; the final ε is what dp-accounting's PLD accountant gives for that history too."""
    from mmfed.audit.epsilon import _google_pld
    from mmfed.train.central_dp import CentralPrivacy

    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=1)
    privacy = CentralPrivacy(target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0)
    summary = train_centralized(tiny, tmp_path / "dp", modalities="image,audio", train=cfg, privacy=privacy)
    assert summary["private"] is True and summary["noise_multiplier"] > 0.5
    assert 1.9 <= summary["epsilon_prv"] <= 2.0 + 0.01 and summary["epsilon_rdp"] >= summary["epsilon_prv"]
    # 64 pooled training records, public size 64, batch 16: q = 1/4, 4 steps an epoch, 12 in all
    assert (summary["public_examples"], summary["sample_rate"], summary["steps"]) == (64, 0.25, 12)
    history = [(summary["noise_multiplier"], 0.25, 12)]
    assert _google_pld(history, 1e-5) == pytest.approx(summary["epsilon_prv"], abs=0.05)
    rows = [json.loads(line) for line in (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()]
    spent = [r["epsilon_prv"] for r in rows]
    assert spent == sorted(spent) and spent[0] < spent[-1] == summary["epsilon_prv"]  # composed, not reset
    assert not any(k.startswith("train_") for r in rows for k in r)
    meta = json.loads((tmp_path / "dp" / "model.json").read_text())
    assert meta["private"] is True and meta["epsilon_prv"] == summary["epsilon_prv"]


def test_central_dp_from_a_model_with_frozen_encoders(tiny, tmp_path):
    from safetensors.torch import load_file

    from mmfed.train.central_dp import CentralPrivacy

    cfg = TrainConfig(epochs=1, batch_size=16, seed=2)
    train_centralized(tiny, tmp_path / "public", modalities="image,audio", train=cfg)
    start = tmp_path / "public" / "model.safetensors"
    train_centralized(
        tiny, tmp_path / "dp", modalities="image,audio", train=cfg, initial_model=start,
        freeze_encoders=True, privacy=CentralPrivacy(target_epsilon=3.0),
    )  # fmt: skip
    before, after = load_file(start), load_file(tmp_path / "dp" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders."))
    assert any(not torch.equal(before[k], after[k]) for k in before if not k.startswith("encoders."))


@pytest.mark.parametrize(
    ("option", "value"), [("--target-epsilon", "-1"), ("--delta", "2"), ("--max-grad-norm", "0")]
)
def test_central_dp_options_are_checked_before_any_data_is_read(tmp_path, option, value):
    args = ["train", "--target-epsilon", "3", option, value, "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_train_cli_prints_the_central_epsilon(tiny, tmp_path):
    site_dirs = [arg for site in tiny.sites for arg in ("--site-dir", str(site))]
    args = ["train", *site_dirs, "--modalities", "image,audio", "--epochs", "2", "--batch-size", "16",
            "--target-epsilon", "4", "--run-dir", str(tmp_path / "r")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "central DP-SGD: ε = 3.9" in result.output or "central DP-SGD: ε = 4.0" in result.output
    assert "ε so far" in result.output


def test_train_cli_refuses_an_unknown_pretrained_model_before_reading_data(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--initial-model", "pretrained:nope", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code != 0 and "pretrained:digits-public" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_train_cli_names_an_initial_model_that_is_not_a_model_file(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("patient list, not weights\n")
    args = ["train", "--initial-model", str(bogus), "--epochs", "1", "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and str(bogus) in result.output and "safetensors" in result.output
    assert "internal error" not in result.output and "patient list" not in result.output

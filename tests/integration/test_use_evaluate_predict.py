"""`mmfed evaluate` and `mmfed predict` on real files (FSDD + MNIST, a chest X-ray and its note, GRID
clips), with models of random weights saved as a federation's round checkpoint saves them (the task in the
metadata): the metrics agree with each other, a record given file by file is predicted exactly as its
manifest row is, text is de-identified before tokenising, and bad input is one clear line (exit 2)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from typer.testing import CliRunner

from mmfed.checkpoint import save_checkpoint
from mmfed.cli import app
from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import describe_scenario
from mmfed.data.text import TextProcessor
from mmfed.models import build_model
from mmfed.task import ModelSettings, Task
from mmfed.use.evaluate import evaluate_model
from mmfed.use.inputs import Inputs
from mmfed.use.model_file import load_global_model, read_metadata
from mmfed.use.predict import predict_inputs, predict_site

DIGITS = [str(d) for d in range(10)]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *names: str) -> None:
    """Refused: exit 2, one message naming what is wrong, never a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    flat = " ".join(result.output.split())
    for name in names:
        assert name in flat, result.output


def save_model(path: Path, task: Task, seed: int = 0, **card) -> Path:
    """Random weights with the metadata a federation's round checkpoint carries (mmfed.server.run)."""
    torch.manual_seed(seed)
    model = build_model(task.model_config())
    meta = {
        "task": task.to_dict(),
        "task_hash": task.approval(),
        "run_id": "test-run",
        "round": 3,
        "private": True,
        "secure_aggregation": False,
        "site_epsilon": {"site_a": {"epsilon_prv": 1.0, "epsilon_rdp": 1.2, "delta": 1e-5}},
        "preprocessing": {"deidentify": True, "mask_diagnosis": False},
        **card,
    }
    return save_checkpoint(model, path, meta)


# -- real site directories, a few records each -------------------------------------------------------


@pytest.fixture(scope="module")
def fsdd_sites(shared_data, tmp_path_factory) -> list[Path]:
    """Two speakers' sites: FSDD clips paired with MNIST test images; one test record has no image."""
    from mmfed.data.scenarios.fsdd_mnist import read_idx

    root = tmp_path_factory.mktemp("fsdd-use")
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    sites = []
    for s, speaker in enumerate(("george", "jackson")):
        site = root / f"site_{speaker}"
        (site / "audio").mkdir(parents=True)
        (site / "images").mkdir()
        rows = []
        for digit in range(5):
            for index, split in ((0, "test"), (7, "train")):
                sample_id = f"{digit}_{speaker}_{index}"
                wav = shared_data / "fsdd" / "recordings" / f"{sample_id}.wav"
                shutil.copyfile(wav, site / "audio" / wav.name)
                row = {"id": sample_id, "label": str(digit), "split": split, "audio": f"audio/{wav.name}"}
                if not (digit == 4 and s == 1):  # one record without an image: masked
                    pick = int(np.flatnonzero(labels == digit)[s * 10 + index])
                    Image.fromarray(images[pick], mode="L").save(site / "images" / f"{sample_id}.png")
                    row["image"] = f"images/{sample_id}.png"
                rows.append(row)
        write_manifest(site, rows, labels=DIGITS)
        sites.append(site)
    return sites


@pytest.fixture(scope="module")
def cxr_site(shared_data, tmp_path_factory) -> Path:
    """Six X-rays with their clinical notes, age and sex, from the COVID-19 image data collection."""
    data = shared_data / "covid_chestxray_subset"
    with (data / "metadata_subset.csv").open(newline="", encoding="utf-8") as fh:
        xrays = [r for r in csv.DictReader(fh) if r["modality"] == "X-ray" and r["clinical_notes"].strip()]
    covid = [r for r in xrays if "covid-19" in r["finding"].lower()][:3]
    other = [r for r in xrays if "covid-19" not in r["finding"].lower()][:3]
    site = tmp_path_factory.mktemp("cxr-use") / "site_cxr"
    (site / "images").mkdir(parents=True)
    rows = []
    for i, r in enumerate(covid + other):
        with Image.open(data / "images" / r["filename"]) as img:  # smaller copies: decoding stays quick
            img.convert("L").resize((128, 128)).save(site / "images" / f"x{i}.png")
        tabular = ";".join(
            p for p in (f"age={r['age']}" if r["age"] else "", f"sex={r['sex']}" if r["sex"] else "") if p
        )
        rows.append({
            "id": f"x{i}", "label": "covid-19" if i < 3 else "other", "split": "test",
            "image": f"images/x{i}.png", "text": " ".join(r["clinical_notes"].split()), "tabular": tabular,
        })  # fmt: skip
    write_manifest(site, rows, labels=["covid-19", "other"])
    return site


@pytest.fixture(scope="module")
def grid_site(shared_data, tmp_path_factory) -> Path:
    """Three GRID clips: video, the sound track as a wav, the transcript."""
    from mmfed.data.scenarios.grid_av import AUDIO_SAMPLE_RATE, LABELS, extract_audio, read_transcripts

    site = tmp_path_factory.mktemp("grid-use") / "site_grid"
    (site / "video").mkdir(parents=True)
    (site / "audio").mkdir()
    rows = []
    for clip in read_transcripts(shared_data / "grid_av_samples")[:3]:
        shutil.copyfile(clip.video, site / "video" / f"{clip.code}.mpg")
        soundfile.write(site / "audio" / f"{clip.code}.wav", extract_audio(clip), AUDIO_SAMPLE_RATE)
        rows.append({
            "id": clip.code, "label": clip.command, "split": "test", "video": f"video/{clip.code}.mpg",
            "audio": f"audio/{clip.code}.wav", "text": clip.transcript,
        })  # fmt: skip
    write_manifest(site, rows, labels=LABELS)
    return site


def scenario_task(name: str) -> Task:
    return describe_scenario(name).task(ModelSettings(hidden_dim=32))


@pytest.fixture(scope="module")
def fsdd_model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("m") / "round_003.safetensors", scenario_task("fsdd-mnist"))


@pytest.fixture(scope="module")
def cxr_model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("m") / "round_003.safetensors", scenario_task("covid-cxr"))


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def probabilities(row: dict, labels) -> np.ndarray:
    return np.array([float(row[f"p_{name}"]) for name in labels])


# -- evaluate -------------------------------------------------------------------------------------------


def check_section(section: dict, labels: list[str], modalities: tuple[str, ...]) -> None:
    """One section of metrics.json agrees with itself."""
    matrix = np.array(section["confusion"])
    n = section["examples"]
    assert matrix.shape == (len(labels), len(labels)) and matrix.sum() == n > 0
    assert section["accuracy"] == pytest.approx(np.trace(matrix) / n)
    for k, row in enumerate(section["per_class"]):
        assert row["label"] == labels[k] and row["support"] == matrix[k].sum()
        if matrix[k].sum():
            assert row["recall"] == pytest.approx(matrix[k, k] / matrix[k].sum())
        else:
            assert row["recall"] is None
        if matrix[:, k].sum():
            assert row["precision"] == pytest.approx(matrix[k, k] / matrix[:, k].sum())
        else:
            assert row["precision"] is None
        if matrix[k].sum() + matrix[:, k].sum():
            assert row["f1"] == pytest.approx(2 * matrix[k, k] / (matrix[k].sum() + matrix[:, k].sum()))
        else:
            assert row["f1"] is None
    calibration = section["calibration"]
    assert calibration["bins"] == 15 and len(calibration["table"]) == 15
    assert sum(b["count"] for b in calibration["table"]) == n
    assert 0.0 <= calibration["ece"] <= 1.0
    assert [a["masked"] for a in section["ablation"]] == list(modalities)
    for row in section["ablation"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["change"] == pytest.approx(row["accuracy"] - section["accuracy"])
        assert row["records_with_modality"] == section["records_per_modality"][row["masked"]]


def test_evaluate_fsdd_mnist_sites_pooled_and_per_site(fsdd_model, fsdd_sites, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", *fsdd_sites, "--model", fsdd_model, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for name in ("metrics.json", "confusion.json", "confusion.png", "reliability.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and report["labels"] == DIGITS
    assert report["model"]["round"] == 3 and report["model"]["run_id"] == "test-run"
    pooled, sites = report["pooled"], report["sites"]
    check_section(pooled, DIGITS, ("image", "audio"))
    assert set(sites) == {"site_george", "site_jackson"}
    for section in sites.values():
        check_section(section, DIGITS, ("image", "audio"))
        assert section["examples"] == 5  # the five test rows of the site
    assert pooled["examples"] == 10
    assert np.array_equal(
        np.array(pooled["confusion"]), sum(np.array(s["confusion"]) for s in sites.values())
    )
    assert pooled["records_per_modality"] == {"image": 9, "audio": 10}  # one test record has no image
    confusion = json.loads((out / "confusion.json").read_text())
    assert confusion["pooled"] == pooled["confusion"] and confusion["rows"] == "true class"
    assert confusion["sites"]["site_george"] == sites["site_george"]["confusion"]
    flat = " ".join(result.output.split())
    assert "masked" in flat and "ECE" in flat and "15 equal-width" in flat

    # the same records through `mmfed predict --site`: the same predictions, so the same accuracy
    preds = tmp_path / "preds.csv"
    result = invoke(
        "predict", "--model", fsdd_model, "--site", fsdd_sites[0], "--split", "test", "--out", preds
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(preds)
    assert len(rows) == 5 and [r["id"] for r in rows] == [f"{d}_george_0" for d in range(5)]
    right = np.mean([r["predicted"] == r["label"] for r in rows])
    assert right == pytest.approx(sites["site_george"]["accuracy"])
    for row in rows:
        assert probabilities(row, DIGITS).sum() == pytest.approx(1.0, abs=1e-4)


def test_earlier_results_and_the_sites_files_are_never_overwritten(fsdd_model, fsdd_sites, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    result = invoke("evaluate", fsdd_sites[0], "--model", fsdd_model, "--out", out)
    assert_clean_failure(result, str(out), "not empty")
    assert (out / "metrics.json").read_text() == "{}"
    earlier = tmp_path / "preds.csv"
    earlier.write_text("kept\n")
    result = invoke("predict", "--model", fsdd_model, "--site", fsdd_sites[0], "--out", earlier)
    assert_clean_failure(result, str(earlier), "exists")
    manifest = fsdd_sites[0] / "manifest.csv"
    before = manifest.read_bytes()
    result = invoke("predict", "--model", fsdd_model, "--site", fsdd_sites[0], "--out", manifest)
    assert_clean_failure(result, "manifest")
    assert earlier.read_text() == "kept\n" and manifest.read_bytes() == before


@pytest.mark.slow  # a chest X-ray model with a text encoder and a GRID video model: several seconds
def test_evaluate_covid_cxr_and_grid_av_ablate_every_modality(cxr_model, cxr_site, grid_site, tmp_path):
    cxr = evaluate_model(load_global_model(cxr_model), [cxr_site], tmp_path / "cxr")
    check_section(cxr["pooled"], ["covid-19", "other"], ("image", "text", "tabular"))
    assert cxr["pooled"]["examples"] == 6
    grid_task = scenario_task("grid-av")
    grid_model = save_model(tmp_path / "grid.safetensors", grid_task)
    grid = evaluate_model(load_global_model(grid_model), [grid_site], tmp_path / "grid")
    check_section(grid["pooled"], list(grid_task.labels), ("audio", "text", "video"))
    assert grid["pooled"]["records_per_modality"] == {"audio": 3, "text": 3, "video": 3}
    assert (tmp_path / "grid" / "reliability.png").is_file()

    # a GRID clip given file by file: the probabilities of its manifest row
    gm = load_global_model(grid_model)
    rows, left_out = predict_site(gm, grid_site)
    assert left_out == 0 and len(rows) == 3
    first = rows[0]
    manifest = read_csv(grid_site / "manifest.csv")[0]
    single = predict_inputs(
        gm,
        Inputs(
            video=grid_site / manifest["video"], audio=grid_site / manifest["audio"], text=manifest["text"]
        ),
    )[0]
    assert np.allclose(
        list(single["probabilities"].values()), list(first["probabilities"].values()), atol=1e-5
    )


# -- predict --------------------------------------------------------------------------------------------


def test_single_inputs_are_predicted_as_their_manifest_row(fsdd_model, fsdd_sites, tmp_path):
    site = fsdd_sites[0]
    by_site = {r["id"]: r for r in predict_site(load_global_model(fsdd_model), site, "test")[0]}
    record = read_csv(site / "manifest.csv")[2]  # 1_george_0
    out = tmp_path / "one.csv"
    result = invoke(
        "predict", "--model", fsdd_model, "--image", site / record["image"], "--audio",
        site / record["audio"], "--out", out, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert len(rows) == 1 and rows[0]["modalities"] == "image+audio"
    expected = np.array(list(by_site[record["id"]]["probabilities"].values()))
    assert np.allclose(probabilities(rows[0], DIGITS), expected, atol=1e-5)
    assert rows[0]["predicted"] == by_site[record["id"]]["predicted"]

    # one modality only: the other is masked, as for the manifest's record without an image
    result = invoke("predict", "--model", fsdd_model, "--audio", site / record["audio"], "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (row,) = data["predictions"]
    assert row["modalities"] == "audio" and sum(row["probabilities"].values()) == pytest.approx(1.0)
    assert data["model"]["task"] == "fsdd-mnist"


def test_predict_a_site_writes_one_row_per_record(fsdd_model, fsdd_sites, tmp_path):
    out = tmp_path / "all.json"
    result = invoke("predict", "--model", fsdd_model, "--site", fsdd_sites[1], "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["predictions"]  # format from the suffix
    assert len(rows) == 10 and {r["split"] for r in rows} == {"train", "test"}
    no_image = next(r for r in rows if r["id"] == "4_jackson_0")
    assert no_image["modalities"] == "audio"
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["predicted"] == max(row["probabilities"], key=row["probabilities"].get)
    assert "predictions:" in result.output and "10 rows" in result.output


def test_cxr_record_on_its_own_matches_its_row_and_text_is_deidentified(
    cxr_model, cxr_site, tmp_path, monkeypatch
):
    gm = load_global_model(cxr_model)
    by_site = {r["id"]: r for r in predict_site(gm, cxr_site)[0]}
    record = read_csv(cxr_site / "manifest.csv")[0]
    note = tmp_path / "note.txt"
    note.write_text(record["text"] + "\n", encoding="utf-8")
    single = predict_inputs(
        gm,
        Inputs(
            image=cxr_site / record["image"],
            text_file=note,
            tabular=record["tabular"].replace(";", ","),
        ),
    )[0]
    assert single["modalities"] == "image+text+tabular"
    assert np.allclose(
        list(single["probabilities"].values()),
        list(by_site[record["id"]]["probabilities"].values()),
        atol=1e-5,
    )

    # what the tokenizer is given: the note with the name, age and date scrubbed
    seen: list[str] = []
    clean = TextProcessor.clean

    def spy(self, text):
        seen.append(clean(self, text))
        return seen[-1]

    monkeypatch.setattr(TextProcessor, "clean", spy)
    raw = "Mr. John Smith, a 45-year-old man, seen on 14/03/2020 with fever and cough."
    named = predict_inputs(gm, Inputs(text=raw))[0]
    assert seen and "John" not in seen[-1] and "Smith" not in seen[-1] and "[NAME]" in seen[-1]
    assert "[AGE]" in seen[-1] and "[DATE]" in seen[-1]
    scrubbed = predict_inputs(gm, Inputs(text=seen[-1]))[0]  # placeholders are never detected again
    assert named["probabilities"] == scrubbed["probabilities"]

    # the checkpoint's label-leak guard is applied too
    guarded = load_global_model(
        save_model(
            tmp_path / "guarded.safetensors",
            scenario_task("covid-cxr"),
            preprocessing={"deidentify": True, "mask_diagnosis": True},
        )
    )
    predict_inputs(guarded, Inputs(text="RT-PCR positive for COVID-19."))
    assert "COVID" not in seen[-1] and "[DIAGNOSIS]" in seen[-1]


# -- the centralised baseline's model -------------------------------------------------------------------


def test_a_centralised_model_carries_its_task_and_is_evaluated(tmp_path):
    from mmfed.config import TrainConfig
    from mmfed.data.scenarios import prepare_scenario
    from mmfed.train.centralized import train_centralized

    scenario = prepare_scenario("synthetic", cache_dir=tmp_path / "c", num_sites=2, samples_per_site=24)
    run = tmp_path / "run"
    train_centralized(
        scenario,
        run,
        modalities="image",
        model_options={"fusion": "late", "hidden_dim": 16},
        train=TrainConfig(epochs=1, batch_size=16, augment=False),
    )
    meta = read_metadata(run / "model.safetensors")
    assert meta["task"]["task"]["modalities"] == ["image"] and meta["task"]["model"]["fusion"] == "late"
    assert meta["preprocessing"] == {"deidentify": True, "mask_diagnosis": False}
    gm = load_global_model(run)  # the run directory: its model.safetensors
    assert gm.modalities == ("image",) and gm.task.model.hidden_dim == 16
    out = tmp_path / "eval"
    result = invoke("evaluate", *scenario.sites, "--model", run, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert report["pooled"]["examples"] == summary["test_examples"]
    assert report["pooled"]["accuracy"] == pytest.approx(summary["test_accuracy"])


# -- bad input: one line naming what to fix, exit 2 -----------------------------------------------------


def test_a_file_that_is_not_a_checkpoint(fsdd_sites, tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert_clean_failure(
        invoke("evaluate", fsdd_sites[0], "--model", fake, "--out", tmp_path / "o"),
        str(fake), "not a safetensors checkpoint",
    )  # fmt: skip
    assert_clean_failure(
        invoke("predict", "--model", tmp_path / "nothing.safetensors", "--text", "x"), "no such checkpoint"
    )
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_of_another_model_with_task(fsdd_model, fsdd_sites, tmp_path):
    task_file = tmp_path / "task.toml"
    task_file.write_text(scenario_task("covid-cxr").to_toml())
    result = invoke(
        "evaluate", fsdd_sites[0], "--model", fsdd_model, "--task", task_file, "--out", tmp_path / "o"
    )
    assert_clean_failure(result, str(fsdd_model), "weights are of another model")


def test_a_modality_the_model_lacks(fsdd_model, tmp_path):
    result = invoke("predict", "--model", fsdd_model, "--text", "seven")
    assert_clean_failure(result, "--text", "no text modality", "image, audio")
    result = invoke("predict", "--model", fsdd_model)
    assert_clean_failure(result, "no input given", "--image", "--audio")


def test_corrupt_image_and_audio_files_are_named(fsdd_model, fsdd_sites, tmp_path):
    bad_png = tmp_path / "scan.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    result = invoke("predict", "--model", fsdd_model, "--image", bad_png)
    assert_clean_failure(result, "--image", str(bad_png), "scan.png")
    bad_wav = tmp_path / "clip.wav"
    bad_wav.write_bytes(b"RIFF" + b"\x01" * 60)
    result = invoke("predict", "--model", fsdd_model, "--audio", bad_wav)
    assert_clean_failure(result, "--audio", str(bad_wav), "not a readable audio file")
    result = invoke("predict", "--model", fsdd_model, "--audio", tmp_path / "missing.wav")
    assert_clean_failure(result, "--audio", "no such file")

    # in a site directory: the manifest row that names it
    site = tmp_path / "site"
    shutil.copytree(fsdd_sites[0], site)
    (site / "images" / "0_george_0.png").write_bytes(b"not an image at all")
    result = invoke("evaluate", site, "--model", fsdd_model, "--out", tmp_path / "o")
    assert_clean_failure(result, "manifest.csv", "0_george_0", "image")
    result = invoke("evaluate", site, "--model", fsdd_model, "--out", tmp_path / "o2", "--on-bad-row", "skip")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o2" / "metrics.json").read_text())["pooled"]["examples"] == 4
    assert (tmp_path / "o2" / "skipped_rows_site.csv").is_file()


def test_a_missing_site_dir(fsdd_model, tmp_path):
    result = invoke("evaluate", tmp_path / "no-site", "--model", fsdd_model, "--out", tmp_path / "o")
    assert_clean_failure(result, str(tmp_path / "no-site"), "no such site directory")
    result = invoke("predict", "--model", fsdd_model, "--site", tmp_path / "no-site")
    assert_clean_failure(result, "no such site directory")
    assert not (tmp_path / "o").exists()

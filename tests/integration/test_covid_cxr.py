"""The hospital scenario: covid-cxr sites from a COVID-19 image data collection folder, text
de-identification and the label-leak guard in the pipeline, and MiniLM (frozen / last layer) under DP."""

import csv
import json
import shutil

import numpy as np
import pytest
from localgrid import run_federation
from safetensors.numpy import load_file

from mmfed.data.dataset import Processors
from mmfed.data.manifest import write_manifest
from mmfed.data.scenarios import prepare_scenario
from mmfed.data.scenarios.covid_cxr import LABELS, assign_sites, generate_covid_cxr
from mmfed.errors import ConfigError, DataError
from mmfed.federation.config import FederationConfig
from mmfed.federation.run_task import run_scenario, run_task


@pytest.fixture(scope="module")
def cxr_data(shared_data):
    return shared_data / "covid_chestxray_subset"


@pytest.fixture(scope="module")
def cxr(cxr_data, tmp_path_factory):
    return prepare_scenario("covid-cxr", data_dir=cxr_data, cache_dir=tmp_path_factory.mktemp("cxr"))


def test_sites_are_regions_with_patient_disjoint_splits(cxr):
    manifests = cxr.load_sites()
    assert len(manifests) >= 3 and cxr.labels == LABELS and cxr.modalities == ("image", "text", "tabular")
    ids = [s.id for m in manifests for s in m.samples]
    assert len(ids) == len(set(ids)) == 181  # 186 X-rays, 5 listed twice
    for m in manifests:
        train = {s.extra["patient_id"] for s in m.split("train")}
        test = {s.extra["patient_id"] for s in m.split("test")}
        assert train and test and not train & test, m.site_dir.name
        assert 0.15 <= len(m.split("test")) / len(m.samples) <= 0.45
    labels = {s.label for m in manifests for s in m.samples}
    assert labels == {0, 1}
    skipped = (cxr.sites[0].parent / "skipped_rows.csv").read_text()
    assert skipped.count("listed twice") == 5


def test_small_countries_merge_into_regions_then_other():
    countries = ["Spain"] * 30 + ["Portugal"] * 5 + ["Malta"] * 3 + ["USA"] * 4 + ["unknown"] * 2
    sites = assign_sites(countries, min_site_size=20)
    assert sites["Spain"] == "Spain"
    assert sites["Portugal"] == sites["Malta"] == "other"  # Europe (8) is still too small
    merged = assign_sites(countries, min_site_size=6)  # Portugal + Malta = 8 European images
    assert merged["Portugal"] == merged["Malta"] == "Europe" and merged["USA"] == "other"


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_ct_is_left_out_unless_asked(cxr_data, tmp_path):
    with_ct = generate_covid_cxr(tmp_path / "ct", cxr_data, include_ct=True)
    rows = sum(len(list(csv.DictReader(open(s / "manifest.csv")))) for s in with_ct)
    assert rows > 181


def test_a_wrong_data_dir_is_named_before_anything_is_written(cxr_data, tmp_path):
    with pytest.raises(DataError, match="metadata.csv"):
        generate_covid_cxr(tmp_path / "out", tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (cxr_data / "metadata_subset.csv").read_text().replace("clinical_notes", "notes", 1)
    (bad / "metadata.csv").write_text(text)
    with pytest.raises(DataError, match="clinical_notes"):
        generate_covid_cxr(tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # several seconds: in `make test` (CI), not test-fast
def test_rows_whose_image_is_missing_are_skipped_and_reported(cxr_data, tmp_path):
    copy = tmp_path / "collection"
    shutil.copytree(cxr_data, copy)
    victim = next((copy / "images").iterdir())
    victim.unlink()
    sites = generate_covid_cxr(tmp_path / "out", copy)
    report = (tmp_path / "out" / "skipped_rows.csv").read_text()
    assert f"images/{victim.name} not found" in report
    ids = {r["id"] for s in sites for r in csv.DictReader(open(s / "manifest.csv"))}
    assert victim.stem not in ids


def test_text_is_deidentified_by_default_and_the_guard_masks_the_diagnosis(cxr, cxr_data):
    cfg = FederationConfig(
        scenario="covid-cxr", data_dir=str(cxr_data), cache_dir=str(cxr.sites[0].parents[2])
    )
    assert cfg.deidentify and not cfg.mask_diagnosis
    note = "A 54-year-old man seen by Dr. Maria Rossi on 12/03/2020; RT-PCR positive for COVID-19 pneumonia."
    cleaned = Processors(run_scenario(cfg, run_task(cfg)).spec, ("text",)).text.clean(note)
    assert all(p in cleaned for p in ("[AGE]", "[NAME]", "[DATE]")), cleaned
    assert "Rossi" not in cleaned and "12/03/2020" not in cleaned and "COVID-19" in cleaned
    guarded = cxr.spec.text.__class__(max_length=128, mask_diagnosis=True)
    from mmfed.data.text import TextProcessor

    cleaned = TextProcessor(guarded).clean(note)
    assert "COVID" not in cleaned and "[DIAGNOSIS]" in cleaned and "pneumonia" in cleaned
    assert "Rossi" not in cleaned and "54" not in cleaned


def text_change(cfg) -> dict[str, bool]:
    """Which text-encoder tensors changed in round 1 (key -> changed)."""
    from mmfed.models import build_model
    from mmfed.train.loop import seed_everything

    seed_everything(cfg.seed)
    state = build_model(run_task(cfg).model_config()).state_dict()
    after = load_file(f"{cfg.run_dir}/checkpoints/round_0001.safetensors")
    return {
        k: not np.array_equal(after[k], v.numpy()) for k, v in state.items() if k.startswith("encoders.text.")
    }


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [False, True], ids=["last-layer", "frozen"])
def test_minilm_under_dp_trains_only_what_it_should(cxr, cxr_data, tmp_path, freeze):
    cfg = FederationConfig(
        scenario="covid-cxr",
        data_dir=str(cxr_data),
        sites=len(cxr.sites),
        rounds=1,
        batch_size=16,
        text_encoder="minilm",
        freeze_text=freeze,
        noise_multiplier=1.0,
        mask_diagnosis=True,
        min_sites=3,
        site_wait_s=2,
        cache_dir=str(cxr.sites[0].parents[2]),
        run_dir=str(tmp_path / "run"),
        state_dir=str(tmp_path / "state"),
    )
    summary = run_federation(cfg)
    assert summary["rounds_completed"] == 1 and summary["epsilon_prv_max"] > 0
    changed = text_change(cfg)
    last = [k for k in changed if ".encoder.layer.5." in k]
    earlier = [k for k in changed if k.startswith("encoders.text.bert.") and k not in last]
    assert last and earlier and not any(changed[k] for k in earlier)  # pretrained layers stay as shipped
    assert all(changed[k] for k in changed if k.startswith("encoders.text.proj."))
    assert any(changed[k] for k in last) is (not freeze)
    fits = [json.loads(x) for x in open(f"{cfg.run_dir}/metrics.jsonl") if '"fit"' in x]
    assert len(fits) == len(cxr.sites) and all(r["status"] == "accepted" for r in fits)


def test_age_and_sex_are_an_optional_tabular_modality(cxr):
    from mmfed.config import TabularSpec
    from mmfed.data.tabular import TabularProcessor, parse_cell

    samples = [s for m in cxr.load_sites() for s in m.samples]
    with_tabular = [s for s in samples if s.tabular]
    assert 0.8 * len(samples) < len(with_tabular) < len(samples)  # some rows give neither age nor sex
    encode = TabularProcessor(TabularSpec())
    assert encode("age=54;sex=M").tolist() == pytest.approx([0.54, 1.0, 1.0, 0.0])
    assert encode("sex=F").tolist() == [0.0, 0.0, 0.0, 1.0]
    assert encode("age=54;sex=M;smoker=yes").tolist() == pytest.approx([0.54, 1.0, 1.0, 0.0])  # unknown name
    assert "not name=value" in parse_cell("age 54")[1]
    assert "not a number" in encode.problem("age=fifty")
    assert "not one of M, F" in encode.problem("sex=male")


def test_bad_tabular_cells_are_named_before_training(tmp_path):
    from mmfed.config import DataSpec
    from mmfed.data.dataset import MultimodalDataset
    from mmfed.data.manifest import load_manifest, write_manifest
    from mmfed.errors import ManifestError

    rows = [
        {"id": "a", "label": "x", "split": "train", "tabular": "age=40;sex=F"},
        {"id": "b", "label": "y", "split": "train", "tabular": "age=unknown"},
    ]
    write_manifest(tmp_path, rows)
    samples = load_manifest(tmp_path).samples
    with pytest.raises(DataError, match=r"sample 'b' \(row 2\): age='unknown' is not a number"):
        MultimodalDataset(samples, Processors(DataSpec(), ("tabular",)))
    write_manifest(tmp_path, [*rows[:1], {**rows[1], "tabular": "age:40"}])
    with pytest.raises(ManifestError, match=r"row 2 .*column 'tabular'"):
        load_manifest(tmp_path)


def test_data_deid_previews_what_the_model_sees(tmp_path):
    from typer.testing import CliRunner

    from mmfed.cli import app
    from mmfed.data.manifest import write_manifest

    note = (
        "Mr. John Smith, 71 years old, seen on 3 March 2020. PCR positive for COVID-19. Bilateral opacities."
    )
    rows = [
        {"id": "a", "label": "covid-19", "split": "train", "text": note},
        {"id": "b", "label": "other", "split": "train", "text": "Right lower lobe consolidation."},
    ]
    write_manifest(tmp_path, rows)
    result = CliRunner().invoke(app, ["data", "deid", str(tmp_path), "--mask-diagnosis"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "2 notes, 1 changed" in out and "NAME 1" in out and "AGE 1" in out and "DATE 1" in out
    assert (
        "after: Mr. [NAME], [AGE], seen on [DATE]. [DIAGNOSIS] for [DIAGNOSIS]. Bilateral opacities." in out
    )


@pytest.mark.slow
def test_deployed_hospitals_train_with_a_server_that_has_no_data(cxr, tmp_path):
    """Deployment: each hospital points its SuperNode at its own site directory; the server's run config
    names the scenario but no data folder, and the model is built from the scenario's description."""
    from mmfed.privacy import site_keys
    from mmfed.privacy.geometry import rounded_size
    from mmfed.privacy.policy import SitePolicy

    hospitals = []
    for site in cxr.sites[:3]:
        copy = shutil.copytree(site, tmp_path / "hospitals" / site.name)
        if len(hospitals) == 2:  # the third hospital keeps no notes and no age/sex: images only
            rows = list(csv.DictReader(open(copy / "manifest.csv")))
            (copy / "manifest.csv").unlink()
            write_manifest(copy, [{**r, "text": "", "tabular": ""} for r in rows])
        train = sum(r["split"] == "train" for r in csv.DictReader(open(copy / "manifest.csv")))
        rows = list(csv.DictReader(open(copy / "manifest.csv")))
        held = tuple(m for m in ("image", "text", "tabular") if any(r[m] for r in rows))
        policy = SitePolicy(
            max_epsilon=8.0, max_sample_rate=1.0, public_examples=rounded_size(train), held_modalities=held
        )
        (copy / "site.toml").write_text(policy.template())
        site_keys.create_key(copy)
        hospitals.append(copy)
    cfg = FederationConfig(
        scenario="covid-cxr",  # no data-dir: the server never sees the hospitals' data
        sites=3,
        rounds=1,
        batch_size=16,
        fusion="late",
        optimizer="sgd",
        mask_diagnosis=True,
        noise_multiplier=1.5,
        min_sites=3,
        site_wait_s=2,
        cache_dir=str(tmp_path / "server-cache"),
        run_dir=str(tmp_path / "run"),
    )
    summary = run_federation(cfg, node_configs=[{"site-dir": str(h)} for h in hospitals])
    assert summary["rounds_completed"] == 1 and set(summary["site_epsilon"]) == {h.name for h in hospitals}
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["model"]["modalities"] == ["image", "text", "tabular"] and config["labels"] == LABELS
    assert not (tmp_path / "server-cache" / "scenarios").exists()  # nothing was built on the server
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(r["status"] == "accepted" for r in rows if r["kind"] == "fit")
    (glob,) = [r for r in rows if r["kind"] == "global"]
    per_encoder = glob["examples_per_encoder"]
    assert 0 < per_encoder["text"] < per_encoder["image"] == per_encoder["shared"]  # two hospitals had notes


def test_a_hospital_with_other_classes_is_refused_by_name(cxr, tmp_path):
    from mmfed.site.loading import deployed_samples

    site = shutil.copytree(cxr.sites[0], tmp_path / "h")
    (site / "labels.txt").write_text("pneumonia\nnormal\n")
    wanted = r"lists \['pneumonia', 'normal'\] but the run's task \(covid-cxr\)"
    with pytest.raises(ConfigError, match=wanted):
        deployed_samples(site, cxr.task())

"""The numbers `mmfed evaluate` reports, on cases worked out by hand: per-class precision / recall / F1
from the confusion matrix (undefined ones null), expected calibration error over 15 equal-width bins, the
modality ablation, how a modality is masked, and which text preprocessing a model's records get."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfed.use.infer import masked_batch
from mmfed.use.metrics import ablation, calibration, classification, confusion, per_class

NAMES = ["a", "b", "c", "d"]


def test_per_class_metrics_from_the_confusion_matrix():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    matrix = confusion(labels, preds, 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    a, b, c, d = per_class(matrix, NAMES)
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (0.5, 0.5, 0.5, 2)
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0 and b["f1"] == pytest.approx(0.8)
    assert c["precision"] is None and c["recall"] == 0.0 and c["f1"] == 0.0  # present, never predicted
    assert d["precision"] is d["recall"] is d["f1"] is None and d["support"] == 0  # neither


def test_classification_summary_and_macro_averages():
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.1, 0.8, 0.1, 0.0], [0.2, 0.3, 0.5, 0.0]])
    labels = np.array([0, 1, 1])
    report = classification(probs, labels, NAMES)
    assert report["examples"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.3])))
    assert np.array(report["confusion"]).sum() == 3
    # precision defined for a, b, c (predicted); recall for a, b (present)
    assert report["macro_precision"] == pytest.approx((1 + 1 + 0) / 3)
    assert report["macro_recall"] == pytest.approx((1 + 0.5) / 2)


def test_expected_calibration_error_over_15_equal_width_bins():
    probs = np.array([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1, 0, 0])  # confident: one right, one wrong; unsure: both right
    result = calibration(probs, labels)
    assert result["bins"] == 15 and len(result["table"]) == 15
    assert result["ece"] == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.5))
    filled = [b for b in result["table"] if b["count"]]
    assert [b["upper"] for b in filled] == pytest.approx([8 / 15, 1.0])  # (7/15, 8/15] and (14/15, 1]
    assert [b["count"] for b in filled] == [2, 2]
    assert [b["accuracy"] for b in filled] == [1.0, 0.5]
    assert result["table"][0]["lower"] == 0.0 and result["table"][-1]["upper"] == 1.0
    # a confidence of exactly 1 falls in the last bin; the bins cover every record
    sure = calibration(np.array([[1.0, 0.0]]), np.array([0]))
    assert sure["table"][-1]["count"] == 1 and sure["ece"] == 0.0


def test_ece_is_within_0_and_1_and_counts_every_record():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=200)
    labels = rng.integers(0, 5, size=200)
    result = calibration(probs, labels)
    assert 0.0 <= result["ece"] <= 1.0
    assert sum(b["count"] for b in result["table"]) == 200


def test_ablation_compares_masked_with_unmasked_accuracy():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])  # unmasked: 2 of 3 right
    presence = np.array([[True, True], [True, False], [False, True]])
    masked = {"image": np.array([[0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])}  # the first record flips
    (row,) = ablation(probs, masked, labels, presence, ("image", "audio"))
    assert row["masked"] == "image" and row["accuracy"] == pytest.approx(1 / 3)
    assert row["change"] == pytest.approx(-1 / 3)
    assert row["records_with_modality"] == 2
    assert row["accuracy_on_those"] == 0.5 and row["unmasked_accuracy_on_those"] == 1.0


def test_a_masked_modality_is_absent_and_zero_and_the_batch_is_untouched():
    batch = {
        "presence": torch.tensor([[True, True], [True, False]]),
        "image": torch.ones(2, 1, 4, 4),
        "text_ids": torch.ones(2, 3, dtype=torch.long),
        "text_mask": torch.ones(2, 3, dtype=torch.long),
        "label": torch.tensor([0, 1]),
    }
    out = masked_batch(batch, "text", ("image", "text"))
    assert out["presence"].tolist() == [[True, False], [True, False]]
    assert not out["text_ids"].any() and not out["text_mask"].any() and out["image"].all()
    assert batch["presence"].tolist() == [[True, True], [True, False]] and batch["text_ids"].all()


def test_text_preprocessing_is_the_models_plus_what_the_site_requires(tmp_path):
    from mmfed.data.scenarios import describe_scenario
    from mmfed.use.model_file import GlobalModel

    task = describe_scenario("covid-cxr").task()
    plain = GlobalModel(None, task, tmp_path / "m.safetensors", {})
    assert plain.preprocessing == {"deidentify": True, "mask_diagnosis": False}  # the safer default
    off = GlobalModel(None, task, tmp_path, {"preprocessing": {"deidentify": False, "mask_diagnosis": False}})
    assert off.data_spec().text.deidentify is False
    (tmp_path / "site.toml").write_text("[privacy]\nmask_diagnosis = true\n")
    spec = off.data_spec(tmp_path)  # the site's policy adds protection, never takes it away
    assert spec.text.deidentify is True and spec.text.mask_diagnosis is True
    assert spec.text.max_length == task.data.text.max_length == 128

"""`mmfed export` on real models: the ONNX graph agrees with torch within 1e-4 in probability, int8 stays
within the stated accuracy delta of float on fsdd-mnist, the pruned files hold the stated sparsity, and the
report and model card say what was measured."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from mmfed.checkpoint import save_checkpoint
from mmfed.cli import app
from mmfed.config import TrainConfig
from mmfed.data.scenarios import Scenario, describe_scenario
from mmfed.models import build_model
from mmfed.task import ModelSettings
from mmfed.train.centralized import train_centralized
from mmfed.use.model_file import load_global_model
from mmfed.use.prune import sparsity

INT8_MAX_DROP = 3.0  # points of accuracy int8 may lose against float here (3 of the 100 test records)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fsdd_model(fsdd_sites, tmp_path_factory):
    """An fsdd-mnist image+audio model trained for real but briefly: two speakers' sites, four epochs."""
    two = Scenario(fsdd_sites.name, fsdd_sites.sites[:2], fsdd_sites.labels, fsdd_sites.modalities,
                   fsdd_sites.spec, columns=fsdd_sites.columns)  # fmt: skip
    run = tmp_path_factory.mktemp("fsdd") / "train"
    train_centralized(two, run, train=TrainConfig(epochs=4, augment=False, seed=0))
    return run, two.sites


@pytest.mark.slow
def test_export_of_a_trained_fsdd_mnist_model(fsdd_model, tmp_path):
    run, sites = fsdd_model
    out = tmp_path / "export"
    args = [
        "--test-site",
        sites[0],
        "--test-site",
        sites[1],
        "--variants",
        "onnx,int8,prune50",
        "--repeats",
        3,
    ]
    result = invoke("export", "--model", run, "--out", out, *args)
    assert result.exit_code == 0, result.output
    assert "int8" in result.output and "prune50" in result.output  # the table
    report = json.loads((out / "report.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["float", "onnx", "int8", "prune50"]
    assert report["test"]["examples"] == 100
    assert rows["float"]["accuracy"] > 0.5  # really trained: chance is 0.1
    # float ONNX: the same predictions as torch, within 1e-4 in probability
    assert rows["onnx"]["torch_agreement"]["max_abs_probability_diff"] <= 1e-4
    assert rows["onnx"]["accuracy"] == rows["float"]["accuracy"]
    assert rows["onnx"]["vs_float"]["same_prediction"] == 1.0
    # int8: smaller, within the stated delta
    assert rows["int8"]["bytes"] < rows["onnx"]["bytes"] / 2
    assert abs(rows["int8"]["accuracy_delta"]) <= INT8_MAX_DROP
    for row in rows.values():
        assert set(row["latency_ms"]) == {"1", "32"} and all(v > 0 for v in row["latency_ms"].values())
    # prune50: half the pruned layers' weights are zeros, in the checkpoint and in its ONNX graph
    pruned = load_global_model(out / "model-prune50.safetensors")
    assert sparsity(pruned.model, 10)["pruned_layer_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned.meta["pruning"]["percent"] == 50 and pruned.meta["task"]["task"]["name"] == "fsdd-mnist"
    assert rows["prune50"]["torch_agreement"]["max_abs_probability_diff"] <= 1e-4
    graph = onnx.load(out / "model-prune50.onnx")
    weights = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == 1]
    assert np.mean(np.concatenate([w.ravel() for w in weights]) == 0) > 0.4
    # the model card, beside the files
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["labels"] == [str(d) for d in range(10)]
    assert card["privacy"]["dp"] is False
    assert "no DP" in (out / "model_card.md").read_text()


@pytest.mark.slow
def test_onnx_agrees_with_torch_for_text_and_tabular_inputs_without_test_sites(tmp_path):
    """A covid-cxr model (image, BERT text, tabular; random weights): the export checks agreement on
    generated records with modalities missing at random, and reports no accuracy without test sites."""
    task = describe_scenario("covid-cxr").task(model=ModelSettings(fusion="late"))
    torch.manual_seed(0)
    model = build_model(task.model_config())
    checkpoint = save_checkpoint(model, tmp_path / "model.safetensors", {"task": task.to_dict()})
    out = tmp_path / "export"
    result = invoke("export", "--model", checkpoint, "--out", out, "--variants", "onnx", "--repeats", 2)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    onnx_row = report["variants"][1]
    assert onnx_row["torch_agreement"]["max_abs_probability_diff"] <= 1e-4
    assert onnx_row["accuracy"] is None and report["test"] is None
    inputs = [i.name for i in onnx.load(out / "model.onnx").graph.input]
    assert inputs == ["presence", "image", "text_ids", "text_mask", "tabular"]
    meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
    assert json.loads(meta["mmfed.labels"]) == ["covid-19", "other"]


@pytest.mark.slow
def test_an_onnx_file_that_disagrees_with_torch_fails_the_export_and_keeps_nothing(tmp_path, monkeypatch):
    task = describe_scenario("digits-av").task()
    checkpoint = save_checkpoint(
        build_model(task.model_config()), tmp_path / "m.safetensors", {"task": task.to_dict()}
    )
    monkeypatch.setattr("mmfed.use.variants.TOLERANCE", -1.0)  # any difference at all is too much
    out = tmp_path / "export"
    result = invoke("export", "--model", checkpoint, "--out", out, "--variants", "onnx,int8")
    assert result.exit_code == 2, result.output
    assert "model.onnx" in result.output and "does not reproduce" in result.output
    assert "Traceback" not in result.output and not out.exists()

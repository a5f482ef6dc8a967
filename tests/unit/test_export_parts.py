"""`mmfed export`'s parts that need no ONNX export: variant names, pruning (the stated sparsity, counted
as zeros; a checkpoint of the same task), and the model card (each site's ε and δ from a checkpoint's
site_epsilon, or "no DP")."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmfed.checkpoint import save_checkpoint
from mmfed.data.scenarios import describe_scenario
from mmfed.errors import MMFedError
from mmfed.models import build_model
from mmfed.task import ModelSettings
from mmfed.use.model_card import build_card, markdown, privacy
from mmfed.use.model_file import load_global_model
from mmfed.use.prune import classifier_layers, prunable_layers, prune_model, sparsity
from mmfed.use.variant_names import Pruning, parse_variants

TASK = describe_scenario("digits-av").task()  # image + audio, ten digits: the embedded default's task


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(TASK.model_config()).eval()


# -- variant names -----------------------------------------------------------------------------------


def test_variants_put_float_first_and_add_the_onnx_graph_int8_is_made_from():
    assert parse_variants("int8, prune50,prune50") == ["float", "onnx", "int8", "prune50"]
    assert parse_variants("prune80-structured,float") == ["float", "prune80-structured"]


@pytest.mark.parametrize("text", ["int4", "prune", "prune100", "prune50structured", "onnx,fp16", ", ,"])
def test_an_unknown_variant_is_refused_naming_it(text):
    with pytest.raises(MMFedError, match="--variants"):
        parse_variants(text)


def test_a_pruning_share_out_of_range_is_refused():
    with pytest.raises(MMFedError, match="1 to 99"):
        Pruning.parse("prune0")


# -- pruning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [50, 80])
def test_unstructured_pruning_zeros_the_stated_share_of_the_weights(model, percent):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_model(model, Pruning(percent), len(TASK.labels))
    layers = prunable_layers(pruned, len(TASK.labels))
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    assert zeros / total == pytest.approx(percent / 100, abs=1e-3)
    stats = sparsity(pruned, len(TASK.labels))
    assert stats["pruned_layer_sparsity"] == pytest.approx(percent / 100, abs=1e-3)
    # the classifier stays dense, the original model untouched, the checkpoint the same shape
    for name in classifier_layers(pruned, len(TASK.labels)):
        assert int((pruned.get_submodule(name).weight == 0).sum()) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert not any("_orig" in k or "_mask" in k for k in pruned.state_dict())  # made permanent


def test_structured_pruning_zeros_whole_output_channels_and_their_biases(model):
    pruned = prune_model(model, Pruning(50, structured=True), len(TASK.labels))
    for name, module in prunable_layers(pruned, len(TASK.labels)).items():
        rows = module.weight.detach().flatten(1)
        dead = (rows == 0).all(dim=1)
        assert int(dead.sum()) == round(0.5 * module.weight.shape[0]), name
        assert int((rows[~dead] == 0).sum()) == 0, name  # the kept channels keep every weight
        if module.bias is not None:
            assert torch.all(module.bias[dead] == 0), name


def test_a_pruned_checkpoint_loads_as_a_model_of_the_same_task(model, tmp_path):
    pruned = prune_model(model, Pruning(80), len(TASK.labels))
    path = save_checkpoint(pruned, tmp_path / "pruned.safetensors", {"task": TASK.to_dict()})
    loaded = load_global_model(path)
    assert sparsity(loaded.model, len(TASK.labels))["pruned_layer_sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_the_classifier_layers_are_found_for_every_fusion():
    for fusion in ("early", "late", "attention"):
        task = describe_scenario("digits-av").task(model=ModelSettings(fusion=fusion))
        built = build_model(task.model_config())
        found = classifier_layers(built, len(task.labels))
        assert found and all(built.get_submodule(n).out_features == 10 for n in found), fusion


# -- model card --------------------------------------------------------------------------------------


def _checkpoint(tmp_path, model, **meta):
    path = save_checkpoint(model, tmp_path / "round-0003.safetensors", {"task": TASK.to_dict(), **meta})
    return load_global_model(path)


REPORT = {
    "test": {"split": "test", "sites": ["site_a"], "examples": 10},
    "variants": [
        {
            "variant": "float",
            "file": "x",
            "bytes": 100,
            "size_ratio": 1.0,
            "accuracy": 0.9,
            "accuracy_delta": 0,
        },
        {
            "variant": "int8",
            "file": "y",
            "bytes": 25,
            "size_ratio": 4.0,
            "accuracy": 0.8,
            "accuracy_delta": -10,
        },
    ],
    "settings": {"threads": 1},
    "versions": {},
    "created": "2026-12-01T10:00:00+00:00",
}


def test_the_model_card_gives_each_sites_reported_epsilon_and_delta(tmp_path, model):
    site_epsilon = {
        "site_1": {"epsilon_prv": 2.5, "epsilon_rdp": 2.9, "delta": 1e-5},
        "site_0": {"epsilon_prv": 1.25, "epsilon_rdp": 1.5, "delta": 2e-5},
    }
    gm = _checkpoint(tmp_path, model, round=3, run_id="run-7", private=True, site_epsilon=site_epsilon)
    card = build_card(gm, REPORT)
    assert card["model"]["run_id"] == "run-7" and card["model"]["rounds"] == 3
    assert card["model"]["sites"] == ["site_0", "site_1"]
    assert card["model"]["labels"] == list(TASK.labels) and card["model"]["modalities"] == ["image", "audio"]
    assert card["privacy"]["dp"] and card["privacy"]["sites"] == dict(sorted(site_epsilon.items()))
    text = markdown(card)
    assert "| site_0 | 1.25 | 1.5 | 2e-05 |" in text and "| site_1 | 2.5 | 2.9 | 1e-05 |" in text
    assert "reported to the server" in text and "ledger is the authority" in text and "round 3" in text
    assert "2026-12-01" in text and "int8" in text
    json.dumps(card)  # the .json card is plain JSON


def test_a_model_trained_without_dp_says_so(tmp_path, model):
    gm = _checkpoint(tmp_path, model, round=2, private=False, site_epsilon={})
    assert privacy(gm)["dp"] is False
    assert "no DP" in markdown(build_card(gm, REPORT))
    central = _checkpoint(tmp_path, model, kind="centralized", private=False, epochs=3)
    assert privacy(central)["summary"] == "no DP (trained centrally (mmfed train))"

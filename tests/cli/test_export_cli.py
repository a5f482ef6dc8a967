"""`mmfed export` refuses bad inputs with one line naming the file or setting and what to do, exit code 2,
no traceback, and nothing left written: not a checkpoint, an unknown variant, a test site of another task,
a site without the model's modalities, a folder that is not empty; a failure midway removes its files."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from mmfed.checkpoint import save_checkpoint
from mmfed.cli import app
from mmfed.data.scenarios import describe_scenario
from mmfed.data.scenarios.synthetic import synthetic_site
from mmfed.errors import MMFedError
from mmfed.models import build_model

TASK = describe_scenario("digits-av").task()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, *names: str) -> None:
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    for name in names:
        assert name in text, result.output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A digits-av model (random weights) saved as a round checkpoint with its task."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "round-0001.safetensors"
    return save_checkpoint(build_model(TASK.model_config()), path, {"task": TASK.to_dict(), "round": 1})


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_text("not weights")
    out = tmp_path / "out"
    assert_refused(invoke("export", "--model", bad, "--out", out), str(bad), "not a safetensors checkpoint")
    assert not out.exists()
    assert_refused(invoke("export", "--model", tmp_path, "--out", out), "model.safetensors")


def test_an_unknown_variant_is_refused_before_the_model_is_read(tmp_path, checkpoint):
    out = tmp_path / "out"
    result = invoke("export", "--model", tmp_path / "missing", "--out", out, "--variants", "onnx,fp16")
    assert_refused(result, "--variants", "'fp16'", "int8")
    assert not out.exists()


def test_a_test_site_of_another_task_is_refused_naming_both_label_lists(tmp_path, checkpoint):
    other = synthetic_site(tmp_path / "sites", 0, samples=12, num_classes=3, modalities="image,audio")
    out = tmp_path / "out"
    result = invoke("export", "--model", checkpoint, "--out", out, "--test-site", other)
    assert_refused(result, "labels.txt", "['0', '1', '2']", "digits-av")
    assert not out.exists()


def test_a_test_site_without_the_models_modalities_is_refused(tmp_path, checkpoint):
    text_only = synthetic_site(tmp_path / "sites", 0, samples=12, num_classes=10, modalities="text")
    result = invoke("export", "--model", checkpoint, "--out", tmp_path / "out", "--test-site", text_only)
    assert_refused(result, str(text_only), "image, audio")


def test_a_missing_test_site_a_full_out_folder_and_bad_counts_are_refused(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert_refused(
        invoke("export", "--model", checkpoint, "--out", out, "--test-site", tmp_path / "nowhere"),
        "nowhere",
        "no such site directory",
    )
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert_refused(invoke("export", "--model", checkpoint, "--out", out), "--out", "not empty")
    assert (out / "report.json").read_text() == "{}"
    assert_refused(
        invoke("export", "--model", checkpoint, "--out", tmp_path / "o", "--threads", "0"), "--threads"
    )
    assert_refused(
        invoke("export", "--model", checkpoint, "--out", tmp_path / "o", "--variants", "int8-static"),
        "int8-static",
        "--test-site",
    )


def test_a_failure_midway_removes_what_the_export_wrote(tmp_path, checkpoint, monkeypatch):
    def broken(*args, **kwargs):
        raise MMFedError("the exporter broke")

    monkeypatch.setattr("mmfed.use.onnx_model.export_onnx", broken)
    out = tmp_path / "new" / "out"
    result = invoke("export", "--model", checkpoint, "--out", out, "--variants", "prune50,onnx")
    assert_refused(result, "the exporter broke")
    assert not (tmp_path / "new").exists()  # the pruned checkpoint written before it is gone too

"""Each export variant built and its predictions on the test records taken: the float torch model, its
ONNX graph (checked against torch), the int8 graphs, and the pruned checkpoints with their ONNX graphs.

Names (`--variants`): float, onnx, int8, int8-static, pruneN, pruneN-structured (N: 1-99 percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfed.checkpoint import save_checkpoint
from mmfed.errors import MMFedError
from mmfed.use import measure, onnx_model, quantize
from mmfed.use.model_file import GlobalModel
from mmfed.use.prune import classifier_layers, prune_model, sparsity
from mmfed.use.records import Records
from mmfed.use.variant_names import TOLERANCE, Pruning

FILES = {"onnx": "model.onnx", "int8": "model-int8.onnx", "int8-static": "model-int8-static.onnx"}


@dataclass
class Built:
    """One variant: its file, what runs it, and its predictions on the test records."""

    variant: str
    file: Path
    runtime: str  # "torch" or "onnxruntime"
    runner: Any  # the torch model or the onnxruntime session
    probabilities: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    gm: GlobalModel
    out: Path
    records: Records | None
    device: torch.device
    threads: int
    reference: np.ndarray | None = None  # the float torch model's probabilities on the test records

    def torch_probabilities(self, model: torch.nn.Module) -> np.ndarray | None:
        if self.records is None:
            return None
        return measure.torch_probabilities(model, self.records.batches, self.device)

    def onnx_metadata(self, variant: str) -> dict[str, str]:
        meta = self.gm.meta
        return {
            "mmfed.variant": variant,
            **{f"mmfed.{k}": str(meta[k]) for k in ("run_id", "round", "task_hash") if k in meta},
        }


def float_variant(ctx: Context) -> Built:
    built = Built("float", ctx.gm.path, "torch", ctx.gm.model, ctx.torch_probabilities(ctx.gm.model))
    ctx.reference = built.probabilities
    return built


def _check(built: Built, ctx: Context, model: torch.nn.Module, reference: np.ndarray | None) -> None:
    """ONNX and torch agree within TOLERANCE on the test records and on generated batches of 1 and 5
    records with random modality presence (absent modalities included), or the export fails."""
    diffs = {}
    for size in (1, 5):
        batch = onnx_model.example_batch(ctx.gm.task, size)
        draw = torch.rand(batch["presence"].shape, generator=torch.Generator().manual_seed(size))
        batch["presence"] = draw > 0.4
        expected = measure.torch_probabilities(model, [batch], torch.device("cpu"))
        got = onnx_model.probabilities(built.runner, ctx.gm.task, [batch])
        diffs[f"a generated batch of {size}"] = measure.agreement(got, expected)["max_abs_probability_diff"]
    if reference is not None and built.probabilities is not None:
        diffs["the test records"] = measure.agreement(built.probabilities, reference)[
            "max_abs_probability_diff"
        ]
    worst = max(diffs, key=diffs.__getitem__)
    built.extra["torch_agreement"] = {"max_abs_probability_diff": diffs[worst], "tolerance": TOLERANCE}
    if diffs[worst] > TOLERANCE:
        raise MMFedError(
            f"{built.file.name}: its probabilities differ from the torch model's by {diffs[worst]:.2e} on "
            f"{worst}, more than {TOLERANCE:g}: the ONNX exporter does not reproduce this model, and nothing "
            "was kept; export `--variants float` only, and report it with the model's task.toml"
        )


def _onnx_file(ctx: Context, variant: str, model: torch.nn.Module, path: Path) -> Built:
    onnx_model.export_onnx(model, ctx.gm.task, path, ctx.onnx_metadata(variant))
    sess = onnx_model.session(path, ctx.threads)
    return _measured(ctx, Built(variant, path, "onnxruntime", sess))


def _measured(ctx: Context, built: Built) -> Built:
    """The ONNX file's predictions on the test records, and how they compare with the float model's."""
    if ctx.records is not None:
        built.probabilities = onnx_model.probabilities(built.runner, ctx.gm.task, ctx.records.batches)
    if built.probabilities is not None and ctx.reference is not None:
        built.extra["vs_float"] = measure.agreement(built.probabilities, ctx.reference)
    return built


def onnx_variant(ctx: Context) -> Built:
    built = _onnx_file(ctx, "onnx", ctx.gm.model, ctx.out / FILES["onnx"])
    _check(built, ctx, ctx.gm.model, ctx.reference)
    return built


def int8_variant(ctx: Context, variant: str) -> Built:
    src, dst = ctx.out / FILES["onnx"], ctx.out / FILES[variant]
    if variant == "int8":
        quantize.quantize_dynamic(src, dst)
        how = "dynamic: int8 weights of " + ", ".join(quantize.DYNAMIC_OPS) + "; activations at run time"
    else:
        calibration = [
            onnx_model.feeds(ctx.gm.task, b) for b in (ctx.records.calibration if ctx.records else [])
        ]
        quantize.quantize_static(src, dst, calibration)
        how = f"static QDQ of {', '.join(quantize.STATIC_OPS)}, per-channel weights, " + (
            f"calibrated on {sum(len(b['presence']) for b in calibration)} training records"
        )
    sess = onnx_model.session(dst, ctx.threads)
    return _measured(ctx, Built(variant, dst, "onnxruntime", sess, extra={"quantization": how}))


def pruned_variant(ctx: Context, variant: str) -> Built:
    """The pruned checkpoint (the source's metadata plus what was pruned) and its ONNX file."""
    pruning = Pruning.parse(variant)
    assert pruning is not None
    classes = len(ctx.gm.labels)
    model = prune_model(ctx.gm.model, pruning, classes)
    stats = sparsity(model, classes)
    checkpoint = ctx.out / f"model-{variant}.safetensors"
    record = {
        "variant": variant,
        "method": pruning.method,
        "percent": pruning.percent,
        "kept_dense": sorted(classifier_layers(model, classes)),
        "sparsity": stats,
        "pruned_from": ctx.gm.path.name,
    }
    save_checkpoint(model, checkpoint, {**ctx.gm.meta, "pruning": record})
    built = _onnx_file(ctx, variant, model, ctx.out / f"model-{variant}.onnx")
    _check(built, ctx, model, ctx.torch_probabilities(model))  # the ONNX file against its own torch model
    built.extra.update(
        {"checkpoint": checkpoint.name, "checkpoint_size": measure.file_size(checkpoint), "pruning": record}
    )
    return built


def build(ctx: Context, variant: str) -> Built:
    if variant == "float":
        return float_variant(ctx)
    if variant == "onnx":
        return onnx_variant(ctx)
    if variant.startswith("int8"):
        return int8_variant(ctx, variant)
    return pruned_variant(ctx, variant)

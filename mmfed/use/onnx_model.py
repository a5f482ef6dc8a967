"""The model as an ONNX file, and that file run in onnxruntime.

The graph takes one input per batch tensor the model reads (`presence` [B, M] bool, then each modality's
tensors in the task's order: `image`, `audio`, `text_ids` + `text_mask`, `video`, `tabular`, as
mmfed.data.dataset batches them), with a dynamic batch dimension, and gives `logits` and `probabilities`
[B, classes]. The file carries the task (name, labels, modalities, the whole task as JSON) in its metadata
and nothing of the machine it was made on: the exporter's per-node stack traces (local paths) are removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfed.data.dataset import modality_shapes
from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.models import INPUT_KEYS
from mmfed.task import Task

OUTPUTS = ("logits", "probabilities")
OPSET = 20


def input_names(task: Task) -> list[str]:
    """The graph's inputs, in order: presence, then each modality's batch tensors."""
    return ["presence", *(key for modality in task.modalities for key in INPUT_KEYS[modality])]


class _Graph(nn.Module):
    """The model with positional inputs (what an ONNX graph has) and probabilities as a second output."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, presence: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(presence, **dict(zip(self.keys, inputs, strict=True)))
        return logits, logits.softmax(dim=-1)


def example_batch(task: Task, batch: int = 2) -> dict[str, torch.Tensor]:
    """A batch of the right shapes and types to trace the model with: every modality present, random
    values, and text masks that end in padding (so no tracing shortcut for an all-ones mask can hide)."""
    generator = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {"presence": torch.ones(batch, len(task.modalities), dtype=torch.bool)}
    for key, (shape, dtype) in modality_shapes(task.data, task.modalities).items():
        if key == "text_ids":
            out[key] = torch.randint(1000, 2000, (batch, *shape), generator=generator)
        elif key == "text_mask":
            mask = torch.zeros((batch, *shape), dtype=dtype)
            mask[:, : max(1, shape[0] // 2)] = 1
            out[key] = mask
        else:
            out[key] = torch.randn((batch, *shape), generator=generator).to(dtype)
    return out


def export_onnx(model: nn.Module, task: Task, path: Path, metadata: dict[str, str]) -> Path:
    """Write `model` (on the CPU, evaluation mode) to `path` as ONNX, batch dimension dynamic."""
    keys = input_names(task)
    graph = _Graph(model, keys[1:]).eval()
    example = example_batch(task)
    batch = torch.export.Dim("batch", min=1)
    try:
        # the exporter prints its progress and warns about axis names: neither is for the user
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                tuple(example[k] for k in keys),
                input_names=keys,
                output_names=list(OUTPUTS),
                dynamic_shapes=({0: batch}, tuple({0: batch} for _ in keys[1:])),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own errors are many classes, none of them ours
        raise MMFedError(
            f"the model of task {task.name!r} could not be exported to ONNX ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); export the other variants without onnx/int8"
        ) from None
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]  # stack traces with this machine's paths
        node.doc_string = ""
    proto.doc_string = f"mmfed model for task {task.name}"
    info = {
        "mmfed.task_name": task.name,
        "mmfed.labels": json.dumps(list(task.labels)),
        "mmfed.modalities": json.dumps(list(task.modalities)),
        "mmfed.inputs": json.dumps(keys),
        "mmfed.task": task.to_json(),
        **metadata,
    }
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(Path(path), proto.SerializeToString())
    return Path(path)


def session(path: Path, threads: int):
    """An onnxruntime CPU session with a fixed number of intra-op threads (and one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind classes
        raise MMFedError(
            f"{path}: onnxruntime cannot load it ({type(exc).__name__}); export it again"
        ) from None


def feeds(task: Task, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A collated batch as the graph's inputs."""
    return {key: batch[key].cpu().numpy() for key in input_names(task)}


def probabilities(sess, task: Task, batches: Iterable[dict[str, torch.Tensor]]) -> np.ndarray:
    """[N, classes] probabilities of every record of `batches`, in order."""
    out = [sess.run(["probabilities"], feeds(task, batch))[0] for batch in batches]
    return np.concatenate(out) if out else np.zeros((0, len(task.labels)), dtype=np.float32)

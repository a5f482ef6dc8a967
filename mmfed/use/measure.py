"""Measuring export variants side by side: predictions on the test records, file sizes, and CPU latency
(median of interleaved repeats in one process, a fixed number of threads for torch and onnxruntime)."""

from __future__ import annotations

import contextlib
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfed.models import forward_batch
from mmfed.train.loop import batch_to

LATENCY_BATCHES = (1, 32)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def exact_float() -> Iterator[None]:
    """No TF32 on a GPU while the reference predictions are computed (1e-4 agreement is checked)."""
    if not torch.cuda.is_available():
        yield
        return
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


@torch.no_grad()
def torch_probabilities(model: nn.Module, batches: list[dict], device: torch.device) -> np.ndarray:
    """[N, classes] probabilities of the torch model for every record of `batches`, in order."""
    model = model.to(device).eval()
    out = []
    with exact_float():
        for batch in batches:
            out.append(forward_batch(model, batch_to(batch, device)).softmax(dim=-1).float().cpu().numpy())
    model.cpu()
    return np.concatenate(out)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else None


def agreement(probabilities: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How far a variant's probabilities are from the reference's, and how often it predicts the same."""
    if not len(reference):
        return {"max_abs_probability_diff": 0.0, "same_prediction": 1.0}
    return {
        "max_abs_probability_diff": float(np.abs(probabilities - reference).max()),
        "same_prediction": float((probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean()),
    }


def file_size(path: Path) -> dict[str, int]:
    """Bytes on disk, and zlib-compressed (level 6: what a zip or a compressed transfer would carry)."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "compressed_bytes": len(zlib.compress(data, 6))}


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each run, timed round-robin so that load on the machine hits every one alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def torch_runner(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], object]:
    model = model.cpu().eval()

    def run() -> object:
        with torch.no_grad():
            return forward_batch(model, batch)

    return run


def onnx_runner(sess, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return sess.run(["probabilities"], feeds)

    return run

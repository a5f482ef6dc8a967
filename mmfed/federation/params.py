"""Model weights <-> the list of numpy arrays Flower carries, and the checks every update must pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Every state_dict entry, in state_dict order, as float32/int numpy arrays (copies)."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(state)} tensors")
    new = {}
    for (key, ref), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(ref.shape):
            raise ValueError(
                f"{key}: shape {tuple(array.shape)} does not match the model's {tuple(ref.shape)}"
            )
        new[key] = torch.as_tensor(np.asarray(array), dtype=ref.dtype)
    model.load_state_dict(new, strict=True)


def delta(local: list[np.ndarray], global_: list[np.ndarray]) -> list[np.ndarray]:
    return [(a.astype(np.float32) - b.astype(np.float32)) for a, b in zip(local, global_, strict=True)]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    norm: float = float("nan")


def check_update(update: list[np.ndarray], reference: list[np.ndarray], max_norm: float) -> Verdict:
    """Shapes, dtype, finite values and an L2-norm bound; the reason names the first failed check."""
    if len(update) != len(reference):
        return Verdict(False, f"update has {len(update)} arrays, the model has {len(reference)}")
    total = 0.0
    for i, (u, r) in enumerate(zip(update, reference, strict=True)):
        if u.shape != r.shape:
            return Verdict(False, f"array {i}: shape {u.shape} instead of {r.shape}")
        if not np.issubdtype(u.dtype, np.floating):
            return Verdict(False, f"array {i}: dtype {u.dtype} is not floating point")
        if not np.all(np.isfinite(u)):
            return Verdict(False, f"array {i}: holds NaN or infinite values")
        total += float(np.square(u, dtype=np.float64).sum())
    norm = total**0.5
    if norm > max_norm:
        return Verdict(
            False, f"update L2 norm {norm:.3g} exceeds the bound {max_norm:g} (max-update-norm)", norm
        )
    return Verdict(True, "", norm)


def weighted_mean(updates: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """Example-weighted mean of updates (accumulated in float64, returned as float32)."""
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("no examples behind the updates")
    out = [np.zeros(a.shape, dtype=np.float64) for a in updates[0][0]]
    for arrays, n in updates:
        for acc, a in zip(out, arrays, strict=True):
            acc += a.astype(np.float64) * (n / total)
    return [a.astype(np.float32) for a in out]

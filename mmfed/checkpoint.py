"""Model checkpoints as safetensors + a JSON sidecar: nothing that crosses a trust boundary is pickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save
from safetensors.torch import load_file
from torch import nn

from mmfed.errors import MMFedError
from mmfed.files import write_atomic


def save_arrays(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write `path` (.safetensors, the metadata embedded) and `path.with_suffix('.json')` atomically:
    the one checkpoint writer (the centralised baseline's models and a federation's rounds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {"mmfed": json.dumps(metadata, sort_keys=True, default=str)}
    # serialised first: a failed write (a full disk) is a plain OSError, and leaves the old file
    write_atomic(path, save(tensors, metadata=meta))
    write_atomic(path.with_suffix(".json"), json.dumps(metadata, indent=2, sort_keys=True, default=str))
    return path


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    return save_arrays(path, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}, metadata)


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights into `model` (shapes must match) and return the metadata."""
    path = Path(path)
    if not path.exists():
        raise MMFedError(f"{path}: checkpoint not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors' own error type: not a safetensors file, or a truncated one
        raise MMFedError(
            f"{path}: not a readable safetensors model ({type(exc).__name__}); give a model.safetensors "
            "written by mmfed (a run's checkpoints/ or model.safetensors)"
        ) from None
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    reshaped = sorted(k for k in set(mine) & set(state) if tuple(mine[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        parts = [
            f"{len(names)} {what} (e.g. {names[0]})"
            for names, what in (
                (missing, "missing"),
                (unexpected, "unexpected"),
                (reshaped, "of another shape"),
            )
            if names
        ]
        raise MMFedError(
            f"{path}: these weights are of another model ({', '.join(parts)}); give weights trained with "
            "the same task and model settings"
        )
    model.load_state_dict(state, strict=True)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("mmfed", "{}")
    return json.loads(meta)

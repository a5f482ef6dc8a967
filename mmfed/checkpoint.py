"""Model checkpoints as safetensors + a JSON sidecar: nothing that crosses a trust boundary is pickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from mmfed.errors import MMFedError


def save_checkpoint(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    """Write `path` (.safetensors) and `path.with_suffix('.json')` atomically (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"mmfed": json.dumps(metadata, sort_keys=True, default=str)})
    os.replace(tmp, path)
    sidecar = path.with_suffix(".json")
    tmp_json = sidecar.with_name(sidecar.name + ".tmp")
    tmp_json.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    os.replace(tmp_json, sidecar)
    return path


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights into `model` (shapes must match) and return the metadata."""
    path = Path(path)
    if not path.exists():
        raise MMFedError(f"{path}: checkpoint not found")
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MMFedError(f"{path}: checkpoint does not fit this model configuration ({exc})") from exc
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = (fh.metadata() or {}).get("mmfed", "{}")
    return json.loads(meta)

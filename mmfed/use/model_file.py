"""A trained model as a file a site can use on its own: a federation's round checkpoint, its run directory
(the last complete round), or `mmfed train`'s model.safetensors — each with the task it was trained for
(labels, modalities, tensor settings, model) in its metadata.

Older checkpoints without the task in them are read with the task of their run directory's config.json,
or with the one given (`--task`). Weights of another model than the task builds are refused, naming the
first that differ; nothing here is pickled.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mmfed.checkpoint import load_checkpoint
from mmfed.config import DataSpec
from mmfed.errors import MMFedError
from mmfed.models import build_model
from mmfed.privacy.policy import POLICY_FILE, load_policy
from mmfed.task import Task, load_task, task_from_dict


@dataclass
class GlobalModel:
    """The model (evaluation mode, on the CPU), the task it was trained for, its file and metadata."""

    model: nn.Module
    task: Task
    path: Path
    meta: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.task.modalities

    @property
    def preprocessing(self) -> dict[str, bool]:
        """The text preprocessing the model was trained with (de-identification on unless it says it was
        off: a model without the record gets the safer default)."""
        pre = self.meta.get("preprocessing")
        pre = pre if isinstance(pre, dict) else {}
        return {
            "deidentify": bool(pre.get("deidentify", True)),
            "mask_diagnosis": bool(pre.get("mask_diagnosis", False)),
        }

    def data_spec(self, site_dir: Path | None = None) -> DataSpec:
        """The task's tensor settings with the model's text preprocessing, plus what the site's own policy
        (its site.toml) requires, as a site applies it in training: a policy can add protection, never
        take it away."""
        pre = self.preprocessing
        deidentify, mask = pre["deidentify"], pre["mask_diagnosis"]
        policy_file = Path(site_dir) / POLICY_FILE if site_dir is not None else None
        if policy_file is not None and policy_file.is_file():
            policy = load_policy(policy_file)
            deidentify, mask = deidentify or policy.deidentify, mask or policy.mask_diagnosis
        text = dataclasses.replace(self.task.data.text, deidentify=deidentify, mask_diagnosis=mask)
        return dataclasses.replace(self.task.data, text=text)

    def describe(self) -> dict[str, Any]:
        """What a report says of the model: its file, task, run and round."""
        return {
            "path": str(self.path),
            "task": self.task.name,
            "task_hash": self.task.approval(),
            "labels": list(self.labels),
            "modalities": list(self.modalities),
            **{
                k: self.meta[k]
                for k in ("run_id", "round", "private", "secure_aggregation")
                if k in self.meta
            },
            "preprocessing": self.preprocessing,
        }


def checkpoint_file(path: Path) -> Path:
    """`path` itself, or the checkpoint a run directory names: its last complete round (federated) or its
    model.safetensors (centralised)."""
    path = Path(path)
    if not path.exists():
        raise MMFedError(
            f"{path}: no such checkpoint or run directory; give a .safetensors file or a run directory"
        )
    if path.is_file():
        return path
    latest = path / "checkpoints" / "latest.json"
    if latest.exists():
        try:
            return path / "checkpoints" / str(json.loads(latest.read_text())["file"])
        except (ValueError, KeyError, TypeError, OSError):
            raise MMFedError(f"{latest}: unreadable; give the round's .safetensors file itself") from None
    if (path / "model.safetensors").exists():
        return path / "model.safetensors"
    raise MMFedError(
        f"{path}: a folder without a completed round (checkpoints/latest.json) or a model.safetensors; "
        "give a run directory of a finished run or a .safetensors file"
    )


def read_metadata(path: Path) -> dict[str, Any]:
    """The checkpoint's own metadata (mmfed's JSON in the safetensors header), without loading weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            raw = (fh.metadata() or {}).get("mmfed", "{}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MMFedError(
            f"{path}: not a safetensors checkpoint ({type(exc).__name__}); give a model mmfed wrote"
        ) from None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise MMFedError(f"{path}: its mmfed metadata is not valid JSON; the file is damaged") from None
    return meta if isinstance(meta, dict) else {}


def _task_of(path: Path, meta: dict[str, Any]) -> Task | None:
    if isinstance(meta.get("task"), dict):
        return task_from_dict(meta["task"], f"{path}: the task in its metadata")
    config = path.parent.parent / "config.json"  # a round checkpoint of a run directory
    if config.exists():
        try:
            saved = json.loads(config.read_text())
        except (ValueError, OSError):
            return None
        if isinstance(saved, dict) and isinstance(saved.get("task"), dict):
            return task_from_dict(saved["task"], f"{config}: task")
    return None


def load_global_model(path: str | Path, task_file: str | Path | None = None) -> GlobalModel:
    """The model in `path` (a checkpoint or a run directory), built for its own task or `task_file`'s."""
    file = checkpoint_file(Path(path))
    meta = read_metadata(file)
    task = load_task(task_file) if task_file else _task_of(file, meta)
    if task is None:
        raise MMFedError(
            f"{file}: the checkpoint does not say which task it was trained for; give the task file with "
            "--task task.toml"
        )
    model = build_model(task.model_config())
    from safetensors import SafetensorError

    try:
        load_checkpoint(model, file)  # refuses weights of another model, naming them
    except MMFedError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise MMFedError(
            f"{file}: its weights cannot be read ({type(exc).__name__}); the file is damaged or incomplete"
        ) from None
    model.eval()
    return GlobalModel(model=model, task=task, path=file, meta=meta)

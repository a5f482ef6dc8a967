"""`mmfed predict`: class probabilities for a site's records (all rows of its manifest, or one split) or
for one record given file by file; written as CSV (one row per record, a `p_<label>` column per class) or
JSON. A record's missing modalities are masked, as in training.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmfed.data.dataset import Collate, MultimodalDataset
from mmfed.errors import MMFedError
from mmfed.files import write_atomic
from mmfed.use.infer import Scores, score
from mmfed.use.inputs import Inputs, input_sample
from mmfed.use.model_file import GlobalModel
from mmfed.use.site_data import SiteData, check_split, processors, read_site

FORMATS = ("csv", "json")


def _rows(gm: GlobalModel, scores: Scores, site: SiteData | None, truth: bool) -> list[dict[str, Any]]:
    out = []
    samples = site.samples if site is not None else [None] * len(scores)
    for i, sample in enumerate(samples):
        probs = scores.probs[i]
        best = int(probs.argmax())
        row: dict[str, Any] = {"id": sample.id if sample is not None else "input"}
        if site is not None:
            row.update(site=site.name, split=sample.split)
        if truth:
            row["label"] = gm.labels[sample.label]
        present = [m for j, m in enumerate(gm.modalities) if scores.presence[i, j]]
        row.update(
            predicted=gm.labels[best],
            confidence=float(probs[best]),
            modalities="+".join(present),
            probabilities={name: float(p) for name, p in zip(gm.labels, probs, strict=True)},
        )
        out.append(row)
    return out


def predict_site(
    gm: GlobalModel,
    site_dir: Path,
    split: str | None = None,
    device: torch.device | None = None,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One row per record of the site (of `split`) that holds any of the model's modalities, in manifest
    order (`label` is the manifest's), and how many records hold none of them (left out)."""
    check_split(split)
    site = read_site(gm, Path(site_dir), split)
    if not len(site.dataset):
        which = f"{split} records" if split else "records"
        raise MMFedError(
            f"{site_dir}: no {which} hold any of the model's modalities ({', '.join(gm.modalities)}); "
            "nothing to predict"
        )
    device = device or torch.device("cpu")
    scores = score(gm.model, site.dataset, site.collate, device, gm.modalities, (), batch_size, on_batch)
    return _rows(gm, scores, site, truth=True), site.left_out


def predict_inputs(
    gm: GlobalModel, inputs: Inputs, device: torch.device | None = None
) -> list[dict[str, Any]]:
    """One row: the record given option by option (see mmfed.use.inputs)."""
    sample = input_sample(gm, inputs)
    data = MultimodalDataset([sample], processors(gm))
    collate = Collate(gm.task.data, gm.modalities)
    scores = score(gm.model, data, collate, device or torch.device("cpu"), gm.modalities)
    return _rows(gm, scores, None, truth=False)


def as_csv(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """One line per record: its columns, then p_<label> per class (the model's class order)."""
    keys = [k for k in ("id", "site", "split", "label", "predicted", "confidence", "modalities")
            if rows and k in rows[0]]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*keys, *(f"p_{name}" for name in labels)])
    for row in rows:
        probs = row["probabilities"]
        writer.writerow([*(_cell(row[k]) for k in keys), *(f"{probs[name]:.6g}" for name in labels)])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def as_json(rows: Sequence[dict[str, Any]], gm: GlobalModel) -> str:
    return json.dumps({"model": gm.describe(), "predictions": list(rows)}, indent=2)


def render(rows: Sequence[dict[str, Any]], gm: GlobalModel, fmt: str) -> str:
    return as_json(rows, gm) if fmt == "json" else as_csv(rows, gm.labels)


def write_predictions(rows: Sequence[dict[str, Any]], gm: GlobalModel, path: Path, fmt: str) -> Path:
    write_atomic(Path(path), render(rows, gm, fmt), durable=False)
    return Path(path)

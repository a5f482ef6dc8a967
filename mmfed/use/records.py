"""The records an export is measured on: the --test-site directories' test split, read once through the
model's task (mmfed.use.site_data, as a site reads them) and kept as batches of tensors, so every variant
sees exactly the same inputs; and, for static quantisation, a sample of their training records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfed.errors import MMFedError
from mmfed.train.loop import make_loader
from mmfed.use.model_file import GlobalModel
from mmfed.use.site_data import read_site, site_names

BATCH = 64
CALIBRATION_RECORDS = 256  # training records whose activation ranges calibrate int8-static


@dataclass
class Records:
    sites: list[str]
    batches: list[dict[str, torch.Tensor]]
    labels: np.ndarray
    calibration: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return len(self.labels)

    def first(self, count: int) -> dict[str, torch.Tensor]:
        """`count` records for timing: the first test records, repeated when there are fewer."""
        pooled = {k: torch.cat([b[k] for b in self.batches]) for k in self.batches[0]}
        index = torch.arange(count) % len(pooled["label"])
        return {k: v[index] for k, v in pooled.items()}


def _read(gm: GlobalModel, sites: list[Path], names: list[str], split: str) -> list[dict[str, torch.Tensor]]:
    batches: list[dict[str, torch.Tensor]] = []
    for site, name in zip(sites, names, strict=True):
        data = read_site(gm, site, split, name)
        if split == "test" and not len(data.dataset):
            raise MMFedError(
                f"--test-site {site}: no test records holding the model's modalities "
                f"({', '.join(gm.modalities)}); give a site directory of task {gm.task.name!r} with a "
                "test split"
            )
        if len(data.dataset):
            batches += list(make_loader(data.dataset, data.collate, BATCH))
    return batches


def _calibration(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Up to CALIBRATION_RECORDS training records, drawn at random (fixed seed), in batches."""
    pooled = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    order = torch.randperm(len(pooled["label"]), generator=torch.Generator().manual_seed(0))
    pick = order[:CALIBRATION_RECORDS]
    return [{k: v[pick[i : i + BATCH]] for k, v in pooled.items()} for i in range(0, len(pick), BATCH)]


def read_records(gm: GlobalModel, sites: list[Path], calibrate: bool = False) -> Records | None:
    """The sites' test records (None without sites) and, with `calibrate`, training records too."""
    if not sites:
        return None
    names = site_names(sites)
    batches = _read(gm, sites, names, "test")
    records = Records(names, batches, torch.cat([b["label"] for b in batches]).numpy())
    if calibrate:
        train = _read(gm, sites, names, "train")
        if not train:
            raise MMFedError(
                "int8-static calibrates on the --test-site directories' train split, and none has one; "
                "give a site with training records, or leave int8-static out of --variants"
            )
        records.calibration = _calibration(train)
    return records

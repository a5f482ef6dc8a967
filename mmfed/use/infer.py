"""The model run over a dataset: class probabilities per record, and the same records with one modality
masked at a time (the ablation), all from one pass over the data.

Masking a modality is what the model does with a record that lacks it (and what modality dropout taught
it in training): its presence flag is False and its tensors are zeros, so the fusion head leaves it out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mmfed.models import forward_batch
from mmfed.models.model import INPUT_KEYS
from mmfed.train.loop import batch_to, make_loader


@dataclass
class Scores:
    """probs [N, C] (float64, rows sum to 1), labels [N], presence [N, M] (the model's modalities, in its
    order); `masked[m]`: probs with modality m masked in every record."""

    probs: np.ndarray
    labels: np.ndarray
    presence: np.ndarray
    modalities: tuple[str, ...]
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Scores:
        """The scores of some records (e.g. one site's, of pooled ones)."""
        return Scores(
            self.probs[index],
            self.labels[index],
            self.presence[index],
            self.modalities,
            {m: p[index] for m, p in self.masked.items()},
        )

    @classmethod
    def concat(cls, parts: Sequence[Scores], modalities: tuple[str, ...], classes: int) -> Scores:
        if not parts:
            empty = np.zeros((0, classes))
            return cls(empty, np.zeros(0, dtype=np.int64), np.zeros((0, len(modalities)), bool), modalities)
        return cls(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.presence for p in parts]),
            modalities,
            {m: np.concatenate([p.masked[m] for p in parts]) for m in parts[0].masked},
        )


def masked_batch(batch: dict[str, torch.Tensor], modality: str, modalities: Sequence[str]) -> dict:
    """The batch as if no record held `modality`: presence False there, its tensors zero."""
    out = dict(batch)
    presence = batch["presence"].clone()
    presence[:, list(modalities).index(modality)] = False
    out["presence"] = presence
    for key in INPUT_KEYS[modality]:
        if key in out:
            out[key] = torch.zeros_like(out[key])
    return out


def _probs(model: nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    logits = forward_batch(model, batch).double()
    return torch.softmax(logits, dim=1).cpu().numpy()


@torch.no_grad()
def score(
    model: nn.Module,
    dataset,
    collate: Callable,
    device: torch.device,
    modalities: Sequence[str],
    ablate: Sequence[str] = (),
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> Scores:
    """Probabilities for every record of `dataset` (in its order), and with each of `ablate` masked."""
    model.eval()
    model.to(device)
    probs, labels, presence = [], [], []
    masked: dict[str, list[np.ndarray]] = {m: [] for m in ablate}
    for batch in make_loader(dataset, collate, batch_size):
        batch = batch_to(batch, device)
        probs.append(_probs(model, batch))
        labels.append(batch["label"].cpu().numpy())
        presence.append(batch["presence"].cpu().numpy().astype(bool))
        for modality in ablate:
            masked[modality].append(_probs(model, masked_batch(batch, modality, modalities)))
        if on_batch:
            on_batch(int(batch["label"].numel()))
    if not probs:
        return Scores.concat([], tuple(modalities), 0)
    return Scores(
        np.concatenate(probs),
        np.concatenate(labels).astype(np.int64),
        np.concatenate(presence),
        tuple(modalities),
        {m: np.concatenate(v) for m, v in masked.items()},
    )

"""Samples -> tensors: a Dataset returning the present modalities plus a presence mask, and its collate.

A batch is a dict: `presence` [B, M] (bool, M = the run's modalities in canonical order), `label` [B],
and per modality present in the run `image` [B,C,H,W], `audio` [B,1,F,T], `text_ids`/`text_mask` [B,L],
`video` [B,C,T,H,W], `tabular` [B,F]. A sample that lacks a modality gets zeros there and False in `presence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmfed.config import DataSpec, parse_modalities
from mmfed.data.manifest import Sample
from mmfed.errors import DataError


class Processors:
    """The per-modality processors a run needs, built once and shared by its datasets."""

    def __init__(self, spec: DataSpec, modalities: Sequence[str], cache_dir: Path | None = None):
        spec.validate()
        self.spec = spec
        self.modalities = parse_modalities(modalities)
        self.image = self.audio = self.text = self.video = self.tabular = None
        if "image" in self.modalities:
            from mmfed.data.image import ImageProcessor

            self.image = ImageProcessor(spec.image)
        if "audio" in self.modalities:
            from mmfed.data.audio import AudioProcessor

            self.audio = AudioProcessor(spec.audio, cache_dir)
        if "text" in self.modalities:
            from mmfed.data.text import TextProcessor

            self.text = TextProcessor(spec.text)
        if "video" in self.modalities:
            from mmfed.data.video import VideoProcessor

            self.video = VideoProcessor(spec.video, cache_dir)
        if "tabular" in self.modalities:
            from mmfed.data.tabular import TabularProcessor

            self.tabular = TabularProcessor(spec.tabular)


class MultimodalDataset(Dataset):
    """Samples restricted to the run's modalities; samples with none of them are left out (counted)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        processors: Processors,
        augment: bool = False,
        modality_dropout: float = 0.0,
    ):
        self.processors = processors
        self.modalities = processors.modalities
        self.samples = [s for s in samples if any(getattr(s, m) is not None for m in self.modalities)]
        self.dropped_no_modality = len(samples) - len(self.samples)
        if processors.tabular is not None:  # value errors surface now, not in the middle of training
            bad = [
                f"sample {s.id!r} (row {s.row}): {problem}"
                for s in self.samples
                if s.tabular and (problem := processors.tabular.problem(s.tabular))
            ]
            if bad:
                more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
                raise DataError(f"tabular cells that cannot be encoded: {'; '.join(bad[:5])}{more}")
        self.augment = augment
        # training only: hide one of a sample's modalities with this probability, so the fused model
        # cannot lean on one modality alone (and copes when a site lacks one)
        self.modality_dropout = modality_dropout

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        p = self.processors
        # augmentation randomness comes from torch's RNG, so torch.manual_seed makes a run repeatable
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item())) if self.augment else None
        present = [m for m in self.modalities if getattr(s, m) is not None]
        if self.modality_dropout and len(present) > 1 and float(torch.rand(())) < self.modality_dropout:
            present.pop(int(torch.randint(len(present), ())))
        item: dict[str, torch.Tensor] = {
            "label": torch.tensor(s.label, dtype=torch.long),
            "presence": torch.tensor([m in present for m in self.modalities]),
        }
        if p.image is not None and "image" in present:
            item["image"] = p.image(s.image, augment=self.augment)
        if p.audio is not None and "audio" in present:
            item["audio"] = torch.from_numpy(p.audio(s.audio, rng=rng))
        if p.text is not None and "text" in present:
            item["text_ids"], item["text_mask"] = p.text(s.text)
        if p.video is not None and "video" in present:
            item["video"] = p.video(s.video)
        if p.tabular is not None and "tabular" in present:
            item["tabular"] = p.tabular(s.tabular)
        return item


def modality_shapes(
    spec: DataSpec, modalities: Sequence[str]
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Per-sample shape and dtype of every tensor a batch holds for these modalities."""
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if "image" in modalities:
        shapes["image"] = ((spec.image.channels, spec.image.size, spec.image.size), torch.float32)
    if "audio" in modalities:
        shapes["audio"] = ((1, spec.audio.n_features, spec.audio.frames), torch.float32)
    if "text" in modalities:
        shapes["text_ids"] = ((spec.text.max_length,), torch.long)
        shapes["text_mask"] = ((spec.text.max_length,), torch.long)
    if "video" in modalities:
        v = spec.video
        shapes["video"] = ((v.channels, v.frames, v.size, v.size), torch.float32)
    if "tabular" in modalities:
        shapes["tabular"] = ((spec.tabular.width,), torch.float32)
    return shapes


class Collate:
    """Batches samples with different modality sets; an empty list gives a well-formed empty batch."""

    def __init__(self, spec: DataSpec, modalities: Sequence[str]):
        self.modalities = parse_modalities(modalities)
        self.shapes = modality_shapes(spec, self.modalities)

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        n = len(items)
        batch = {
            "label": torch.stack([it["label"] for it in items]) if n else torch.zeros(0, dtype=torch.long),
            "presence": (
                torch.stack([it["presence"] for it in items])
                if n
                else torch.zeros(0, len(self.modalities), dtype=torch.bool)
            ),
        }
        for key, (shape, dtype) in self.shapes.items():
            out = torch.zeros((n, *shape), dtype=dtype)
            for i, it in enumerate(items):
                if key in it:
                    out[i] = it[key]
            batch[key] = out
        return batch

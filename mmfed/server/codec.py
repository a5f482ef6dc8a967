"""The codec step of aggregation: a site's encoded update -> its delta, and the mean of encoded updates
-> the per-encoder averaged delta (mmfed.federation.encoder_groups has the encoding and the maths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmfed.federation.encoder_groups import decode_mean, group_names, split_site_update


class EncoderCodec:
    """`groups`: which encoder (or the shared part) each array belongs to. With `per_encoder` False the
    mean is plain FedAvg's (for comparison): a site without a modality counts with a zero delta, exact
    when every site has a modality for all or none of its samples."""

    def __init__(self, groups: Sequence[int], modalities: Sequence[str] = (), per_encoder: bool = True):
        self.groups = list(groups)
        self.names = group_names(modalities)
        self.per_encoder = per_encoder

    @property
    def size(self) -> int:
        """Arrays in one encoded update: the model's and the coverage vector."""
        return len(self.groups) + 1

    def split(self, encoded: list[np.ndarray]) -> tuple[list[np.ndarray] | None, str]:
        """One site's encoded update -> (its delta, "") or (None, why it is malformed)."""
        delta, _, problem = split_site_update(encoded, self.groups)
        return delta, problem

    def decode(self, mean: list[np.ndarray], total_examples: int) -> tuple[list[np.ndarray], dict[str, int]]:
        """(delta, training examples behind each encoder's average) from the mean of encoded updates."""
        delta, counts = decode_mean(mean, self.groups, total_examples)
        if not self.per_encoder:
            shares = [c / total_examples if total_examples else 0.0 for c in counts]
            delta = [d * np.float32(shares[g]) for d, g in zip(delta, self.groups, strict=True)]
        return delta, dict(zip(self.names, counts, strict=False))

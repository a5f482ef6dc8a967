"""Per-encoder FedAvg: each encoder's parameters are averaged only over the sites that trained it.

A site without audio cannot train the audio encoder, so its (zero) delta must not dilute the average of
the sites that did. Every array belongs to a group: 0 = shared (fusion, classifier), 1 + i = the encoder
of the run's i-th modality. A site with n examples, n_g of which hold group g's modality, sends

    [ (n_g / n) * delta_g for every array ]  +  [ coverage = (n_g / n for every group) ]

and the server takes the usual example-weighted mean of these vectors: that gives sum(n_g delta_g) / N
and sum(n_g) / N per group, whose ratio is the per-group weighted mean. Because only sums are needed, the
same encoding works under SecAgg+ (the server learns the per-modality example totals, never a site's).
A group no site trained (total 0) is left exactly unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHARED = "shared"


def parameter_groups(keys: Sequence[str], modalities: Sequence[str]) -> list[int]:
    """Group index of every state_dict key: 1 + i for `encoders.<modalities[i]>.*`, else 0 (shared)."""
    index = {f"encoders.{m}.": 1 + i for i, m in enumerate(modalities)}
    return [next((g for prefix, g in index.items() if key.startswith(prefix)), 0) for key in keys]


def group_names(modalities: Sequence[str]) -> list[str]:
    return [SHARED, *modalities]


def encode_update(
    update: list[np.ndarray], groups: Sequence[int], group_examples: Sequence[int], examples: int
) -> list[np.ndarray]:
    """A site's delta scaled per group by n_g / n, plus the coverage vector (see the module docstring)."""
    if examples <= 0:
        raise ValueError("a site with no training examples has no update to send")
    coverage = np.asarray(group_examples, dtype=np.float64) / examples
    out = [(u * np.float32(coverage[g])).astype(np.float32) for u, g in zip(update, groups, strict=True)]
    return [*out, coverage.astype(np.float32)]


def split_site_update(
    encoded: list[np.ndarray], groups: Sequence[int]
) -> tuple[list[np.ndarray] | None, np.ndarray | None, str]:
    """One site's encoded update -> (delta, coverage, "") or (None, None, reason it is malformed)."""
    num_groups = max(groups, default=0) + 1
    if len(encoded) != len(groups) + 1:
        return None, None, f"update has {len(encoded)} arrays, expected {len(groups)} + 1 coverage vector"
    dtypes = [np.asarray(a).dtype for a in encoded]  # before any arithmetic: text or objects would raise
    bad = next((i for i, d in enumerate(dtypes) if not np.issubdtype(d, np.floating)), None)
    if bad is not None:
        return None, None, f"array {bad}: dtype {dtypes[bad]} is not floating point"
    coverage = np.asarray(encoded[-1], dtype=np.float64)
    if coverage.shape != (num_groups,):
        return None, None, f"coverage vector has shape {coverage.shape}, expected ({num_groups},)"
    if not np.all(np.isfinite(coverage)) or np.any(coverage < 0) or np.any(coverage > 1):
        return None, None, "coverage vector holds values outside [0, 1]"
    delta = [
        u / np.float32(coverage[g]) if coverage[g] > 0 else u
        for u, g in zip(encoded[:-1], groups, strict=True)
    ]
    return delta, coverage, ""


def decode_mean(
    mean: list[np.ndarray], groups: Sequence[int], total_examples: int
) -> tuple[list[np.ndarray], list[int]]:
    """The example-weighted mean of encoded updates -> (per-group weighted mean delta, examples per group).

    The per-group totals are rounded to whole examples, which also removes SecAgg+'s quantisation
    noise from the denominators; a group with no examples gets an all-zero delta."""
    coverage = np.asarray(mean[-1], dtype=np.float64)
    counts = [int(round(float(c) * total_examples)) for c in coverage]
    delta = []
    for array, g in zip(mean[:-1], groups, strict=True):
        if counts[g] == 0:
            delta.append(np.zeros_like(array, dtype=np.float32))
        else:
            delta.append((array.astype(np.float64) * (total_examples / counts[g])).astype(np.float32))
    return delta, counts

"""Split a pool of samples into sites: natural (by a manifest column), IID, Dirichlet label skew, and
whole sites missing a modality."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from mmfed.data.manifest import Sample
from mmfed.errors import ConfigError


def natural(samples: Sequence[Sample], column: str) -> list[list[Sample]]:
    """One site per distinct value of `column` (an extra manifest column such as 'speaker' or 'site')."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if column not in s.extra:
            raise ConfigError("partition", f"natural partition needs a '{column}' column in the manifest")
        groups[s.extra[column]].append(s)
    return [groups[k] for k in sorted(groups)]


def iid(samples: Sequence[Sample], num_sites: int, seed: int = 0) -> list[list[Sample]]:
    _check_sites(num_sites, len(samples))
    order = np.random.default_rng(seed).permutation(len(samples))
    return [[samples[i] for i in part] for part in np.array_split(order, num_sites)]


def dirichlet(
    samples: Sequence[Sample],
    num_sites: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 2,
    max_tries: int = 100,
) -> list[list[Sample]]:
    """Label skew: each class is shared among sites in proportions drawn from Dir(alpha).

    Small alpha (0.1) gives sites that see few classes; large alpha approaches IID. Redraws until every
    site has at least `min_size` samples of each split present in the pool.
    """
    if alpha <= 0:
        raise ConfigError("partition", f"dirichlet alpha must be > 0, got {alpha}")
    _check_sites(num_sites, len(samples))
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_label[s.label].append(i)
    splits = sorted({s.split for s in samples})
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for label in sorted(by_label):
            idx = rng.permutation(by_label[label])
            shares = rng.dirichlet([alpha] * num_sites)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if all(sum(samples[i].split == sp for i in p) >= min_size for p in parts for sp in splits):
            return [[samples[i] for i in sorted(p)] for p in parts]
    raise ConfigError(
        "partition",
        f"dirichlet:{alpha} could not give each of {num_sites} sites {min_size}+ samples per split in "
        f"{max_tries} draws; use fewer sites or a larger alpha",
    )


def missing_modality_plan(
    num_sites: int, rate: float, modalities: Sequence[str], seed: int = 0
) -> dict[int, str]:
    """{site index: modality it lacks} for round(rate * num_sites) sites chosen at random (seeded).

    Depends only on the site count, so every process of a federation derives the same plan without
    reading the other sites' data."""
    if not 0 <= rate <= 1:
        raise ConfigError("missing-modality-rate", f"must be in [0, 1], got {rate}")
    if len(modalities) < 2 and rate > 0:
        raise ConfigError("missing-modality-rate", "needs at least two modalities to drop one")
    rng = np.random.default_rng([seed, 7919])  # its own stream: the plan does not shift other draws
    chosen = rng.choice(num_sites, size=int(round(rate * num_sites)), replace=False)
    return {int(site): str(rng.choice(list(modalities))) for site in sorted(chosen.tolist())}


def without_modality(samples: Sequence[Sample], modality: str, modalities: Sequence[str]) -> list[Sample]:
    """The samples with `modality` removed; samples left with none of `modalities` are dropped."""
    out = [dataclasses.replace(s, **{modality: None}) for s in samples]
    return [s for s in out if any(getattr(s, m) is not None for m in modalities)]


def drop_modality(
    parts: list[list[Sample]], rate: float, modalities: Sequence[str], seed: int = 0
) -> tuple[list[list[Sample]], dict[int, str]]:
    """Remove one modality from every sample of round(rate * sites) sites (a hospital without audio).

    Returns the new parts and {site index: modality removed}."""
    plan = missing_modality_plan(len(parts), rate, modalities, seed)
    out = [list(p) for p in parts]
    for site, modality in plan.items():
        out[site] = without_modality(parts[site], modality, modalities)
    return out, plan


def partition(samples: Sequence[Sample], how: str, num_sites: int, seed: int = 0) -> list[list[Sample]]:
    """`how` is 'iid', 'dirichlet:ALPHA' or 'natural:COLUMN'."""
    kind, _, arg = how.partition(":")
    if kind == "iid":
        return iid(samples, num_sites, seed)
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise ConfigError("partition", f"{how!r}: write dirichlet:ALPHA, e.g. dirichlet:0.1") from None
        return dirichlet(samples, num_sites, alpha, seed)
    if kind == "natural":
        if not arg:
            raise ConfigError("partition", "write natural:COLUMN, e.g. natural:speaker")
        return natural(samples, arg)
    raise ConfigError("partition", f"{how!r} is not one of natural:COLUMN, iid, dirichlet:ALPHA")


def _check_sites(num_sites: int, num_samples: int) -> None:
    if num_sites < 1:
        raise ConfigError("sites", f"must be >= 1, got {num_sites}")
    if num_sites > num_samples:
        raise ConfigError("sites", f"{num_sites} sites but only {num_samples} samples")

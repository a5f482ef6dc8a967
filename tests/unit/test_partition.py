import collections

import pytest

from mmfed.data.manifest import Sample
from mmfed.data.partition import dirichlet, drop_modality, iid, natural, partition
from mmfed.errors import ConfigError


def pool(n=600, classes=10):
    return [
        Sample(
            id=str(i),
            label=i % classes,
            split="test" if i % 5 == 0 else "train",
            image=f"{i}.png",
            audio=f"{i}.wav",
            extra={"speaker": f"s{i % 3}"},
        )
        for i in range(n)
    ]


def test_iid_covers_everything_once_and_is_balanced():
    parts = iid(pool(), 6, seed=1)
    ids = [s.id for p in parts for s in p]
    assert sorted(ids) == sorted(s.id for s in pool()) and len(set(ids)) == 600
    assert {len(p) for p in parts} == {100}
    assert parts == iid(pool(), 6, seed=1) and parts != iid(pool(), 6, seed=2)


def test_natural_groups_by_column():
    parts = natural(pool(), "speaker")
    assert [{s.extra["speaker"] for s in p} for p in parts] == [{"s0"}, {"s1"}, {"s2"}]
    with pytest.raises(ConfigError, match="'ward' column"):
        natural(pool(), "ward")


def label_entropy(part):
    counts = collections.Counter(s.label for s in part)
    total = sum(counts.values())
    import math

    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    skewed = dirichlet(pool(2000), 6, alpha=0.1, seed=0)
    near_iid = dirichlet(pool(2000), 6, alpha=100.0, seed=0)
    assert sum(len(p) for p in skewed) == 2000
    mean = lambda parts: sum(label_entropy(p) for p in parts) / len(parts)  # noqa: E731
    assert mean(skewed) < 0.7 * mean(near_iid)
    assert all(sum(s.split == "test" for s in p) >= 2 for p in skewed)


def test_drop_modality_removes_one_modality_from_chosen_sites():
    parts = iid(pool(), 10)
    out, dropped = drop_modality(parts, 0.3, ("image", "audio"), seed=0)
    assert len(dropped) == 3
    for site, modality in dropped.items():
        assert all(getattr(s, modality) is None for s in out[site])
        assert len(out[site]) == len(parts[site])
    untouched = [i for i in range(10) if i not in dropped]
    assert all(out[i] == parts[i] for i in untouched)


def test_partition_spec_parsing():
    assert len(partition(pool(), "iid", 4)) == 4
    assert len(partition(pool(), "dirichlet:0.5", 4)) == 4
    assert len(partition(pool(), "natural:speaker", 99)) == 3
    for bad in ("dirichlet:x", "natural", "shards"):
        with pytest.raises(ConfigError, match="partition"):
            partition(pool(), bad, 4)
    with pytest.raises(ConfigError, match="sites"):
        iid(pool(10), 20)
